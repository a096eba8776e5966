"""Wan's residual updates and LayerNorms (with modulation or affine weights) in one pass each.

Every Wan block runs, over the full token stream (32,760 x 5,120 at 480p):
  norm1:  shift1 + LayerNorm(x) * (1 + scale1)                          -> self-attention input
  norm3:  x = x + y * gate1;  LayerNorm(x) * w + b                      -> cross-attention input
  norm2:  x = x + y;  shift2 + LayerNorm(x) * (1 + scale2)              -> FFN input
  end:    x = x + y * gate2                                             -> the block's output
ComfyUI runs each line as separate ops (LayerNorm, then addcmul, ...), so the stream is read and written
several times per line: 12 passes of 335 MB per block, against 6 for one kernel per line. The block's last
update has no norm after it; PyTorch runs its broadcast addcmul unvectorised, at about half the copy rate,
so it gets a plain 16-byte-wide kernel (`gated_residual`). The kernel
computes in fp32 and rounds the updated residual to the stream's dtype before normalising it, as
ComfyUI's separate ops do; the modulated output is rounded once (ComfyUI rounds three times).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dispatch import Decision, compiled, dtype_name, kernel_problem
from .fp8_gemm import FP8, FP8_MAX, FP8_NAME, TINY, Fp8Rows, quantize_rows_reference
from .rmsnorm import threads_for


@dataclass(frozen=True)
class NormPlan:
    """Which parts one call has: a residual update before the norm (none / plain add / gated add), and the norm's
    output transform (modulation by per-sample shift and scale, or affine weight and bias)."""

    residual: str  # "none", "add", "gated"
    modulate: bool  # True: shift + n * (1 + scale); False: n * weight + bias
    fp8_out: bool = False  # the normed output as e4m3 rows with a scale per row (kernels/fp8_gemm.py), for fp8 GEMMs


def layer_norm_reference(x: torch.Tensor, plan: NormPlan, eps: float, *, y=None, gate=None, shift=None, scale=None,
                         weight=None, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's own op sequence (comfy/ldm/wan/model.py), op for op: (updated x, normed output).

    x, y [B, L, C]; gate, shift, scale [B, 1, C]; weight, bias [C]."""
    if plan.residual == "gated":
        x = torch.addcmul(x, y, gate)
    elif plan.residual == "add":
        x = x + y
    if plan.modulate:
        out = torch.addcmul(shift, F.layer_norm(x, (x.shape[-1],), eps=eps), 1 + scale)
    else:
        out = F.layer_norm(x, (x.shape[-1],), weight.to(x), bias.to(x), eps)
    return x, out


def rows_per_cta(seq: int) -> int:
    """Rows one CTA normalises in turn: its per-sample vectors are staged in shared memory once for all of them
    (a row is 10 KB at dim 5120; re-reading three such vectors per row would triple the traffic to the SMs).
    A divisor of the sequence length, so every CTA's rows belong to one sample."""
    return next(r for r in (8, 4, 2, 1) if seq % r == 0)


