"""Token shards, row bands and Ulysses attention in plain torch, the attention across real gloo processes."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from svi_infinity.svi.sequence_split import TokenShards, banded, degree_problem, row_bands, ulysses_attention


def test_degree_must_divide_the_heads_and_fit_the_gpus():
    assert degree_problem(40, 8, 8) == "" and degree_problem(40, 5, 8) == ""
    refused = degree_problem(40, 3, 8)
    assert "degree 3 does not divide the model's 40 attention heads" in refused and "use 2, 4, 5, 8" in refused
    assert "needs 8 GPUs, this process sees 4" in degree_problem(40, 8, 4)
    assert degree_problem(4, 4, None) == ""  # CPU ranks: no GPU count applies


def test_shards_pad_the_last_rank_and_cover_every_token_once():
    tokens = torch.arange(45).view(1, 45, 1).float()
    shards = [TokenShards(45, 4, rank) for rank in range(4)]
    assert shards[0].shard == 12 and shards[0].padding == 3
    joined = torch.cat([s.local(tokens) for s in shards], dim=1)
    assert torch.equal(joined[:, :45], tokens) and not joined[:, 45:].any()


def test_bands_own_every_row_once_with_halo_where_the_input_has_rows():
    bands = row_bands(60, 8, halo=8)
    assert [b.keep_start for b in bands[1:]] == [b.keep_stop for b in bands[:-1]] and bands[-1].keep_stop == 60
    assert bands[0].start == 0 and bands[3].start == bands[3].keep_start - 8 and bands[-1].stop == 60
    aligned = row_bands(480, 8, halo=64, align=8)
    assert all(b.start % 8 == 0 and b.keep_start % 8 == 0 and b.stop % 8 == 0 for b in aligned)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        row_bands(60, 2, 0, align=8)


def _full_attention(q, k, v, heads):
    b, s, width = q.shape
    split = lambda t: t.view(b, -1, heads, width // heads).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, -1, width)


def _rank(rank, degree, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=degree)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    length, heads, d = 45, 8, 16
    q, k, v = (torch.randn(2, length, heads * d, generator=generator) for _ in range(3))
    shards = TokenShards(length, degree, rank)
    local = ulysses_attention(_full_attention, *(shards.local(t) for t in (q, k, v)), heads, shards)
    whole = shards.gather(local)
    image = torch.randn(1, 3, 2, 20, 6, generator=generator)  # [B, C, T, rows, W]
    bands = row_bands(20, degree, halo=20)  # halo over everything: each band sees the whole image
    joined = banded(lambda band: band.repeat_interleave(2, dim=-2) * 2, image, in_axis=-2, out_axis=-2, scale=2,
                    bands=bands, rank=rank)
    if rank == 0:
        results["attention"] = (whole - _full_attention(q, k, v, heads)).abs().max().item()
        results["bands"] = torch.equal(joined, image.repeat_interleave(2, dim=-2) * 2)
    dist.destroy_process_group()


def test_ulysses_attention_and_bands_across_four_gloo_processes():
    """Four real processes: sharded tokens (45 over 4 ranks, so padded) attend like one process, bands join exactly."""
    from svi_infinity.demo.comfy_runtime import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        # fork: the children keep this test's imports (the pack is imported under an alias, which spawn cannot redo)
        mp.start_processes(_rank, args=(4, free_port(), results), nprocs=4, join=True, start_method="fork")
        assert results["attention"] < 1e-5
        assert results["bands"]
