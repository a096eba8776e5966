"""Test harness: the pack as `svi_infinity`, and real ComfyUI v0.33.0 in-process on the CPU.

ComfyUI is found at $COMFYUI_PATH (or as the pack's grandparent). Without it the ComfyUI layers
skip with the reason; under CI (CI=true) they fail instead, so a green CI always ran them.
"""

import os
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_alias_spec = importlib.util.spec_from_file_location("_svi_pack_alias", ROOT / "demo" / "pack_alias.py")
_alias = importlib.util.module_from_spec(_alias_spec)
_alias_spec.loader.exec_module(_alias)
_alias.import_pack()

from svi_infinity.demo.comfy_runtime import ComfyUINotFound, find_comfyui  # noqa: E402


def _comfyui_or_skip() -> Path:
    try:
        return find_comfyui()
    except ComfyUINotFound as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the ComfyUI layers: {error}", pytrace=False)
        pytest.skip(str(error))


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
    runtime = InProcessComfyUI(comfy_dir, base, [ROOT, ROOT / "demo" / "stand_ins"])
    from svi_infinity.demo.tiny_models import write_tiny_model_set

    runtime.tiny_models = write_tiny_model_set(runtime.models_dir)
    write_reference_image(base / "input" / "svi_reference.png")
    return runtime


COMFYUI_GGUF_COMMIT = "795e45156ece99afbc3efef911e63fcb46e6a20d"  # the city96/ComfyUI-GGUF commit the tests are run against


def _skip_or_fail_in_ci(problem: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the GGUF tests: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def gguf_package():
    """The gguf package (requirements-dev.txt), with its quantisers imported."""
    if importlib.util.find_spec("gguf") is None:
        _skip_or_fail_in_ci("the gguf package is not installed (pip install -r requirements-dev.txt)")
    import gguf.quants

    return gguf


def _comfyui_gguf_or_skip() -> Path:
    """ComfyUI-GGUF at $COMFYUI_GGUF_PATH (default /opt/ComfyUI-GGUF) and the `gguf` package it needs."""
    path = Path(os.environ.get("COMFYUI_GGUF_PATH") or "/opt/ComfyUI-GGUF")
    problem = None
    if not (path / "nodes.py").is_file() or not (path / "loader.py").is_file():
        problem = (f"ComfyUI-GGUF not found at {path}: set COMFYUI_GGUF_PATH to a checkout of city96/ComfyUI-GGUF "
                   f"at commit {COMFYUI_GGUF_COMMIT}")
    elif importlib.util.find_spec("gguf") is None:
        problem = "the gguf package is not installed (pip install -r requirements-dev.txt)"
    if problem:
        _skip_or_fail_in_ci(problem)
    return path.resolve()


@pytest.fixture(scope="session")
def comfy_gguf_runtime(comfy_runtime):
    """The in-process ComfyUI with ComfyUI-GGUF's nodes (UnetLoaderGGUF) loaded as well."""
    comfy_runtime.load_custom_nodes(_comfyui_gguf_or_skip())
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
