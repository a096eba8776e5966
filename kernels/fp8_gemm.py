"""fp8 e4m3 GEMMs for Wan's Linear layers: per-token activation scales, per-output-channel weight scales.

Every big GEMM of a Wan block (q, k, v, o of self-attention, q and o of cross-attention, the FFN's two) runs as
torch._scaled_mm with row-wise scales (CUTLASS's f8f8bf16_rowwise on Hopper: fp8 tensor cores, fp32 accumulation,
the two scale vectors and the bias applied in the epilogue), at about twice the bf16 GEMM rate. Activations never
pass through a separate cast: the fused LayerNorm passes (kernels/layernorm.py) write e4m3 rows and their scales
directly, and the two inputs that come from elsewhere (attention outputs, the FFN's 13,824-wide hidden) go through
one row-quantisation pass each, the FFN's with its tanh GELU applied on the way. A scale per token (amax / 448)
keeps a token's outliers from flattening every other token, which ComfyUI's per-tensor scale of 1 does not.

Weights: a resident bf16 / fp16 weight, LoRAs already merged into it by ComfyUI's patcher, is quantised on first use
and kept until ComfyUI replaces or rewrites it; a ComfyUI fp8_scaled weight (an e4m3 QuantizedTensor with one scale)
is used as stored. Anything ComfyUI computes on the fly (weights cast or patched per call, offloaded or other
quantised weights) keeps ComfyUI's own Linear, with the reason in the report.
"""


import functools
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dispatch import Decision, compiled, dtype_name, kernel_problem
from .rmsnorm import threads_for

FP8 = torch.float8_e4m3fn
FP8_NAME = "float8_e4m3fn"
FP8_MAX = 448.0  # e4m3's largest finite value
TINY = 1e-12  # an all-zero row gets this amax, so its scale stays finite
GELU_TANH = 0.7978845608028654  # sqrt(2 / pi), the tanh approximation nn.GELU(approximate="tanh") uses


@dataclass(frozen=True)
class Fp8Rows:
    """Activations as e4m3 rows [M, K] with one fp32 scale per row [M, 1]: row i is data[i] * scale[i]."""

    data: torch.Tensor
    scale: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return self.data.float() * self.scale


def quantize_rows_reference(x: torch.Tensor, gelu: bool = False) -> Fp8Rows:
    """The row quantisation the kernels compute, in PyTorch (fp32 throughout): x [..., K] -> Fp8Rows [M, K]."""
    rows = x.reshape(-1, x.shape[-1]).float()
    if gelu:
        rows = F.gelu(rows, approximate="tanh")
    amax = rows.abs().amax(-1, keepdim=True).clamp_min(TINY)
    return Fp8Rows((rows * (FP8_MAX / amax)).to(FP8), amax / FP8_MAX)


def _row_quant_program(rows: int, dim: int, dtype: str, gelu: bool):
    """One row per CTA, held in registers in fp32: (GELU,) the row's absmax, then the e4m3 row and its scale."""
    import tilelang.language as T

    @T.prim_func
    def row_quant(X: T.Tensor((rows, dim), dtype), Q: T.Tensor((rows, dim), FP8_NAME), S: T.Tensor((rows, 1), "float32")):
        with T.Kernel(rows, threads=threads_for(dim)) as row:
            x = T.alloc_fragment((1, dim), "float32")
            x8 = T.alloc_fragment((1, dim), FP8_NAME)
            amax = T.alloc_fragment((1,), "float32")
            T.copy(X[row:row + 1, :], x)
            if gelu:
                for i, j in T.Parallel(1, dim):
                    x[i, j] = 0.5 * x[i, j] * (1.0 + T.tanh(GELU_TANH * (x[i, j] + 0.044715 * x[i, j] * x[i, j] * x[i, j])))
            T.reduce_absmax(x, amax, dim=1)
            for i in T.Parallel(1):
                amax[i] = T.max(amax[i], TINY)
                S[row, 0] = amax[i] / FP8_MAX
            for i, j in T.Parallel(1, dim):
                x8[i, j] = T.cast(x[i, j] * (FP8_MAX / amax[i]), FP8_NAME)
            T.copy(x8, Q[row:row + 1, :])

    return row_quant


def row_quant_kernel(rows: int, dim: int, dtype: torch.dtype, gelu: bool):
    return compiled(("fp8_row_quant", rows, dim, dtype, gelu), lambda: _row_quant_program(rows, dim, dtype_name(dtype), gelu))


def quantize_rows(x: torch.Tensor, gelu: bool = False) -> tuple[Fp8Rows, Decision]:
    """x [..., K] as e4m3 rows with per-row scales (after a tanh GELU when `gelu`): one TileLang pass on Hopper,
    the PyTorch reference elsewhere."""
    op = "fp8_quant_gelu" if gelu else "fp8_quant"
    reason = kernel_problem(x)
    if reason:
        return quantize_rows_reference(x, gelu), Decision(op, "reference", reason)
    rows, dim = x.numel() // x.shape[-1], x.shape[-1]
    quantized = Fp8Rows(torch.empty(rows, dim, device=x.device, dtype=FP8), torch.empty(rows, 1, device=x.device))
    row_quant_kernel(rows, dim, x.dtype, gelu)(x.reshape(rows, dim), quantized.data, quantized.scale)
    return quantized, Decision(op, "tilelang")


