"""Test harness: the pack as `svi_infinity`, and real ComfyUI v0.33.0 in-process on the CPU.

ComfyUI is found at $COMFYUI_PATH (or as the pack's grandparent). Without it the ComfyUI layers
skip with the reason; under CI (CI=true) they fail instead, so a green CI always ran them.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# `python -m pytest` (the README's test command) puts the working directory, this pack's root, first on sys.path, where
# the pack's kernels/ folder would stand in for the `kernels` distribution that transformers (through peft) imports. The
# pack is imported as `svi_infinity` below, never from its root.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT]
_alias_spec = importlib.util.spec_from_file_location("_svi_pack_alias", ROOT / "demo" / "pack_alias.py")
_alias = importlib.util.module_from_spec(_alias_spec)
_alias_spec.loader.exec_module(_alias)
_alias.import_pack()

from svi_infinity.demo.comfy_runtime import COMFYUI_GGUF_COMMIT, ComfyUINotFound, find_comfyui, find_comfyui_gguf  # noqa: E402


def skip_or_fail_in_ci(what: str, reason: str):
    """Outside CI a missing prerequisite skips with the reason; under CI (CI set) it fails, so a green CI ran it all."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run {what}: {reason}", pytrace=False)
    pytest.skip(reason)


def _comfyui_or_skip() -> Path:
    try:
        return find_comfyui()
    except ComfyUINotFound as error:
        skip_or_fail_in_ci("the ComfyUI layers", str(error))


@pytest.fixture(scope="session")
def hopper_compiler() -> str:
    """nvcc's path, with TileLang importable: together they compile the Hopper kernels on any machine, no GPU needed."""
    from svi_infinity.kernels.dispatch import tilelang_problem

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        skip_or_fail_in_ci("the kernel compile tests", "nvcc not found: TileLang needs CUDA's compiler to build the Hopper "
                           "kernels (a CUDA toolkit with nvcc on PATH)")
    problem = tilelang_problem()
    if problem:
        skip_or_fail_in_ci("the kernel compile tests", problem)
    return nvcc


def custom_node_dirs() -> list[Path]:
    """The packs the test ComfyUIs load: this one, the stand-in encoders, and ComfyUI-GGUF where it and the gguf package
    it imports are both there (the GGUF workflows need its loader; the environment without TileLang has neither)."""
    gguf = find_comfyui_gguf()
    usable = gguf is not None and importlib.util.find_spec("gguf") is not None
    return [ROOT, ROOT / "demo" / "stand_ins"] + ([gguf] if usable else [])


@pytest.fixture(scope="session")
def comfyui_gguf() -> Path:
    """ComfyUI-GGUF's folder; missing: skip, or fail under CI."""
    gguf = find_comfyui_gguf()
    if gguf is None:
        skip_or_fail_in_ci("the GGUF workflow tests", "ComfyUI-GGUF not found: set COMFYUI_GGUF_PATH to a checkout of "
                           f"city96/ComfyUI-GGUF (the tests pin commit {COMFYUI_GGUF_COMMIT})")
    return gguf


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    return _comfyui_or_skip()


@pytest.fixture(scope="session")
def comfy_modules(comfy_dir, tmp_path_factory):
    """ComfyUI's model and sampling modules only (no executor or server): enough for GPU-side model tests."""
    from svi_infinity.demo.comfy_runtime import import_comfy

    import_comfy(comfy_dir, tmp_path_factory.mktemp("comfy_modules"), cpu=not torch.cuda.is_available())


@pytest.fixture(scope="session")
def comfy_runtime(comfy_dir, tmp_path_factory):
    """Real ComfyUI in this process with this pack and the stand-in encoders loaded, and the tiny models on disk."""
    from svi_infinity.demo.comfy_runtime import InProcessComfyUI
    from svi_infinity.demo.tiny_models import write_reference_image

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = tmp_path_factory.mktemp("comfy_base")
    runtime = InProcessComfyUI(comfy_dir, base, custom_node_dirs())
    from svi_infinity.demo.tiny_models import write_tiny_model_set

    runtime.tiny_models = write_tiny_model_set(runtime.models_dir)
    write_reference_image(base / "input" / "svi_reference.png")
    return runtime


@pytest.fixture(scope="session")
def gguf_package():
    """The gguf package (requirements-dev.txt), with its quantisers imported."""
    if importlib.util.find_spec("gguf") is None:
        skip_or_fail_in_ci("the GGUF tests", "the gguf package is not installed (pip install -r requirements-dev.txt)")
    import gguf.quants

    return gguf


@pytest.fixture(scope="session")
def comfy_gguf_runtime(comfy_runtime, comfyui_gguf, gguf_package):
    """The in-process ComfyUI, which loaded ComfyUI-GGUF's nodes (UnetLoaderGGUF) with the others."""
    assert comfyui_gguf in comfy_runtime.custom_node_dirs
    return comfy_runtime


@pytest.fixture(scope="session")
def quantized_models(comfy_runtime):
    """fmt ('Q8_0', 'Q4_K', 'fp8_scaled') -> the tiny model set in that format on disk, written once per session
    (GGUF sets need the gguf package: request comfy_gguf_runtime first, which skips or fails without it)."""
    from svi_infinity.demo.quantized_models import write_quantized_model_set

    written: dict[str, dict[str, str]] = {}

    def model_set(fmt: str) -> dict[str, str]:
        if fmt not in written:
            written[fmt] = write_quantized_model_set(comfy_runtime.models_dir, fmt)
        return written[fmt]

    return model_set
