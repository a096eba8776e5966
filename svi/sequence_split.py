"""Splitting one clip over the ranks of a process group: tokens for the DiT (Ulysses), row bands for the VAE.

Plain torch and torch.distributed; no ComfyUI. The all-to-all that turns a token shard with every head into the whole
sequence with a share of the heads (and back) is yunchang's `all_to_all_4D` (DeepSpeed-Ulysses' layout, on
`torch.distributed.all_to_all_single`, so NCCL on GPUs and gloo on CPUs); it is imported lazily, so the pack imports
without yunchang (requirements-multigpu.txt). Gathers are `torch.distributed.gather`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

ULYSSES_INSTALL = "pip install -r requirements-multigpu.txt (yunchang, the Ulysses all-to-all)"


def degree_problem(heads: int, degree: int, devices: int | None) -> str:
    """'' when `degree` ranks can run a model with `heads` attention heads, else why not (Ulysses gives each rank
    whole heads, so the degree must divide them; every rank needs its own GPU). `devices` None: ranks on the CPU."""
    if degree < 1:
        return f"degree {degree}: it counts ranks, at least 1"
    if heads % degree:
        divisors = [d for d in range(2, min(heads, 8) + 1) if heads % d == 0]
        return (f"degree {degree} does not divide the model's {heads} attention heads (each rank attends whole heads); "
                f"use {', '.join(map(str, divisors)) or 'none: this model has too few heads'}")
    if devices is not None and degree > devices:
        return f"degree {degree} needs {degree} GPUs, this process sees {devices}"
    return ""


def ulysses_all_to_all():
    """yunchang's all_to_all_4D, or an ImportError that says how to install it."""
    try:
        from yunchang.comm.all_to_all import all_to_all_4D
    except ImportError as error:
        raise ImportError(f"sequence parallelism needs yunchang: {ULYSSES_INSTALL}") from error
    return all_to_all_4D


