"""Bad input gets one clear message naming it before anything runs (or a clear error when only the running node can
see it), and ComfyUI keeps working after it.

Refused before anything runs, each reported once for its node, naming the input: every case of REFUSED_LONG_VIDEO and
REFUSED_ATOMIC (NaN and infinities in every float input, sizes too small / too large / not multiples of 16 / beyond
memory, lengths that are not 4k+1, empty prompt lists, filename prefixes that leave the output folder or are too long,
cross-fades longer than the seam, unknown modes, wrong types), and several bad inputs at once. Refused while running:
a motion latent larger than the clip or from another model family (a 4-channel SD latent); a LoRA for another model size
or with no matching keys; a Wan 2.2 graph with one expert; a 1.0 mode without its reference.
"""

import math

import pytest
import torch
from safetensors.torch import save_file

from svi_infinity.demo.comfy_runtime import PromptInvalid
from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

FILM = "1.0 Film (pixel motion, zero padding)"
@pytest.fixture
def long_video(comfy_runtime):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), comfy_runtime.tiny_models,
                              width=32, height=32, length=9, num_clips=2)
    node = next(k for k, v in prompt.items() if v["class_type"] == "SVILongVideo")
    return prompt, prompt[node]["inputs"]


@pytest.fixture
def three_clips(comfy_runtime):
    return with_tiny_models(load_api_workflow("svi_wan22_turbo_3clips"), comfy_runtime.tiny_models, width=32, height=32, length=9)


def node_of(prompt, class_type, index=0):
    return [v for v in prompt.values() if v["class_type"] == class_type][index]["inputs"]


def assert_fails(runtime, prompt, *phrases):
    run = runtime.run_prompt(prompt)
    assert not run.success
    message = run.error["exception_message"]
    for phrase in phrases:
        assert phrase in message, message
    return message


def refusals(runtime, prompt) -> dict[str, list[dict]]:
    """ComfyUI's validation errors per node class, for a prompt it must refuse."""
    with pytest.raises(PromptInvalid) as error:
        runtime.run_prompt(prompt)
    found: dict[str, list[dict]] = {}
    for entry in error.value.node_errors.values():
        found.setdefault(entry["class_type"], []).extend(entry["errors"])
    return found


def assert_refused_once(runtime, prompt, class_type, *phrases):
    """Exactly one validation error, on `class_type`, containing every phrase."""
    found = refusals(runtime, prompt)
    assert list(found) == [class_type] and len(found[class_type]) == 1, found
    details = found[class_type][0]["details"]
    for phrase in phrases:
        assert phrase in details, details
    return details


REFUSED_LONG_VIDEO = {
    "width not a multiple of 16": ({"width": 40}, "width: 40 is not a multiple of 16", "nearest: 32 or 48"),
    "width 0": ({"width": 0}, "width: 0 is below the minimum 16"),
    "width beyond ComfyUI's largest": ({"width": 65536}, "width: 65536 is above the maximum 16384"),
    "more than memory holds": ({"width": 16384, "height": 16384, "length": 81}, "width/height: 16384x16384 at 81 frames",
                               "more than this machine can hold", "fits"),
    "cfg NaN": ({"cfg": math.nan}, "cfg: NaN is not a number"),
    "cfg 'nan' as text": ({"cfg": "nan"}, "cfg: NaN is not a number"),
    "shift infinite": ({"shift": math.inf}, "shift: inf is not a finite number"),
    "boundary NaN": ({"boundary_sigma": math.nan}, "boundary_sigma: NaN is not a number"),
    "fps NaN": ({"fps": math.nan}, "fps: NaN is not a number"),
    "fps 0": ({"fps": 0.0}, "fps: 0 is below the minimum 1"),
    "cfg above its maximum": ({"cfg": 31.0}, "cfg: 31 is above the maximum 30"),
    "length not 4k+1": ({"length": 10}, "length: 10 frames: a Wan clip has 4k+1 frames", "nearest: 9 or 13"),
    "empty prompt list": ({"prompts": "\n   \n"}, "prompts: the prompt list is empty"),
    "prefix leaving the output folder": ({"filename_prefix": "../outside"}, "filename_prefix", "outside ComfyUI's output folder"),
    "absolute prefix": ({"filename_prefix": "/etc/svi"}, "filename_prefix", "relative name"),
    "prefix too long": ({"filename_prefix": "svi/" + "x" * 300}, "filename_prefix: the name", "at most 245 bytes"),
    "cross-fade longer than the seam": ({"crossfade": 5}, "crossfade: a cross-fade of 5 frames is longer than the 4 frames"),
    "re-encoded frames fill the clip": ({"mode": FILM, "conditioning_frames": 9}, "conditioning_frames: 9 re-encoded frames"),
    "unknown mode": ({"mode": "3.0 Ultra"}, "mode: '3.0 Ultra' is not one of"),
}


@pytest.mark.parametrize("case", list(REFUSED_LONG_VIDEO))
def test_long_video_refuses_bad_input_once_before_running(comfy_runtime, long_video, case):
    prompt, inputs = long_video
    changes, *phrases = REFUSED_LONG_VIDEO[case]
    inputs.update(changes)
    details = assert_refused_once(comfy_runtime, prompt, "SVILongVideo", *phrases)
    assert details.count("\n") == 0, f"one bad input, one line: {details}"


