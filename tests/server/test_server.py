"""The real ComfyUI server (main.py) with the pack in custom_nodes: /object_info, POST /prompt, /history."""

import time
from pathlib import Path

import pytest

from svi_infinity.demo.comfy_runtime import ComfyUIServer, WebsocketClient
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
    instance = ComfyUIServer(comfy_runtime.comfy_dir, base, comfy_runtime.custom_node_dirs, python=sys.executable)
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


def test_template_browser_lists_the_ui_workflows_with_their_thumbnails(server):
    """ComfyUI lists example_workflows/*.json (the API files in its api/ folder are not templates) and serves each
    one's `<name>.jpg`, the URL the frontend's template browser loads as its thumbnail."""
    import urllib.request

    from svi_infinity.demo.workflows import SHIPPED

    status, templates = server.request("/workflow_templates")
    assert status == 200
    assert sorted(templates[ROOT.name]) == sorted(SHIPPED)
    for name in SHIPPED:
        status, workflow = server.request(f"/api/workflow_templates/{ROOT.name}/{name}.json")
        assert status == 200 and workflow["nodes"] and workflow["links"]
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{ROOT.name}/{name}.jpg", timeout=10) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.read(3) == b"\xff\xd8\xff"


def test_search_aliases_reach_the_frontend(server):
    """/object_info carries each pack node's search_aliases (the node search box matches them)."""
    status, info = server.request("/object_info")
    assert status == 200
    for node_id in SVI_NODE_IDS | {"SVIKernelAccelerate"}:
        assert info[node_id].get("search_aliases"), node_id
    assert {"long video", "infinite", "extend"} <= set(info["SVILongVideo"]["search_aliases"])


def test_node_help_pages_are_served(server):
    import urllib.request

    for node_id in SVI_NODE_IDS | {"SVIKernelAccelerate"}:
        with urllib.request.urlopen(f"{server.url}/extensions/{ROOT.name}/docs/{node_id}.md", timeout=10) as response:
            page = response.read().decode()
        assert page.startswith("# SVI") and "## Inputs" in page, node_id
    with urllib.request.urlopen(f"{server.url}/extensions/{ROOT.name}/svi_infinity.js", timeout=10) as response:
        assert b"registerExtension" in response.read()


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


def tiny_long_video(server, seed: int, **overrides) -> dict:
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), server.tiny, width=32, height=32, length=9,
                              num_clips=2)
    node = next(k for k, v in prompt.items() if v["class_type"] == "SVILongVideo")
    prompt[node]["inputs"].update({"seed": seed, "filename_prefix": f"svi_queue/seed_{seed}", **overrides})
    return prompt


def long_video_inputs(prompt: dict) -> dict:
    return next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]


def malformed_prompts(server) -> dict[str, dict]:
    """Each is refused by validation (HTTP 400) before anything runs."""
    cases = {}
    missing = tiny_long_video(server, 900)
    del long_video_inputs(missing)["vae"]
    cases["missing required input"] = missing
    wrong_type = tiny_long_video(server, 901)
    long_video_inputs(wrong_type)["width"] = "wide"
    cases["wrong input type"] = wrong_type
    unknown_model = tiny_long_video(server, 902)
    next(v for v in unknown_model.values() if v["class_type"] == "UNETLoader")["inputs"]["unet_name"] = "no_such_model.safetensors"
    cases["unknown model file"] = unknown_model
    traversal_image = tiny_long_video(server, 903)
    next(v for v in traversal_image.values() if v["class_type"] == "LoadImage")["inputs"]["image"] = "../../../etc/passwd"
    cases["path traversal in image name"] = traversal_image
    traversal_lora = tiny_long_video(server, 904)
    next(v for v in traversal_lora.values() if v["class_type"] == "SVILoraStack")["inputs"]["svi_lora"] = "../../../etc/passwd.safetensors"
    cases["path traversal in LoRA name"] = traversal_lora
    unknown_node = tiny_long_video(server, 905)
    unknown_node["999"] = {"class_type": "NoSuchNode", "inputs": {}}
    cases["unknown node type"] = unknown_node
    cases["node without class_type"] = {"1": {"inputs": {}}}
    escape = tiny_long_video(server, 906)
    long_video_inputs(escape)["filename_prefix"] = "../../escaped"
    cases["path traversal in filename prefix"] = escape
    return cases


def test_busy_queue_with_malformed_prompts(server):
    """20 valid prompts queued at once among malformed ones: every valid one finishes, every bad one is refused clearly."""
    queued = []
    refused = {}
    bad = malformed_prompts(server)
    for seed in range(20):
        status, answer = server.queue_prompt(tiny_long_video(server, seed))
        assert status == 200, answer
        queued.append(answer["prompt_id"])
        if bad:
            name, prompt = bad.popitem()
            refused[name] = server.queue_prompt(prompt)
    for name, (status, answer) in refused.items():
        assert status == 400, f"{name}: {status} {answer}"
        assert answer.get("error", {}).get("message"), f"{name}: no error message in {answer}"
    assert "outside ComfyUI's output folder" in str(refused["path traversal in filename prefix"][1])
    for prompt_id in queued:
        entry = server.wait_for_history(prompt_id, timeout_s=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
    assert not list(server.base_dir.parent.glob("escaped*")) and not list(server.base_dir.glob("escaped*"))
    finished = sorted((server.base_dir / "output" / "svi_queue").glob("seed_*_run_00001/video.mp4"))
    assert len(finished) == 20


def test_clip_events_go_only_to_the_client_that_queued_the_prompt(server):
    from svi_infinity.pipeline.long_video import CLIP_EVENT

    submitter, bystander = WebsocketClient(server, "svi-submitter"), WebsocketClient(server, "svi-bystander")
    try:
        status, answer = server.queue_prompt(tiny_long_video(server, 950), client_id="svi-submitter")
        assert status == 200, answer
        entry = server.wait_for_history(answer["prompt_id"], timeout_s=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        time.sleep(1.0)  # the last websocket frames are in flight when /history already says success
    finally:
        seen, overheard = submitter.close(), bystander.close()
    clip_events = [m["data"] for m in seen if m["type"] == CLIP_EVENT]
    assert {(e["clip"], e["status"]) for e in clip_events} >= {(0, "pending"), (0, "running"), (0, "done"), (1, "done")}
    assert {e["prompt_id"] for e in clip_events} == {answer["prompt_id"]}
    assert [m for m in overheard if m["type"] == CLIP_EVENT] == []
    assert not [m for m in overheard if m["type"] in ("executing", "progress")]  # as ComfyUI routes its own progress