def _layer_norm_program(batch: int, seq: int, dim: int, dtype: str, eps: float, plan: NormPlan):
    """The row stays in registers (fp32) between the residual update, the two reductions (the mean, then the centred
    variance, as F.layer_norm computes them) and the output transform; loads and stores are 16 bytes wide. With
    `plan.fp8_out` the output row is written as e4m3 with its scale (amax / 448), for the fp8 GEMM it feeds."""
    import tilelang.language as T

    rows = batch * seq
    per_cta = rows_per_cta(seq)
    row_shape, vec_shape = (rows, dim), (batch, dim)
    residual, modulate, fp8_out = plan.residual, plan.modulate, plan.fp8_out

    @T.macro
    def body(X, Y, G, A, M, X_out, Out, S):
        # A, M: the sample's shift and scale when modulating, else the norm's bias and weight (in every row)
        with T.Kernel(rows // per_cta, threads=threads_for(dim)) as block:
            sample = block * per_cta // seq
            add_vector = T.alloc_shared((dim,), dtype)
            mul_vector = T.alloc_shared((dim,), dtype)
            gate_vector = T.alloc_shared((dim,), dtype)
            x = T.alloc_fragment((1, dim), "float32")
            work = T.alloc_fragment((1, dim), "float32")
            stat = T.alloc_fragment((1,), "float32")
            mean = T.alloc_fragment((1,), "float32")
            x8 = T.alloc_fragment((1, dim), FP8_NAME)
            T.copy(A[sample, :], add_vector)
            T.copy(M[sample, :], mul_vector)
            if residual == "gated":
                T.copy(G[sample, :], gate_vector)
            for r in T.serial(per_cta):
                row = block * per_cta + r
                T.copy(X[row:row + 1, :], x)
                if residual == "gated":
                    T.copy(Y[row:row + 1, :], work)
                    for i, j in T.Parallel(1, dim):  # rounded to the stream's dtype, as ComfyUI's addcmul
                        x[i, j] = T.cast(T.cast(x[i, j] + work[i, j] * T.cast(gate_vector[j], "float32"), dtype), "float32")
                    T.copy(x, X_out[row:row + 1, :])
                if residual == "add":
                    T.copy(Y[row:row + 1, :], work)
                    for i, j in T.Parallel(1, dim):
                        x[i, j] = T.cast(T.cast(x[i, j] + work[i, j], dtype), "float32")
                    T.copy(x, X_out[row:row + 1, :])
                T.reduce_sum(x, mean, dim=1)
                for i in T.Parallel(1):
                    mean[i] = mean[i] / dim
                for i, j in T.Parallel(1, dim):
                    work[i, j] = (x[i, j] - mean[i]) * (x[i, j] - mean[i])
                T.reduce_sum(work, stat, dim=1)
                for i in T.Parallel(1):
                    stat[i] = T.rsqrt(stat[i] / dim + eps)
                if modulate:
                    for i, j in T.Parallel(1, dim):
                        x[i, j] = T.cast(add_vector[j], "float32") + (x[i, j] - mean[i]) * stat[i] * (1.0 + T.cast(mul_vector[j], "float32"))
                else:
                    for i, j in T.Parallel(1, dim):
                        x[i, j] = (x[i, j] - mean[i]) * stat[i] * T.cast(mul_vector[j], "float32") + T.cast(add_vector[j], "float32")
                if fp8_out:
                    T.reduce_absmax(x, stat, dim=1)
                    for i in T.Parallel(1):
                        stat[i] = T.max(stat[i], TINY)
                        S[row, 0] = stat[i] / FP8_MAX
                    for i, j in T.Parallel(1, dim):
                        x8[i, j] = T.cast(x[i, j] * (FP8_MAX / stat[i]), FP8_NAME)
                    T.copy(x8, Out[row:row + 1, :])
                else:
                    T.copy(x, Out[row:row + 1, :])

    if fp8_out:
        @T.prim_func
        def layer_norm_modulate_fp8(X: T.Tensor(row_shape, dtype), Y: T.Tensor(row_shape, dtype), G: T.Tensor(vec_shape, dtype),
                                    A: T.Tensor(vec_shape, dtype), M: T.Tensor(vec_shape, dtype),
                                    X_out: T.Tensor(row_shape, dtype), Out: T.Tensor(row_shape, FP8_NAME),
                                    S: T.Tensor((rows, 1), "float32")):
            body(X, Y, G, A, M, X_out, Out, S)

        return layer_norm_modulate_fp8

    @T.prim_func
    def layer_norm_modulate(X: T.Tensor(row_shape, dtype), Y: T.Tensor(row_shape, dtype), G: T.Tensor(vec_shape, dtype),
                            A: T.Tensor(vec_shape, dtype), M: T.Tensor(vec_shape, dtype), X_out: T.Tensor(row_shape, dtype),
                            Out: T.Tensor(row_shape, dtype)):
        body(X, Y, G, A, M, X_out, Out, None)

    return layer_norm_modulate


def layer_norm_kernel(batch: int, seq: int, dim: int, dtype: torch.dtype, eps: float, plan: NormPlan):
    name = dtype_name(dtype)
    return compiled(("layer_norm", batch, seq, dim, dtype, eps, plan),
                    lambda: _layer_norm_program(batch, seq, dim, name, eps, plan))


def _per_token_problem(x: torch.Tensor, *vectors) -> str:
    """'' when every given vector holds one value per channel (once, or once per sample), as the kernels stage them."""
    if any(v is not None and v.numel() not in (x.shape[-1], x.shape[0] * x.shape[-1]) for v in vectors):
        return "per-token modulation"
    return ""


def _per_sample(vector: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """[B or 1, 1, C] or [C] -> contiguous [B, C] in x's dtype."""
    return vector.to(like.dtype).reshape(-1, like.shape[-1]).expand(batch, -1).contiguous()


def layer_norm(x: torch.Tensor, plan: NormPlan, eps: float, *, y=None, gate=None, shift=None, scale=None, weight=None,
               bias=None) -> tuple[torch.Tensor, torch.Tensor | Fp8Rows, Decision]:
    """(updated x, normed output, Decision): one TileLang pass on Hopper, ComfyUI's own op sequence elsewhere.
    With `plan.fp8_out` the normed output is Fp8Rows [B * L, C] (e4m3 with a scale per token).

    x, y [B, L, C]; gate, shift, scale [B, 1, C] (Wan's per-sample modulation); weight, bias [C]."""
    operands = [t for t in (x, y) if t is not None]
    reason = kernel_problem(*operands) or _per_token_problem(x, gate, shift, scale)
    if not reason and (plan.modulate and (shift is None or scale is None) or not plan.modulate and (weight is None or bias is None)):
        reason = "a LayerNorm without weight and bias"
    if reason:
        updated, out = layer_norm_reference(x, plan, eps, y=y, gate=gate, shift=shift, scale=scale, weight=weight, bias=bias)
        return updated, quantize_rows_reference(out) if plan.fp8_out else out, Decision("layer_norm", "reference", reason)
    b, s, c = x.shape
    kernel = layer_norm_kernel(b, s, c, x.dtype, eps, plan)
    out = torch.empty(b * s, c, device=x.device, dtype=FP8) if plan.fp8_out else torch.empty_like(x)
    outputs = (out, torch.empty(b * s, 1, device=x.device)) if plan.fp8_out else (out.view(b * s, c),)
    updated = torch.empty_like(x) if plan.residual != "none" else x
    gate_rows = _per_sample(gate, b, x) if plan.residual == "gated" else x.new_empty(b, c)  # unread without a gate
    if plan.modulate:
        first, second = _per_sample(shift, b, x), _per_sample(scale, b, x)
    else:
        first, second = _per_sample(bias, b, x), _per_sample(weight, b, x)
    kernel(x.view(b * s, c), (y if y is not None else x).reshape(b * s, c), gate_rows, first, second,
           updated.view(b * s, c), *outputs)
    return updated, Fp8Rows(*outputs) if plan.fp8_out else out, Decision("layer_norm", "tilelang")


def _gated_residual_program(batch: int, seq: int, dim: int, dtype: str):
    """x + y * gate per row in fp32, rounded once (as PyTorch's addcmul), the sample's gate staged in shared memory."""
    import tilelang.language as T

    rows = batch * seq
    per_cta = rows_per_cta(seq)

    @T.prim_func
    def gated_residual(X: T.Tensor((rows, dim), dtype), Y: T.Tensor((rows, dim), dtype), G: T.Tensor((batch, dim), dtype),
                       X_out: T.Tensor((rows, dim), dtype)):
        with T.Kernel(rows // per_cta, threads=threads_for(dim)) as block:
            gate_vector = T.alloc_shared((dim,), dtype)
            x = T.alloc_fragment((1, dim), "float32")
            y = T.alloc_fragment((1, dim), "float32")
            T.copy(G[block * per_cta // seq, :], gate_vector)
            for r in T.serial(per_cta):
                row = block * per_cta + r
                T.copy(X[row:row + 1, :], x)
                T.copy(Y[row:row + 1, :], y)
                for i, j in T.Parallel(1, dim):
                    x[i, j] = x[i, j] + y[i, j] * T.cast(gate_vector[j], "float32")
                T.copy(x, X_out[row:row + 1, :])

    return gated_residual


def gated_residual_kernel(batch: int, seq: int, dim: int, dtype: torch.dtype):
    name = dtype_name(dtype)
    return compiled(("gated_residual", batch, seq, dim, dtype), lambda: _gated_residual_program(batch, seq, dim, name))


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, Decision]:
    """x + y * gate (x, y [B, L, C], gate [B, 1, C]): the TileLang kernel on Hopper, PyTorch's addcmul elsewhere."""
    reason = kernel_problem(x, y) or _per_token_problem(x, gate)
    if reason:
        return torch.addcmul(x, y, gate), Decision("gated_residual", "reference", reason)
    b, s, c = x.shape
    out = torch.empty_like(x)
    gated_residual_kernel(b, s, c, x.dtype)(x.reshape(b * s, c), y.reshape(b * s, c), _per_sample(gate, b, x), out.view(b * s, c))
    return out, Decision("gated_residual", "tilelang")