@dataclass(frozen=True)
class Fp8Weight:
    """A Linear's weight as e4m3 [N, K] with a scale per output channel [1, N], and its bias in the GEMM's output
    dtype, ready for torch._scaled_mm."""

    data: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [N, K] -> (e4m3 [N, K], fp32 scale per output channel [1, N]), amax / 448 per channel."""
    w = weight.detach().float()
    amax = w.abs().amax(1, keepdim=True).clamp_min(TINY)
    return (w * (FP8_MAX / amax)).to(FP8), (amax / FP8_MAX).t().contiguous()


def _comfy_fp8_scaled(weight) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(e4m3 data [N, K], its one scale) of a ComfyUI fp8_scaled weight (comfy_kitchen's QuantizedTensor in an
    e4m3 tensor-core layout), else None."""
    data, params = getattr(weight, "_qdata", None), getattr(weight, "_params", None)
    layout = getattr(weight, "_layout_cls", "")
    if data is None or data.dtype != FP8 or "FP8" not in layout or "E5M2" in layout or data.shape != weight.shape:
        return None
    scale = getattr(params, "scale", None)
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        return None
    return data, scale


def linear_problem(linear, x: torch.Tensor) -> str:
    """'' when this Linear can run as an fp8 GEMM on x: its weight resident on x's device, as a float weight ComfyUI
    would use as is, or as an fp8_scaled one; else why not."""
    if getattr(linear, "weight_function", None) or getattr(linear, "bias_function", None):
        return "LoRA or other patches applied on the fly"
    weight, bias = linear.weight, linear.bias
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        return "weights not resident on the GPU (offloaded)"
    if _comfy_fp8_scaled(weight) is None:
        if type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return "weights quantised in a format other than fp8_scaled"
        if getattr(linear, "comfy_cast_weights", False) and weight.dtype != x.dtype:
            return f"weights cast on the fly ({weight.dtype} to {x.dtype})"
    n, k = weight.shape
    if n % 16 or k % 16:
        return f"weight {n}x{k}: fp8 GEMMs need multiples of 16"
    return ""


@functools.lru_cache(maxsize=None)
def output_dtype(device: torch.device, wanted: torch.dtype) -> torch.dtype:
    """`wanted` where this PyTorch's row-wise scaled GEMM writes it on `device`, else bf16 (its CUTLASS kernel writes
    bf16 only; the output is then cast, one pass)."""
    if wanted == torch.bfloat16:
        return wanted
    a = torch.ones(16, 16, device=device).to(FP8)
    ones = torch.ones(16, 1, device=device)
    try:
        torch._scaled_mm(a, a.t(), scale_a=ones, scale_b=ones.t(), bias=torch.zeros(16, device=device, dtype=wanted),
                         out_dtype=wanted)
    except RuntimeError:
        return torch.bfloat16
    return wanted


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place update count; inference tensors (weights made under torch.inference_mode) keep none, and
    outside that mode they cannot be updated in place, so their storage alone identifies them."""
    return -1 if tensor.is_inference() else tensor._version


class Fp8WeightCache:
    """The fp8 copies of one model's weights, made on first use. An entry is remade when its weight changes (ComfyUI
    patching a LoRA in replaces the tensor; in-place updates bump its version; moving it changes its storage), and
    the whole cache is dropped when another model asks, so at most one model's copies
    occupy the GPU beside ComfyUI's weights (12 GB for Wan 14B): Wan 2.2's two experts take turns."""

    def __init__(self):
        self._owner = None
        self._entries: dict[int, tuple[tuple, Fp8Weight]] = {}
        self._lock = threading.Lock()

    def get(self, owner: object, linear, out_dtype: torch.dtype) -> Fp8Weight:
        weight, bias = linear.weight, linear.bias
        stored = _comfy_fp8_scaled(weight)
        storage = stored[0] if stored is not None else weight
        signature = (storage.data_ptr(), _version(storage), storage.device, tuple(weight.shape), out_dtype,
                     None if bias is None else (bias.data_ptr(), _version(bias)))
        with self._lock:
            if self._owner is not owner:
                self._owner, self._entries = owner, {}
            entry = self._entries.get(id(linear))
            if entry is not None and entry[0] == signature:
                return entry[1]
            if stored is not None:
                data, scale = stored
                scale = scale.float().reshape(1, 1).expand(1, weight.shape[0]).contiguous()
            else:
                data, scale = quantize_weight(weight)
            quantized = Fp8Weight(data, scale, None if bias is None else bias.to(out_dtype))
            self._entries[id(linear)] = (signature, quantized)
            return quantized

    def clear(self) -> None:
        with self._lock:
            self._owner, self._entries = None, {}


WEIGHTS = Fp8WeightCache()


def scaled_linear(rows: Fp8Rows, weight: Fp8Weight, out_dtype: torch.dtype) -> torch.Tensor:
    """rows @ weight^T + bias as one row-wise scaled fp8 GEMM: [M, K] x [N, K] -> [M, N] in out_dtype (off CUDA, where
    no fp8 tensor cores exist, the same product in fp32)."""
    if not rows.data.is_cuda:
        return scaled_linear_reference(rows, weight).to(out_dtype)
    gemm_dtype = output_dtype(rows.data.device, out_dtype)
    bias = None if weight.bias is None else weight.bias.to(gemm_dtype)
    out = torch._scaled_mm(rows.data, weight.data.t(), scale_a=rows.scale, scale_b=weight.scale, bias=bias,
                           out_dtype=gemm_dtype)
    return out if gemm_dtype == out_dtype else out.to(out_dtype)


def scaled_linear_reference(rows: Fp8Rows, weight: Fp8Weight) -> torch.Tensor:
    """What scaled_linear computes, in fp32 on any device (for tests)."""
    out = rows.dequantize() @ (weight.data.float() * weight.scale.t()).t()
    return out if weight.bias is None else out + weight.bias.float()
