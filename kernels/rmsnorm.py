"""RMSNorm over the whole model dim, and RMSNorm fused with Wan's 3-axis RoPE for q and k.

Wan normalises q and k over all heads (dim 5120 on 14B) with fp32 accumulation, then rotates each
head's pairs by a per-token 2x2 matrix. One pass that reads x once and writes the rotated result
once replaces three memory passes (norm, RoPE, cast).
"""


import torch

from .dispatch import Decision, compiled, device_problem, tilelang_problem

ROWS_PER_BLOCK = 1


def threads_for(dim: int) -> int:
    """A block size that gives every thread a multiple of 8 elements, so loads are 16 bytes wide.

    At dim 1536 with 128 threads each thread gets 12 and TileLang falls back to 8-byte loads.
    """
    for threads in (128, 256, 64, 32):  # powers of two: TileLang's row reduction is a butterfly
        if dim % (threads * 8) == 0:
            return threads
    return 128


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rms_norm_rope_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor, heads: int) -> torch.Tensor:
    """x [B, S, C] -> normalised, viewed [B, S, heads, C/heads], rotated by freqs [B or 1, S, 1, C/heads/2, 2, 2]."""
    normed = rms_norm_reference(x, weight, eps).float()
    b, s, c = x.shape
    pairs = normed.view(b, s, heads, c // heads // 2, 1, 2)
    rotated = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return rotated.reshape(b, s, heads, c // heads).to(x.dtype)


def _rms_norm_program(rows: int, dim: int, dtype: str, eps: float):
    import tilelang.language as T

    @T.prim_func
    def rms_norm(X: T.Tensor((rows, dim), dtype), W: T.Tensor((dim,), dtype), Y: T.Tensor((rows, dim), dtype)):
        with T.Kernel(T.ceildiv(rows, ROWS_PER_BLOCK), threads=threads_for(dim)) as row_block:
            x_local = T.alloc_fragment((ROWS_PER_BLOCK, dim), "float32")
            squares = T.alloc_fragment((ROWS_PER_BLOCK, dim), "float32")
            inv_rms = T.alloc_fragment((ROWS_PER_BLOCK,), "float32")
            T.copy(X[row_block * ROWS_PER_BLOCK:(row_block + 1) * ROWS_PER_BLOCK, :], x_local)
            for i, j in T.Parallel(ROWS_PER_BLOCK, dim):
                squares[i, j] = x_local[i, j] * x_local[i, j]
            T.reduce_sum(squares, inv_rms, dim=1)
            for i in T.Parallel(ROWS_PER_BLOCK):
                inv_rms[i] = T.rsqrt(inv_rms[i] / dim + eps)
            for i, j in T.Parallel(ROWS_PER_BLOCK, dim):
                Y[row_block * ROWS_PER_BLOCK + i, j] = T.cast(x_local[i, j] * inv_rms[i] * T.cast(W[j], "float32"), dtype)

    return rms_norm


def _rms_norm_rope_program(batch: int, seq: int, dim: int, head_dim: int, dtype: str, eps: float):
    import tilelang.language as T

    half = dim // 2
    half_head = head_dim // 2

    @T.prim_func
    def rms_norm_rope(X: T.Tensor((batch * seq, dim), dtype), W: T.Tensor((dim,), dtype),
                      F: T.Tensor((seq, half_head, 2, 2), "float32"), Y: T.Tensor((batch * seq, dim), dtype)):
        with T.Kernel(batch * seq, threads=threads_for(dim)) as row:
            x_local = T.alloc_fragment((1, dim), "float32")
            squares = T.alloc_fragment((1, dim), "float32")
            inv_rms = T.alloc_fragment((1,), "float32")
            normed = T.alloc_shared((dim,), "float32")
            T.copy(X[row:row + 1, :], x_local)
            for i, j in T.Parallel(1, dim):
                squares[i, j] = x_local[i, j] * x_local[i, j]
            T.reduce_sum(squares, inv_rms, dim=1)
            for i in T.Parallel(1):
                inv_rms[i] = T.rsqrt(inv_rms[i] / dim + eps)
            for i, j in T.Parallel(1, dim):
                normed[j] = x_local[i, j] * inv_rms[i] * T.cast(W[j], "float32")
            position = row % seq
            for p in T.Parallel(half):
                pair = p % half_head
                Y[row, 2 * p] = T.cast(F[position, pair, 0, 0] * normed[2 * p] + F[position, pair, 0, 1] * normed[2 * p + 1], dtype)
                Y[row, 2 * p + 1] = T.cast(F[position, pair, 1, 0] * normed[2 * p] + F[position, pair, 1, 1] * normed[2 * p + 1], dtype)

    return rms_norm_rope


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def rms_norm_kernel(rows: int, dim: int, dtype: torch.dtype, eps: float):
    return compiled(("rms_norm", rows, dim, dtype, eps), lambda: _rms_norm_program(rows, dim, _dtype_name(dtype), eps), [2])


def rms_norm_rope_kernel(batch: int, seq: int, dim: int, head_dim: int, dtype: torch.dtype, eps: float):
    return compiled(("rms_norm_rope", batch, seq, dim, head_dim, dtype, eps),
                    lambda: _rms_norm_rope_program(batch, seq, dim, head_dim, _dtype_name(dtype), eps), [3])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, Decision]:
    """RMSNorm over the last dim; the TileLang kernel on Hopper, the reference elsewhere (with the reason)."""
    reason = tilelang_problem() or device_problem(x, weight)
    if reason:
        return rms_norm_reference(x, weight, eps), Decision("rms_norm", "reference", reason)
    rows = x.numel() // x.shape[-1]
    out = rms_norm_kernel(rows, x.shape[-1], x.dtype, eps)(x.reshape(rows, -1), weight.to(x.dtype))
    return out.view(x.shape), Decision("rms_norm", "tilelang")


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor, heads: int) -> tuple[torch.Tensor, Decision]:
    """Wan's q/k preparation in one pass: RMSNorm over [B, S, C], then per-head RoPE; returns [B, S, heads, C/heads]."""
    b, s, c = x.shape
    rope_freqs = freqs.reshape(-1, s, c // heads // 2, 2, 2)
    reason = tilelang_problem() or device_problem(x, weight)
    if not reason and rope_freqs.shape[0] != 1:
        reason = "per-sample RoPE frequencies"
    if reason:
        return rms_norm_rope_reference(x, weight, eps, freqs, heads), Decision("rms_norm_rope", "reference", reason)
    kernel = rms_norm_rope_kernel(b, s, c, c // heads, x.dtype, eps)
    out = kernel(x.reshape(b * s, c), weight.to(x.dtype), rope_freqs[0].float().contiguous())
    return out.view(b, s, heads, c // heads), Decision("rms_norm_rope", "tilelang")
