"""The atomic nodes' new inputs through ComfyUI's executor: end frames (SVI Encode Anchor -> SVI Conditioning), SVI Drift
Control chained clip to clip, ComfyUI's own SAMPLER and SIGMAS on SVI Turbo Sampler and SVI Long Video, old mode names."""

import json

import pytest
import torch

from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

OLD_SHOT = "1.0 Shot/Dance/Talk (pixel motion, reference padding)"


def nodes_of(prompt, class_type):
    return [v["inputs"] for v in prompt.values() if v["class_type"] == class_type]


def three_clips(runtime, name="svi_wan22_turbo_3clips", length=9):
    return with_tiny_models(load_api_workflow(name), runtime.tiny_models, width=32, height=32, length=length)


def test_last_clip_ends_on_the_end_image_from_encode_anchor(comfy_runtime, monkeypatch):
    """SVI Encode Anchor resizes the end image like the reference; SVI Conditioning puts it at the last latent frame
    with the first-last-frame mask (recorded from the conditioning the sampler gets)."""
    import nodes

    prompt = three_clips(comfy_runtime)
    anchor_id = next(k for k, v in prompt.items() if v["class_type"] == "SVIEncodeAnchor")
    image_id = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[anchor_id]["inputs"]["end_image"] = [image_id, 0]
    last = [k for k, v in prompt.items() if v["class_type"] == "SVIConditioning"][-1]
    prompt[last]["inputs"]["end_image"] = [anchor_id, 2]
    prompt[last]["inputs"]["reference"] = [anchor_id, 1]
    sampler = nodes.NODE_CLASS_MAPPINGS["SVITurboSampler"]
    seen = []
    original = sampler.execute.__func__

    def record(cls, model, positive, *args, **kwargs):
        seen.append(positive[0][1]["concat_mask"].shape)
        return original(cls, model, positive, *args, **kwargs)

    monkeypatch.setattr(sampler, "execute", classmethod(record))
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    assert seen == [(1, 1, 3, 4, 4), (1, 1, 3, 4, 4), (1, 4, 3, 4, 4)]  # only the last clip has an end frame


def test_an_end_image_of_another_size_is_a_clear_error(comfy_runtime):
    prompt = three_clips(comfy_runtime)
    image_id = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    nodes_of(prompt, "SVIConditioning")[0]["end_image"] = [image_id, 0]  # the 96x80 file, not resized to 32x32
    run = comfy_runtime.run_prompt(prompt)
    assert not run.success
    assert "the end image is 96x80 but the clips are 32x32" in run.error["exception_message"]


def test_old_mode_name_still_runs(comfy_runtime):
    prompt = three_clips(comfy_runtime, "svi_wan21_3clips", length=17)  # M = 5 needs clips of 10 frames or more
    for inputs in nodes_of(prompt, "SVIConditioning") + nodes_of(prompt, "SVIJoinClips"):
        inputs["mode"] = OLD_SHOT
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error


def test_drift_control_node_chains_its_state(comfy_runtime):
    """Clip frames brighter step by step; chained SVI Drift Control nodes (match the reference) bring them back."""
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["SVIDriftControl"]
    reference = torch.rand(1, 24, 32, 3) * 0.6 + 0.2
    state, reports = None, []
    for k in range(3):
        clip = (reference.expand(9, -1, -1, -1) + 0.04 * (k + torch.linspace(0, 1, 9).view(-1, 1, 1, 1))).clamp(0, 1)
        out = node.execute(clip, reference, "2.0 Pro (latent motion)", "4 frames (1 latent frame)", 5, "match the reference",
                           1.0, state)
        frames, state, report = out.result if hasattr(out, "result") else out
        reports.append(report)
        assert frames.shape == clip.shape and json.dumps(state)
    before_after = [tuple(float(x) for x in r.split(": ")[1].split(" -> ")) for r in reports]
    assert all(after < before / 2 for before, after in before_after[1:]), reports


def test_turbo_sampler_takes_comfyuis_sampler_and_sigmas(comfy_runtime):
    """KSamplerSelect and BasicScheduler feed SVI Turbo Sampler; the clip differs from the default Euler preset."""
    prompt = three_clips(comfy_runtime)
    high = next(k for k, v in prompt.items() if v["class_type"] == "SVILoraStack")
    prompt["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    prompt["sigmas"] = {"class_type": "BasicScheduler", "inputs": {"model": [high, 0], "scheduler": "simple", "steps": 6,
                                                                   "denoise": 1.0}}
    for inputs in nodes_of(prompt, "SVITurboSampler"):
        inputs.update(sampler=["select", 0], sigmas=["sigmas", 0], cfg_low_noise=1.5, switch_step=3)
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error


def test_long_video_records_the_sampler_sigmas_and_expert_split(comfy_runtime):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), comfy_runtime.tiny_models, width=32,
                              height=32, length=9, num_clips=2)
    high = next(k for k, v in prompt.items() if v["class_type"] == "SVILoraStack")
    prompt["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    prompt["sigmas"] = {"class_type": "BasicScheduler", "inputs": {"model": [high, 0], "scheduler": "simple", "steps": 5,
                                                                   "denoise": 1.0}}
    inputs = nodes_of(prompt, "SVILongVideo")[0]
    inputs.update(sampler=["select", 0], sigmas=["sigmas", 0], cfg_low_noise=2.0, switch_step=2, cfg=3.0,
                  filename_prefix="svi_n/open_sampling")
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    run_dir = next((comfy_runtime.output_dir / "svi_n").glob("open_sampling_run_*"))
    record = json.loads((run_dir / "run.json").read_text())["clips"][0]["sampler"]
    assert record["name"] == "dpmpp_2m" and len(record["sigmas"]) == 6
    assert (record["cfg"], record["cfg_low_noise"], record["switch_step"]) == (3.0, 2.0, 2)
