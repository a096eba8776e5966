"""RMSNorm over the whole model dim, and RMSNorm fused with Wan's 3-axis RoPE for q and k.

Wan normalises q and k over all heads (dim 5120 on 14B) with fp32 accumulation, then rotates each
head's pairs by a per-token 2x2 matrix. One pass that reads x once and writes the rotated result
once replaces three memory passes (norm, RoPE, cast).
"""

import weakref

import torch

from .dispatch import Decision, compiled, dtype_name, kernel_problem

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


_rotation_cache: list = []  # [(weakref to Wan's freqs tensor, its table)]: Wan passes one freqs to every block


def rotation_table(freqs: torch.Tensor, seq: int, half_head: int) -> torch.Tensor:
    """Wan's per-pair rotations [[cos, -sin], [sin, cos]] ([1, S, 1, d/2, 2, 2], fp32) as (cos, sin) pairs in fp16,
    [S, d/2 * 2]: a quarter of the bytes per token, which is what lets the fused kernel reach copy bandwidth at
    dim 1536. fp16 keeps 11 mantissa bits, finer than the rounding of the bf16/fp16 output. Built once per freqs
    tensor (one forward calls the kernel twice in each of its blocks with the same freqs)."""
    if _rotation_cache and _rotation_cache[0][0]() is freqs:
        return _rotation_cache[0][1]
    matrices = freqs.reshape(seq, half_head, 2, 2)
    table = torch.stack([matrices[..., 0, 0], matrices[..., 1, 0]], -1).to(torch.float16).reshape(seq, half_head * 2)
    _rotation_cache[:] = [(weakref.ref(freqs), table)]
    return table


def _rms_norm_rope_program(batch: int, seq: int, dim: int, head_dim: int, dtype: str, eps: float):
    """One token row per CTA: RMSNorm in fp32, the normalised row staged in shared memory next to the token's
    (cos, sin) pairs (the same for every head), then the output written from the same per-thread layout as the
    input, so loads and stores are 16 bytes wide."""
    import tilelang.language as T

    half_head = head_dim // 2

    @T.prim_func
    def rms_norm_rope(X: T.Tensor((batch * seq, dim), dtype), W: T.Tensor((dim,), dtype),
                      R: T.Tensor((seq, half_head * 2), "float16"), Y: T.Tensor((batch * seq, dim), dtype)):
        with T.Kernel(batch * seq, threads=threads_for(dim)) as row:
            x_local = T.alloc_fragment((1, dim), "float32")
            squares = T.alloc_fragment((1, dim), "float32")
            inv_rms = T.alloc_fragment((1,), "float32")
            normed = T.alloc_shared((dim,), "float32")
            rotation = T.alloc_shared((half_head * 2,), "float16")
            T.copy(R[row % seq, :], rotation)
            T.copy(X[row:row + 1, :], x_local)
            for i, j in T.Parallel(1, dim):
                squares[i, j] = x_local[i, j] * x_local[i, j]
            T.reduce_sum(squares, inv_rms, dim=1)
            for i in T.Parallel(1):
                inv_rms[i] = T.rsqrt(inv_rms[i] / dim + eps)
            for i, j in T.Parallel(1, dim):
                normed[j] = x_local[i, j] * inv_rms[i] * T.cast(W[j], "float32")
            for i, j in T.Parallel(1, dim):
                pair = (j // 2) % half_head  # y_even = cos x_even - sin x_odd, y_odd = sin x_even + cos x_odd
                cos = T.cast(rotation[pair * 2], "float32")
                sin = T.cast(rotation[pair * 2 + 1], "float32")
                x_local[i, j] = cos * normed[j] + T.if_then_else(j % 2 == 0, -sin, sin) * normed[j + 1 - 2 * (j % 2)]
            T.copy(x_local, Y[row:row + 1, :])

    return rms_norm_rope


def rms_norm_kernel(rows: int, dim: int, dtype: torch.dtype, eps: float):
    return compiled(("rms_norm", rows, dim, dtype, eps), lambda: _rms_norm_program(rows, dim, dtype_name(dtype), eps))


def rms_norm_rope_kernel(batch: int, seq: int, dim: int, head_dim: int, dtype: torch.dtype, eps: float):
    return compiled(("rms_norm_rope", batch, seq, dim, head_dim, dtype, eps),
                    lambda: _rms_norm_rope_program(batch, seq, dim, head_dim, dtype_name(dtype), eps))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, Decision]:
    """RMSNorm over the last dim; the TileLang kernel on Hopper, the reference elsewhere (with the reason)."""
    reason = kernel_problem(x, weight)
    if reason:
        return rms_norm_reference(x, weight, eps), Decision("rms_norm", "reference", reason)
    rows = x.numel() // x.shape[-1]
    out = torch.empty_like(x)
    rms_norm_kernel(rows, x.shape[-1], x.dtype, eps)(x.reshape(rows, -1), weight.to(x.dtype), out.view(rows, -1))
    return out, Decision("rms_norm", "tilelang")


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor, heads: int) -> tuple[torch.Tensor, Decision]:
    """Wan's q/k preparation in one pass: RMSNorm over [B, S, C], then per-head RoPE; returns [B, S, heads, C/heads]."""
    b, s, c = x.shape
    rope_freqs = freqs.reshape(-1, s, c // heads // 2, 2, 2)
    reason = kernel_problem(x, weight)
    if not reason and rope_freqs.shape[0] != 1:
        reason = "per-sample RoPE frequencies"
    if reason:
        return rms_norm_rope_reference(x, weight, eps, freqs, heads), Decision("rms_norm_rope", "reference", reason)
    kernel = rms_norm_rope_kernel(b, s, c, c // heads, x.dtype, eps)
    out = torch.empty_like(x)
    kernel(x.reshape(b * s, c), weight.to(x.dtype), rotation_table(freqs, s, c // heads // 2), out.view(b * s, c))
    return out.view(b, s, heads, c // heads), Decision("rms_norm_rope", "tilelang")
