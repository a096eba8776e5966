"""What decides whether a TileLang kernel may run, and the compiled-kernel cache."""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

SM90 = (9, 0)  # the only compute capability that runs sm_90a code: wgmma and setmaxnreg exist on no later GPU
INSTALL_HINT = "pip install -r requirements-hopper.txt (in this pack's folder) to get the Hopper kernels"
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
TILELANG_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
TARGET = {"kind": "cuda", "arch": "sm_90a"}  # sm_90a: wgmma, and setmaxnreg for the warp-specialised kernels
PASS_CONFIGS = {"tl.enable_fast_math": True}  # ex2.approx for the softmax, as FlashAttention-3 builds
STILL_COMPILING = "kernels still compiling"  # why a kernel did not run while a background compile builds it


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


def tilelang_missing() -> str:
    """'' when TileLang is installed, else what to install (found without importing it: the import is slow)."""
    return "" if importlib.util.find_spec("tilelang") is not None else f"TileLang is not installed: {INSTALL_HINT}"


@functools.lru_cache(maxsize=1)
def tilelang_problem() -> str:
    """'' when TileLang imports, else the reason (shown to the user)."""
    missing = tilelang_missing()
    if missing:
        return missing
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


def hopper_problem(capability: tuple[int, int] | None) -> str:
    """'' for a Hopper GPU (compute capability exactly 9.0), else why not. The kernels are compiled for sm_90a, whose
    instructions (wgmma, setmaxnreg) no other GPU runs: not Ada (8.9), not Blackwell (10.0, 12.0)."""
    if capability is None:
        return "no CUDA device: ComfyUI runs this on the CPU"
    if tuple(capability) != SM90:
        return (f"compute capability {capability[0]}.{capability[1]}: the TileLang kernels are built for Hopper (sm_90a, "
                "compute capability 9.0) only")
    return ""


def tilelang_gate(capability: tuple[int, int] | None, compile_probe: Callable[[], str]) -> str:
    """The one decision every TileLang kernel goes through (the kernel node, each op's dispatch, the fast VAE path):
    '' when the kernels may run on a GPU of `capability`, else why not. `compile_probe` ('' when TileLang builds a
    kernel here) is asked only on Hopper, so no other machine compiles anything."""
    return hopper_problem(capability) or compile_probe()


def capability_of(device) -> tuple[int, int] | None:
    """The compute capability of a CUDA `device`; None for any other device."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def kernel_gate(device) -> str:
    """`tilelang_gate` for a device, with this machine's compile probe."""
    return tilelang_gate(capability_of(device), compile_problem)


def tensor_problem(*tensors: torch.Tensor) -> str:
    """'' when every tensor is a CUDA tensor a kernel can take (bf16 or fp16, contiguous), else why not."""
    first = tensors[0]
    if first.device.type != "cuda":
        return f"tensors are on {first.device.type}, not CUDA"
    for tensor in tensors:
        if tensor.dtype not in KERNEL_DTYPES:
            return f"dtype {tensor.dtype} is not bf16 or fp16"
        if not tensor.is_contiguous():
            return "a tensor is not contiguous"
    return ""


def kernel_problem(*tensors: torch.Tensor) -> str:
    """'' when a TileLang kernel may run on these tensors: the tensors fit and their device passes the gate."""
    return tensor_problem(*tensors) or kernel_gate(tensors[0].device)


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
