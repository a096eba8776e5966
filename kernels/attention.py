"""Non-causal attention for Wan, routed per call to the fastest correct backend.

Wan passes q, k, v as [B, S, heads * head_dim]. The TileLang kernel is a FlashAttention-3-style
forward over that layout (no transposes): a TMA producer warpgroup, two consumer warpgroups that
take turns on the tensor cores, and each consumer's softmax overlapped with its own PV matmul;
TMA zero-fill plus key masking make any sequence length work. The router uses it for the shapes
where it measured faster than cuDNN; elsewhere on Hopper it uses PyTorch's cuDNN attention
(ComfyUI's default SDPA priority picks FlashAttention-2 first, ~40% slower at Wan's shapes), and
off Hopper the reference.
"""


import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dispatch import Decision, capability_of, compiled, dtype_name, hopper_problem, kernel_gate, tensor_problem

LOG2_E = 1.44269504


@dataclass(frozen=True)
class AttentionConfig:
    """One compiled schedule. A CTA owns `q_tiles_per_cta` consecutive 128-row query tiles of one head (two consumer
    warpgroups of 64 rows each, one TMA producer warpgroup); K/V stream through `stages` shared-memory buffers of
    `block_n` rows. Several query tiles per CTA let the producer load the next Q tile while the consumers compute,
    which matters when there are only a few KV tiles per query tile (cross-attention)."""

    block_n: int = 128
    stages: int = 2
    q_tiles_per_cta: int = 1
    pingpong: bool = True  # alternate the consumers' GEMM issue so one's softmax runs under the other's GEMMs
    stage_output: bool = True  # O through shared memory (TMA store); False stores from registers, freeing 32 KB for K/V


BLOCK_M = 128  # query rows per tile: 64 per consumer warpgroup (wgmma's M)
CONSUMER_ROWS = 64
PINGPONG_BARRIERS = (5, 6)  # named barrier ids; TileLang's own epilogue syncs use 3 and 4
# 192 with O stored from registers: level with 160 (O staged) at 14B 480p, 2.6% faster at 720p (kernels_h200.md)
SELF_ATTENTION = AttentionConfig(block_n=192, stage_output=False)
CROSS_ATTENTION = AttentionConfig(q_tiles_per_cta=4)
SHIPPED_CONFIGS = {"self": SELF_ATTENTION, "cross": CROSS_ATTENTION}
# (seq_kv bucket, head_dim) pairs where bench/kernels_bench.py measured the TileLang kernel faster than cuDNN on the
# H100 (bench/results/kernels_h100.md); everywhere else on Hopper the router uses cuDNN. Head dim 64 (no Wan model
# uses it) is correct but was not benchmarked.
TILELANG_FASTER: frozenset[tuple[str, int]] = frozenset({("self", 128), ("cross", 128)})


def config_for(seq_kv: int) -> AttentionConfig:
    return CROSS_ATTENTION if _bucket(seq_kv) == "cross" else SELF_ATTENTION


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, sq, c = q.shape
    d = c // heads
    split = lambda t: t.view(b, t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, sq, c)


def attention_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return attention_reference(q, k, v, heads)


