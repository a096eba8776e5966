"""Non-causal attention for Wan, routed per call to the fastest correct backend.

Wan passes q, k, v as [B, S, heads * head_dim]. The TileLang kernel is a FlashAttention-style
forward over that layout (no transposes), with key masking so any sequence length works. The
router uses it only for shapes where it measured faster; everywhere else on Hopper it uses
PyTorch's cuDNN attention (ComfyUI's default SDPA priority picks FlashAttention-2 first, ~40%
slower at Wan's shapes), and off Hopper the reference.
"""


import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dispatch import Decision, compiled, device_problem, tilelang_problem

LOG2_E = 1.44269504


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int = 128
    block_n: int = 128
    stages: int = 2
    threads: int = 256


SELF_ATTENTION = AttentionConfig()
CROSS_ATTENTION = AttentionConfig(block_m=128, block_n=64, stages=2, threads=256)
SHIPPED_CONFIGS = {"self": SELF_ATTENTION, "cross": CROSS_ATTENTION}
# (seq_kv bucket, head_dim) pairs where bench/kernels_bench.py measured the TileLang kernel faster than
# cuDNN on the H100; none yet, so the router sends every Hopper call to cuDNN (see bench/results/).
TILELANG_FASTER: frozenset[tuple[str, int]] = frozenset()


def config_for(seq_kv: int) -> AttentionConfig:
    return CROSS_ATTENTION if seq_kv <= 1024 else SELF_ATTENTION


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


def _flash_program(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: str, config: AttentionConfig):
    import tilelang.language as T

    block_m, block_n = config.block_m, config.block_n
    scale = LOG2_E / math.sqrt(head_dim)
    q_shape, kv_shape = [batch, seq_q, heads * head_dim], [batch, seq_kv, heads * head_dim]
    accum = "float32"

    @T.prim_func
    def flash_attention(Q: T.Tensor(q_shape, dtype), K: T.Tensor(kv_shape, dtype), V: T.Tensor(kv_shape, dtype),
                        O: T.Tensor(q_shape, dtype)):
        with T.Kernel(T.ceildiv(seq_q, block_m), heads, batch, threads=config.threads) as (bx, head, b):
            q_tile = T.alloc_shared([block_m, head_dim], dtype)
            k_tile = T.alloc_shared([block_n, head_dim], dtype)
            v_tile = T.alloc_shared([block_n, head_dim], dtype)
            o_tile = T.alloc_shared([block_m, head_dim], dtype)
            scores = T.alloc_fragment([block_m, block_n], accum)
            probs = T.alloc_fragment([block_m, block_n], dtype)
            acc = T.alloc_fragment([block_m, head_dim], accum)
            row_max = T.alloc_fragment([block_m], accum)
            row_max_prev = T.alloc_fragment([block_m], accum)
            rescale = T.alloc_fragment([block_m], accum)
            row_sum = T.alloc_fragment([block_m], accum)
            denominator = T.alloc_fragment([block_m], accum)
            column = head * head_dim

            T.copy(Q[b, bx * block_m:(bx + 1) * block_m, column:column + head_dim], q_tile)
            T.fill(acc, 0)
            T.fill(denominator, 0)
            T.fill(row_max, -T.infinity(accum))
            for kv in T.Pipelined(T.ceildiv(seq_kv, block_n), num_stages=config.stages):
                T.copy(K[b, kv * block_n:(kv + 1) * block_n, column:column + head_dim], k_tile)
                for i, j in T.Parallel(block_m, block_n):
                    scores[i, j] = T.if_then_else(kv * block_n + j < seq_kv, 0, -T.infinity(accum))
                T.gemm(q_tile, k_tile, scores, transpose_B=True, policy=T.GemmWarpPolicy.FullRow)
                T.copy(row_max, row_max_prev)
                T.fill(row_max, -T.infinity(accum))
                T.reduce_max(scores, row_max, dim=1, clear=False)
                for i in T.Parallel(block_m):
                    rescale[i] = T.exp2(row_max_prev[i] * scale - row_max[i] * scale)
                for i, j in T.Parallel(block_m, block_n):
                    scores[i, j] = T.exp2(scores[i, j] * scale - row_max[i] * scale)
                T.reduce_sum(scores, row_sum, dim=1)
                for i in T.Parallel(block_m):
                    denominator[i] = denominator[i] * rescale[i] + row_sum[i]
                T.copy(scores, probs)
                for i, j in T.Parallel(block_m, head_dim):
                    acc[i, j] *= rescale[i]
                T.copy(V[b, kv * block_n:(kv + 1) * block_n, column:column + head_dim], v_tile)
                T.gemm(probs, v_tile, acc, policy=T.GemmWarpPolicy.FullRow)
            for i, j in T.Parallel(block_m, head_dim):
                acc[i, j] /= denominator[i]
            T.copy(acc, o_tile)
            T.copy(o_tile, O[b, bx * block_m:(bx + 1) * block_m, column:column + head_dim])

    return flash_attention


def flash_attention_kernel(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: torch.dtype,
                           config: AttentionConfig | None = None):
    config = config or config_for(seq_kv)
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    return compiled(("attention", batch, heads, seq_q, seq_kv, head_dim, dtype, config),
                    lambda: _flash_program(batch, heads, seq_q, seq_kv, head_dim, name, config), [3])


def attention_tilelang(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, sq, c = q.shape
    return flash_attention_kernel(b, heads, sq, k.shape[1], c // heads, q.dtype)(q, k, v)


def _bucket(seq_kv: int) -> str:
    return "cross" if seq_kv <= 1024 else "self"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, backend: str = "auto") -> tuple[torch.Tensor, Decision]:
    """Wan attention [B, S, heads * d] -> same; `backend` is auto, tilelang or cudnn."""
    head_dim = q.shape[-1] // heads
    reason = device_problem(q, k, v)
    if not reason and head_dim not in (64, 128):
        reason = f"head dim {head_dim} is not 64 or 128"
    if reason:
        return attention_reference(q, k, v, heads), Decision("attention", "reference", reason)
    wants_tilelang = backend == "tilelang" or (backend == "auto" and (_bucket(k.shape[1]), head_dim) in TILELANG_FASTER)
    if wants_tilelang:
        problem = tilelang_problem()
        if not problem:
            return attention_tilelang(q, k, v, heads), Decision("attention", "tilelang")
        return attention_cudnn(q, k, v, heads), Decision("attention", "cudnn", problem)
    why = "requested" if backend == "cudnn" else "cuDNN measured faster than the TileLang kernel at this shape"
    return attention_cudnn(q, k, v, heads), Decision("attention", "cudnn", why)
