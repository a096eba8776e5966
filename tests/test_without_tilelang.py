"""The pack without TileLang (only the Hopper kernels need it: requirements-hopper.txt).

Loading the pack into ComfyUI never imports TileLang, wherever it is installed. And in an environment where TileLang
is not installed at all (.venv-without-hopper: ComfyUI's requirements and this pack's requirements.txt only, made by
`scripts/setup_env.sh --without-hopper`; .ci/run runs this file there with SVI_EXPECT_NO_TILELANG=1), the pack loads
into real ComfyUI, a long-video workflow with the kernel node runs end to end, and the node's report says how to get
the kernels.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LOAD_THE_PACK = """
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "demo"))
import pack_alias
pack_alias.import_pack()
from svi_infinity.demo.comfy_runtime import InProcessComfyUI
InProcessComfyUI(Path(sys.argv[2]), Path(sys.argv[3]), [pack_alias.ROOT])
import nodes
schemas = [nodes.NODE_CLASS_MAPPINGS[name].GET_NODE_INFO_V1() for name in nodes.NODE_CLASS_MAPPINGS if name.startswith("SVI")]
import svi_infinity.pipeline.fast_vae, svi_infinity.kernels.model_patch, svi_infinity.kernels.vae_norm  # noqa: E401
print(json.dumps({"nodes": len(schemas), "tilelang": sorted(m for m in sys.modules if m.split(".")[0] == "tilelang")}))
"""


def test_loading_the_pack_into_comfyui_imports_no_tilelang(comfy_dir, tmp_path):
    """In a fresh process: ComfyUI loads the pack, every node's schema is built, the kernel and fast-VAE modules are
    imported, and not one TileLang module is (it would cost seconds at every start, and fail where it is absent)."""
    done = subprocess.run([sys.executable, "-c", LOAD_THE_PACK, str(ROOT), str(comfy_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["nodes"] >= 9
    assert loaded["tilelang"] == []


def test_a_long_video_with_the_kernel_node_runs_where_tilelang_is_not_installed(comfy_runtime):
    if importlib.util.find_spec("tilelang") is not None:
        if os.environ.get("SVI_EXPECT_NO_TILELANG"):
            pytest.fail("TileLang is installed in the environment that must not have it", pytrace=False)
        pytest.skip("TileLang is installed here; .ci/run runs this test in .venv-without-hopper "
                    "(scripts/setup_env.sh --without-hopper), which has no TileLang")
    from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), comfy_runtime.tiny_models, width=32,
                              height=32, length=9, num_clips=2)
    stack = next(k for k, v in prompt.items() if v["class_type"] == "SVILoraStack")
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")
    prompt["900"] = {"class_type": "SVIKernelAccelerate",
                     "inputs": {"model": [stack, 0], "attention": True, "attention_backend": "auto", "norms": True,
                                "precompile_width": 32, "precompile_height": 32, "precompile_length": 9,
                                "vae": long_video["inputs"]["vae"]}}
    long_video["inputs"]["model"] = ["900", 0]
    long_video["inputs"]["vae"] = ["900", 2]
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    report = run.outputs["900"]["text"]
    assert "not active: TileLang kernels: TileLang is not installed: pip install -r requirements-hopper.txt " \
           "(in this pack's folder) to get the Hopper kernels" in report, report
    long_video_node = next(k for k, v in prompt.items() if v["class_type"] == "SVILongVideo")
    video = run.outputs[long_video_node]["images"][0]
    assert (comfy_runtime.output_dir / video["subfolder"] / video["filename"]).stat().st_size > 0
    assert not any(m.split(".")[0] == "tilelang" for m in sys.modules)
