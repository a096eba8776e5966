"""What decides whether a TileLang kernel may run, and the compiled-kernel cache."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

HOPPER = (9, 0)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
TILELANG_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
TARGET = {"kind": "cuda", "arch": "sm_90a"}  # sm_90a: wgmma, and setmaxnreg for the warp-specialised kernels
PASS_CONFIGS = {"tl.enable_fast_math": True}  # ex2.approx for the softmax, as FlashAttention-3 builds


def dtype_name(dtype: torch.dtype) -> str:
    """TileLang's name for a kernel dtype."""
    return TILELANG_DTYPE_NAMES[dtype]


@dataclass(frozen=True)
class Decision:
    op: str
    backend: str  # "tilelang", "cudnn", "reference"
    reason: str = ""  # why the kernel did not run; empty when it did

    def line(self) -> str:
        return f"{self.op}: {self.backend}" + (f" ({self.reason})" if self.reason else "")


@functools.lru_cache(maxsize=1)
def tilelang_problem() -> str:
    """'' when TileLang imports, else the reason (shown to the user)."""
    os.environ.setdefault("TILELANG_CACHE_DIR", str(cache_dir()))  # read by TileLang at import
    try:
        import tilelang  # noqa: F401
    except Exception as error:  # an import can fail in many ways (missing wheel, CUDA libs, ABI)
        return f"TileLang not importable: {type(error).__name__}: {error}"
    return ""


@functools.lru_cache(maxsize=1)
def compile_problem() -> str:
    """'' when TileLang can build a kernel on this machine (it needs CUDA's compiler), else the reason. Checked once,
    on a tiny RMSNorm, before any kernel is swapped in: a machine without nvcc keeps ComfyUI's ops and cuDNN
    instead of failing at the first step."""
    problem = tilelang_problem()
    if problem:
        return problem
    from .rmsnorm import rms_norm_kernel

    try:
        rms_norm_kernel(8, 128, torch.bfloat16, 1e-6)
    except Exception as error:  # compiler missing, toolkit mismatch, cache not writable: all mean "no TileLang here"
        return f"TileLang cannot compile kernels here: {type(error).__name__}: {str(error)[:300]}"
    return ""


def device_problem(*tensors: torch.Tensor) -> str:
    """'' when every tensor is on a Hopper-class CUDA device with a kernel dtype, else why not."""
    first = tensors[0]
    if first.device.type != "cuda":
        return f"tensors are on {first.device.type}, not CUDA"
    capability = torch.cuda.get_device_capability(first.device)
    if capability < HOPPER:
        return f"compute capability {capability[0]}.{capability[1]} is below 9.0 (Hopper)"
    for tensor in tensors:
        if tensor.dtype not in KERNEL_DTYPES:
            return f"dtype {tensor.dtype} is not bf16 or fp16"
        if not tensor.is_contiguous():
            return "a tensor is not contiguous"
    return ""


def cache_dir() -> Path:
    """TileLang's disk cache, reused across runs (TILELANG_CACHE_DIR wins when set)."""
    return Path(os.environ.get("TILELANG_CACHE_DIR", Path.home() / ".cache" / "svi_infinity" / "tilelang"))


_compiled: dict[tuple, object] = {}
_lock = threading.Lock()


def compiled(key: tuple, build):
    """Compiles `build()` (a T.prim_func whose last argument is the output) once per key; TileLang's disk cache
    makes later processes fast. Callers allocate the output, so tests can poison it."""
    with _lock:
        if key not in _compiled:
            import tilelang

            _compiled[key] = tilelang.compile(build(), out_idx=None, target=TARGET, pass_configs=PASS_CONFIGS)
        return _compiled[key]
