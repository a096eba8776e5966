"""The real ComfyUI server (main.py) with the pack in custom_nodes: /object_info, POST /prompt, /history."""

import time
from pathlib import Path

import pytest

from svi_infinity.demo.comfy_runtime import ComfyUIServer
from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

ROOT = Path(__file__).resolve().parent.parent.parent
SVI_NODE_IDS = {"SVIEncodeAnchor", "SVIMotionLatent", "SVIMotionFrames", "SVIConditioning", "SVILoraStack",
                "SVITurboSampler", "SVIJoinClips", "SVILongVideo"}


@pytest.fixture(scope="module")
def server(comfy_runtime, tmp_path_factory):
    """A server sharing the in-process runtime's tiny model files (read-only) and reference image."""
    import shutil
    import sys

    base = tmp_path_factory.mktemp("server_base")
    (base / "models").symlink_to(comfy_runtime.models_dir, target_is_directory=True)
    (base / "input").mkdir()
    shutil.copy(comfy_runtime.base_dir / "input" / "svi_reference.png", base / "input")
    instance = ComfyUIServer(comfy_runtime.comfy_dir, base, [ROOT, ROOT / "demo" / "stand_ins"], python=sys.executable)
    instance.tiny = comfy_runtime.tiny_models
    try:
        instance.wait_ready(timeout_s=180)
        yield instance
    finally:
        started = time.monotonic()
        instance.stop(timeout_s=20)
        assert instance.process.poll() is not None, "server still running after stop"
        assert time.monotonic() - started < 45


def test_object_info_lists_the_pack_nodes(server):
    status, info = server.request("/object_info")
    assert status == 200
    assert SVI_NODE_IDS <= set(info)
    long_video = info["SVILongVideo"]
    assert long_video["category"] == "SVI/video"
    assert long_video["output_node"] is True
    for node_id in SVI_NODE_IDS:
        for section in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(section, {}).items():
                assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{node_id}.{name} has no tooltip"


@pytest.mark.parametrize("name", ["svi_wan21_3clips", "svi_wan22_turbo_3clips"])
def test_queued_prompt_runs_through_the_http_api(server, name):
    prompt = with_tiny_models(load_api_workflow(name), server.tiny, length=17)
    status, answer = server.queue_prompt(prompt)
    assert status == 200, answer
    entry = server.wait_for_history(answer["prompt_id"], timeout_s=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = [item for output in entry["outputs"].values() for item in output.get("images", []) if item["filename"].endswith(".mp4")]
    assert saved, entry["outputs"]
    path = server.base_dir / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file() and path.stat().st_size > 0