def schedule_macros(seq_kv: int, block_n: int, pingpong: bool):
    """The TileLang macros every flash-attention schedule here shares (bf16 and 8-bit): `mask_tail(scores, kv)` sets
    the scores of keys past the sequence end to -inf in the last KV tile; `take_turn(me)` / `pass_turn(me)` are the
    two consumer warpgroups' ping-pong over PINGPONG_BARRIERS (nothing without `pingpong`)."""
    import tilelang.language as T

    kv_tiles, rows, turn = -(-seq_kv // block_n), CONSUMER_ROWS, PINGPONG_BARRIERS
    ragged = seq_kv % block_n != 0

    @T.macro
    def mask_tail(scores, kv):
        if ragged:
            if kv == kv_tiles - 1:
                for i, j in T.Parallel(rows, block_n):
                    scores[i, j] = T.if_then_else(kv * block_n + j < seq_kv, scores[i, j], -T.infinity("float32"))

    @T.macro
    def take_turn(me):
        if pingpong:
            T.sync_threads(turn[me], 256)

    @T.macro
    def pass_turn(me):
        if pingpong:
            T.named_barrier_arrive(turn[1 - me], 256)

    return mask_tail, take_turn, pass_turn


def _flash_program(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: str, config: AttentionConfig):
    """FlashAttention-3-style forward over Wan's [B, S, heads * d] layout.

    Per consumer warpgroup and KV tile j: issue S_j = Q K_j^T and O += P_{j-1} V_{j-1} back to back (both async
    wgmma), wait for S_j only, run the softmax of S_j while P_{j-1} V_{j-1} is still on the tensor cores, then wait
    for it and rescale O. With `pingpong`, two named barriers make the consumers take turns issuing their GEMMs, so
    one warpgroup's softmax overlaps the other's matmuls. TMA zero-fills rows past the sequence ends; the last KV
    tile masks them to -inf and the output store clips them.
    """
    import tilelang.language as T

    block_n, stages, tiles_per_cta = config.block_n, config.stages, config.q_tiles_per_cta
    rows = CONSUMER_ROWS
    scale = LOG2_E / math.sqrt(head_dim)
    accum = "float32"
    q_shape, kv_shape = [batch, seq_q, heads * head_dim], [batch, seq_kv, heads * head_dim]
    kv_tiles = -(-seq_kv // block_n)
    q_tiles = -(-seq_q // BLOCK_M)
    q_stages = min(2, tiles_per_cta)
    pingpong = config.pingpong
    mask_tail, take_turn, pass_turn = schedule_macros(seq_kv, block_n, pingpong)

    @T.macro
    def consumer(me, O, q_tiles_smem, k_tiles, v_tiles, o_tile, q_full, q_empty, k_full, k_empty, v_full,
                 v_empty, b, bx, column, scores, probs, acc, row_max, row_max_prev, rescale, row_sum, denominator):
        T.set_max_nreg(240, 1)
        first_row = me * rows
        for t in T.serial(tiles_per_cta):
            q_index = bx * tiles_per_cta + t
            if q_index < q_tiles:
                qs = t % q_stages
                base = t * kv_tiles  # running KV-tile count: stage and barrier parity continue across Q tiles
                T.barrier_wait(q_full[qs], (t // q_stages) & 1)
                T.barrier_wait(k_full[base % stages], (base // stages) & 1)
                take_turn(me)
                T.wgmma_gemm(q_tiles_smem[qs, first_row:first_row + rows, :], k_tiles[base % stages, :, :], scores, transpose_B=True, clear_accum=True)
                pass_turn(me)
                T.wait_wgmma(0)
                T.barrier_arrive(k_empty[base % stages])
                if kv_tiles == 1:
                    T.barrier_arrive(q_empty[qs])
                mask_tail(scores, 0)
                T.reduce_max(scores, row_max, dim=1, clear=True)
                for i, j in T.Parallel(rows, block_n):
                    scores[i, j] = T.exp2(scores[i, j] * scale - row_max[i] * scale)
                T.reduce_sum(scores, denominator, dim=1)
                T.copy(scores, probs)
                T.fill(acc, 0)
                for kv in T.serial(1, kv_tiles):
                    now, before = (base + kv) % stages, (base + kv - 1) % stages
                    T.barrier_wait(k_full[now], ((base + kv) // stages) & 1)
                    take_turn(me)
                    T.wgmma_gemm(q_tiles_smem[qs, first_row:first_row + rows, :], k_tiles[now, :, :], scores, transpose_B=True, clear_accum=True)
                    T.barrier_wait(v_full[before], ((base + kv - 1) // stages) & 1)
                    T.wgmma_gemm(probs, v_tiles[before, :, :], acc)
                    pass_turn(me)
                    T.wait_wgmma(1)
                    T.barrier_arrive(k_empty[now])
                    if kv == kv_tiles - 1:
                        T.barrier_arrive(q_empty[qs])
                    mask_tail(scores, kv)
                    T.copy(row_max, row_max_prev)
                    T.reduce_max(scores, row_max, dim=1, clear=False)
                    for i in T.Parallel(rows):
                        rescale[i] = T.exp2(row_max_prev[i] * scale - row_max[i] * scale)
                    for i, j in T.Parallel(rows, block_n):
                        scores[i, j] = T.exp2(scores[i, j] * scale - row_max[i] * scale)
                    T.reduce_sum(scores, row_sum, dim=1)
                    for i in T.Parallel(rows):
                        denominator[i] = denominator[i] * rescale[i] + row_sum[i]
                    T.wait_wgmma(0)
                    T.barrier_arrive(v_empty[before])
                    for i, j in T.Parallel(rows, head_dim):
                        acc[i, j] *= rescale[i]
                    T.copy(scores, probs)
                last = (base + kv_tiles - 1) % stages
                T.barrier_wait(v_full[last], ((base + kv_tiles - 1) // stages) & 1)
                take_turn(me)
                T.wgmma_gemm(probs, v_tiles[last, :, :], acc)
                if me == 0:
                    pass_turn(me)
                elif q_index < T.min(bx * tiles_per_cta + tiles_per_cta, q_tiles) - 1:
                    pass_turn(me)  # not after its last tile: consumer 1 opened with an extra turn for consumer 0
                T.wait_wgmma(0)
                T.barrier_arrive(v_empty[last])
                for i, j in T.Parallel(rows, head_dim):
                    acc[i, j] /= denominator[i]
                T.copy(acc, o_tile)
                start = q_index * BLOCK_M + first_row
                T.copy(o_tile, O[b, start:start + rows, column:column + head_dim])

    @T.prim_func
    def flash_attention(Q: T.Tensor(q_shape, dtype), K: T.Tensor(kv_shape, dtype), V: T.Tensor(kv_shape, dtype),
                        O: T.Tensor(q_shape, dtype)):
        with T.Kernel(T.ceildiv(q_tiles, tiles_per_cta), heads, batch, threads=384) as (bx, head, b):
            q_tiles_smem = T.alloc_shared([q_stages, BLOCK_M, head_dim], dtype)
            k_tiles = T.alloc_shared([stages, block_n, head_dim], dtype)
            v_tiles = T.alloc_shared([stages, block_n, head_dim], dtype)
            output_tile = T.alloc_shared if config.stage_output else T.alloc_fragment
            o_tile_0, o_tile_1 = output_tile([rows, head_dim], dtype), output_tile([rows, head_dim], dtype)
            buffers = [[T.alloc_fragment([rows, block_n], accum), T.alloc_fragment([rows, block_n], dtype),
                        T.alloc_fragment([rows, head_dim], accum)] + [T.alloc_fragment([rows], accum) for _ in range(5)]
                       for _ in range(2)]
            q_full = T.alloc_barrier(arrive_count=[128] * q_stages)
            q_empty = T.alloc_barrier(arrive_count=[256] * q_stages)
            k_full = T.alloc_barrier(arrive_count=[128] * stages)
            v_full = T.alloc_barrier(arrive_count=[128] * stages)
            k_empty = T.alloc_barrier(arrive_count=[256] * stages)
            v_empty = T.alloc_barrier(arrive_count=[256] * stages)
            column = head * head_dim
            shared = (q_tiles_smem, k_tiles, v_tiles)
            bars = (q_full, q_empty, k_full, k_empty, v_full, v_empty)
            tx = T.get_thread_binding()
            if tx < 128:
                consumer(0, O, *shared, o_tile_0, *bars, b, bx, column, *buffers[0])
            elif tx < 256:
                if pingpong:
                    T.named_barrier_arrive(PINGPONG_BARRIERS[0], 256)  # consumer 0 issues first
                consumer(1, O, *shared, o_tile_1, *bars, b, bx, column, *buffers[1])
            else:
                T.set_max_nreg(24, 0)
                for t in T.serial(tiles_per_cta):
                    q_index = bx * tiles_per_cta + t
                    if q_index < q_tiles:
                        qs = t % q_stages
                        T.barrier_wait(q_empty[qs], ((t // q_stages) & 1) ^ 1)
                        T.tma_copy(Q[b, q_index * BLOCK_M:(q_index + 1) * BLOCK_M, column:column + head_dim],
                                   q_tiles_smem[qs, :, :], barrier=q_full[qs])
                        T.barrier_arrive(q_full[qs])
                        for kv in T.serial(kv_tiles):
                            g = t * kv_tiles + kv
                            stage = g % stages
                            T.barrier_wait(k_empty[stage], ((g // stages) & 1) ^ 1)
                            T.tma_copy(K[b, kv * block_n:(kv + 1) * block_n, column:column + head_dim],
                                       k_tiles[stage, :, :], barrier=k_full[stage])
                            T.barrier_arrive(k_full[stage])
                            T.barrier_wait(v_empty[stage], ((g // stages) & 1) ^ 1)
                            T.tma_copy(V[b, kv * block_n:(kv + 1) * block_n, column:column + head_dim],
                                       v_tiles[stage, :, :], barrier=v_full[stage])
                            T.barrier_arrive(v_full[stage])

    return flash_attention


def flash_attention_kernel(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: torch.dtype,
                           config: AttentionConfig | None = None):
    config = config or config_for(seq_kv)
    name = dtype_name(dtype)
    return compiled(("attention", batch, heads, seq_q, seq_kv, head_dim, dtype, config),
                    lambda: _flash_program(batch, heads, seq_q, seq_kv, head_dim, name, config))


def attention_tilelang(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, sq, c = q.shape
    out = torch.empty_like(q)
    flash_attention_kernel(b, heads, sq, k.shape[1], c // heads, q.dtype)(q, k, v, out)
    return out


def _bucket(seq_kv: int) -> str:
    """Cross-attention's KV (512 text, 257 image tokens) is a few tiles long, self-attention's thousands."""
    return "cross" if seq_kv <= 1024 else "self"


def wants_tilelang(seq_kv: int, head_dim: int, backend: str = "auto") -> bool:
    """Whether the router sends this shape to the TileLang kernel on Hopper (precompile asks the same question)."""
    return backend == "tilelang" or (backend == "auto" and (_bucket(seq_kv), head_dim) in TILELANG_FASTER)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, backend: str = "auto") -> tuple[torch.Tensor, Decision]:
    """Wan attention [B, S, heads * d] -> same; `backend` is auto, tilelang or cudnn."""
    head_dim = q.shape[-1] // heads
    reason = tensor_problem(q, k, v) or hopper_problem(capability_of(q.device))
    if not reason and head_dim not in (64, 128):
        reason = f"head dim {head_dim} is not 64 or 128"
    if reason:
        return attention_reference(q, k, v, heads), Decision("attention", "reference", reason)
    if wants_tilelang(k.shape[1], head_dim, backend):
        problem = kernel_gate(q.device)
        if not problem:
            return attention_tilelang(q, k, v, heads), Decision("attention", "tilelang")
        return attention_cudnn(q, k, v, heads), Decision("attention", "cudnn", problem)
    why = "requested" if backend == "cudnn" else "TileLang not measured faster than cuDNN at this shape"
    return attention_cudnn(q, k, v, heads), Decision("attention", "cudnn", why)