@dataclass(frozen=True)
class TokenShards:
    """`length` tokens split into `degree` equal shards; the last shard is padded at the end with `padding` tokens
    (dropped again before attention and after the gather, so padding changes no result)."""

    length: int
    degree: int
    rank: int

    @property
    def shard(self) -> int:
        return -(-self.length // self.degree)

    @property
    def padding(self) -> int:
        return self.shard * self.degree - self.length

    def local(self, tokens: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's shard of a full sequence along `dim`."""
        if self.padding:
            pad_shape = list(tokens.shape)
            pad_shape[dim] = self.padding
            tokens = torch.cat([tokens, tokens.new_zeros(pad_shape)], dim=dim)
        return tokens.narrow(dim, self.rank * self.shard, self.shard)

    def gather(self, shard: torch.Tensor, group=None) -> torch.Tensor | None:
        """The whole sequence [B, length, ...] on rank 0 (None elsewhere) from every rank's [B, shard, ...]."""
        shard = shard.contiguous()
        parts = [torch.empty_like(shard) for _ in range(self.degree)] if self.rank == 0 else None
        dist.gather(shard, parts, dst=0, group=group)
        return torch.cat(parts, dim=1)[:, :self.length] if parts is not None else None


def ulysses_attention(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shards: TokenShards,
                      group=None) -> torch.Tensor:
    """Self-attention of every rank's token shard ([B, shard, heads * d] each) over the whole sequence.

    One all-to-all per q, k, v gives each rank the whole sequence for heads / degree heads; `attend(q, k, v, heads)`
    ([B, L, h * d] in and out, any attention backend) runs on the real tokens only, and one all-to-all sends every
    rank its tokens back with all heads. Each head's attention is computed over exactly the tokens, keys and values
    of a single-process run, so the result is the same up to the backend's rounding."""
    all_to_all = ulysses_all_to_all()
    b, s, width = q.shape
    d = width // heads
    local_heads = heads // shards.degree

    def to_heads(t: torch.Tensor) -> torch.Tensor:
        whole = all_to_all(t.reshape(b, s, heads, d).contiguous(), scatter_idx=2, gather_idx=1, group=group)
        return whole[:, :shards.length].reshape(b, shards.length, local_heads * d)

    out = attend(to_heads(q), to_heads(k), to_heads(v), local_heads).reshape(b, shards.length, local_heads, d)
    if shards.padding:
        out = torch.cat([out, out.new_zeros(b, shards.padding, local_heads, d)], dim=1)
    return all_to_all(out.contiguous(), scatter_idx=1, gather_idx=2, group=group).reshape(b, s, width)


@dataclass(frozen=True)
class Band:
    """Rows [start, stop) of the input that one rank processes (its own rows plus a halo on each side), and where its
    own rows [keep_start, keep_stop) lie in the whole input."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def row_bands(rows: int, degree: int, halo: int, align: int = 1) -> list[Band]:
    """`rows` split into `degree` contiguous bands of about equal size (multiples of `align`), each widened by `halo`
    rows on both sides where the input has them."""
    if rows % align:
        raise ValueError(f"{rows} rows are not a multiple of {align}")
    units = rows // align
    edges = [round(i * units / degree) * align for i in range(degree + 1)]
    halo = -(-halo // align) * align
    return [Band(max(0, lo - halo), min(rows, hi + halo), lo, hi) for lo, hi in zip(edges, edges[1:])]


def all_gather_rows(band_rows: torch.Tensor, axis: int, bands: list[Band], rank: int, scale: float = 1.0,
                    group=None) -> torch.Tensor:
    """The whole input's rows on every rank, from each rank's own rows (its band without the halo) of `band_rows`
    (rows along `axis`, `scale` rows per input row at this point of the network)."""
    axis %= band_rows.ndim
    rows = lambda b: round((b.keep_stop - b.keep_start) * scale)  # noqa: E731
    band = bands[rank]
    own = band_rows.narrow(axis, round((band.keep_start - band.start) * scale), rows(band))
    tallest = max(rows(b) for b in bands)
    if own.shape[axis] < tallest:
        pad_shape = list(own.shape)
        pad_shape[axis] = tallest - own.shape[axis]
        own = torch.cat([own, own.new_zeros(pad_shape)], dim=axis)
    parts = [torch.empty_like(own) for _ in bands]
    dist.all_gather(parts, own.contiguous(), group=group)
    return torch.cat([part.narrow(axis, 0, rows(b)) for part, b in zip(parts, bands)], dim=axis)


def banded(fn, tensor: torch.Tensor, *, in_axis: int, out_axis: int, scale: float, bands: list[Band], rank: int,
           group=None, device=None) -> torch.Tensor | None:
    """`fn` applied to this rank's band of `tensor` (rows along `in_axis`), its own rows cut out of the result (rows
    along `out_axis`, `scale` output rows per input row) and all bands joined on rank 0 (None elsewhere). Bands are
    padded to one size for the gather; `device` is where the gather runs (the rank's GPU for NCCL)."""
    band = bands[rank]
    out = fn(tensor.narrow(in_axis, band.start, band.stop - band.start))
    lo = round((band.keep_start - band.start) * scale)
    out = out.narrow(out_axis, lo, round((band.keep_stop - band.keep_start) * scale))
    tallest = max(round((b.keep_stop - b.keep_start) * scale) for b in bands)
    out_axis %= out.ndim
    if out.shape[out_axis] < tallest:
        pad_shape = list(out.shape)
        pad_shape[out_axis] = tallest - out.shape[out_axis]
        out = torch.cat([out, out.new_zeros(pad_shape)], dim=out_axis)
    out = out.to(device).contiguous() if device is not None else out.contiguous()
    parts = [torch.empty_like(out) for _ in bands] if rank == 0 else None
    dist.gather(out, parts, dst=0, group=group)
    if parts is None:
        return None
    return torch.cat([part.narrow(out_axis, 0, round((b.keep_stop - b.keep_start) * scale)) for part, b in zip(parts, bands)],
                     dim=out_axis)