def test_several_bad_inputs_are_listed_once_each(comfy_runtime, long_video):
    prompt, inputs = long_video
    inputs.update(width=40, cfg=math.nan, prompts="")
    details = assert_refused_once(comfy_runtime, prompt, "SVILongVideo")
    assert sorted(line.split(":")[0] for line in details.splitlines()) == ["cfg", "prompts", "width"]


def test_wrong_type_gets_comfyuis_own_message_only(comfy_runtime, long_video):
    """'wide' for an INT: ComfyUI says it cannot convert it; the pack's checks do not add a second, garbled message."""
    prompt, inputs = long_video
    inputs["width"] = "wide"
    found = refusals(comfy_runtime, prompt)
    assert [e["type"] for e in found["SVILongVideo"]] == ["invalid_input_type"], found
    assert "width, wide" in found["SVILongVideo"][0]["details"]


def test_num_clips_zero_is_refused_before_running(comfy_runtime, long_video):
    prompt, inputs = long_video
    inputs["num_clips"] = 0
    found = refusals(comfy_runtime, prompt)
    assert [(e["type"], e["details"]) for e in found["SVILongVideo"]] == [("value_smaller_than_min", "num_clips")]


REFUSED_ATOMIC = {
    "LoRA strength NaN": ("SVILoraStack", {"svi_strength": math.nan}, "svi_strength: NaN is not a number"),
    "speed LoRA strength infinite": ("SVILoraStack", {"speed_strength": -math.inf}, "speed_strength: -inf is not a finite number"),
    "sampler cfg NaN": ("SVITurboSampler", {"cfg": "nan"}, "cfg: NaN is not a number"),
    "sampler boundary NaN": ("SVITurboSampler", {"boundary_sigma": math.nan}, "boundary_sigma: NaN is not a number"),
    "sampler shift NaN": ("SVITurboSampler", {"shift": math.nan}, "shift: NaN is not a number"),
    "conditioning length not 4k+1": ("SVIConditioning", {"length": 10}, "length: 10 frames"),
    "join fps NaN": ("SVIJoinClips", {"fps": math.nan}, "fps: NaN is not a number"),
    "join cross-fade longer than the seam": ("SVIJoinClips", {"crossfade": 6}, "crossfade: a cross-fade of 6 frames"),
    "anchor height not a multiple of 16": ("SVIEncodeAnchor", {"height": 50}, "height: 50 is not a multiple of 16"),
}


@pytest.mark.parametrize("case", list(REFUSED_ATOMIC))
def test_atomic_nodes_refuse_bad_input_once_before_running(comfy_runtime, three_clips, case):
    class_type, changes, *phrases = REFUSED_ATOMIC[case]
    node_of(three_clips, class_type).update(changes)
    assert_refused_once(comfy_runtime, three_clips, class_type, *phrases)


def test_motion_latent_larger_than_clip(comfy_runtime, three_clips):
    node_of(three_clips, "SVIMotionLatent", 0)["motion"] = "12 frames (3 latent frames)"
    assert_fails(comfy_runtime, three_clips, "cannot take the last 3")


def test_motion_latent_from_another_model_family(comfy_runtime, three_clips):
    three_clips["900"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
    conditioning = [k for k, v in three_clips.items() if v["class_type"] == "SVIConditioning"][1]
    three_clips[conditioning]["inputs"]["motion"] = ["900", 0]
    assert_fails(comfy_runtime, three_clips, "does not match the anchor")


def test_lora_for_another_model_size(comfy_runtime, long_video, tmp_path):
    from svi_infinity.demo.tiny_models import lora_target_shapes, random_lora, wan_dit_state_dict, write_lora

    bigger = lora_target_shapes(wan_dit_state_dict(image_branch=False, dim=256, layers=2))
    write_lora(comfy_runtime.models_dir / "loras" / "svi_test_wrong_size.safetensors", random_lora(bigger), "peft")
    prompt, _ = long_video
    node_of(prompt, "SVILoraStack", 0)["svi_lora"] = "svi_test_wrong_size.safetensors"
    assert_fails(comfy_runtime, prompt, "another model size")


def test_lora_with_no_matching_keys(comfy_runtime, long_video):
    tensors = {"transformer.layers.0.attn.to_q.lora_A.weight": torch.randn(4, 64),
               "transformer.layers.0.attn.to_q.lora_B.weight": torch.randn(64, 4)}
    save_file(tensors, str(comfy_runtime.models_dir / "loras" / "svi_test_flux_like.safetensors"))
    prompt, _ = long_video
    node_of(prompt, "SVILoraStack", 1)["svi_lora"] = "svi_test_flux_like.safetensors"
    assert_fails(comfy_runtime, prompt, "name no module of this model")


def test_wan22_with_one_expert(comfy_runtime, long_video, three_clips):
    prompt, inputs = long_video
    del inputs["model_low_noise"]
    assert_fails(comfy_runtime, prompt, "low-noise expert")
    del node_of(three_clips, "SVITurboSampler", 0)["model_low_noise"]
    assert_fails(comfy_runtime, three_clips, "low-noise expert")


def test_pixel_mode_without_reference(comfy_runtime, three_clips):
    conditioning = node_of(three_clips, "SVIConditioning", 0)
    conditioning["mode"] = "1.0 Film (pixel motion, zero padding)"
    assert_fails(comfy_runtime, three_clips, "needs the resized reference")


def test_runtime_still_runs_after_errors(comfy_runtime, long_video):
    prompt, _ = long_video
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
