"""Bad input gets a clear error (or a validation error before anything runs), and ComfyUI keeps working after it.

Cases tried: clip size not a multiple of 16; an empty prompt list; a filename prefix leaving the output folder; a motion latent larger than the clip; a motion
latent from another model family (a 4-channel SD latent); a LoRA for another model size; a LoRA with no matching
keys; a Wan 2.2 graph with only one expert (long video and atomic sampler); num_clips of 0; a 1.0 mode without its
reference; a cross-fade longer than the seam.
"""

import pytest
import torch
from safetensors.torch import save_file

from svi_infinity.demo.comfy_runtime import PromptInvalid
from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models


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


def assert_refused_before_running(runtime, prompt, *phrases):
    with pytest.raises(PromptInvalid) as error:
        runtime.run_prompt(prompt)
    for phrase in phrases:
        assert phrase in str(error.value.node_errors), error.value.node_errors


def test_size_not_multiple_of_16(comfy_runtime, long_video, three_clips):
    prompt, inputs = long_video
    inputs["width"] = 40
    assert_refused_before_running(comfy_runtime, prompt, "not a multiple of 16")
    node_of(three_clips, "SVIEncodeAnchor")["height"] = 50
    assert_refused_before_running(comfy_runtime, three_clips, "not a multiple of 16")


def test_empty_prompt_list(comfy_runtime, long_video):
    prompt, inputs = long_video
    inputs["prompts"] = "\n   \n"
    assert_refused_before_running(comfy_runtime, prompt, "prompt list is empty")


@pytest.mark.parametrize("prefix", ["../outside", "/etc/svi", "a/../../b"])
def test_filename_prefix_cannot_leave_the_output_folder(comfy_runtime, long_video, prefix):
    prompt, inputs = long_video
    inputs["filename_prefix"] = prefix
    assert_refused_before_running(comfy_runtime, prompt, "filename_prefix")


def test_num_clips_zero_is_refused_before_running(comfy_runtime, long_video):
    prompt, inputs = long_video
    inputs["num_clips"] = 0
    assert_refused_before_running(comfy_runtime, prompt, "num_clips")


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


def test_crossfade_longer_than_seam(comfy_runtime, long_video):
    prompt, inputs = long_video
    inputs["crossfade"] = 5
    assert_fails(comfy_runtime, prompt, "longer than the 4 frames")


def test_pixel_mode_without_reference(comfy_runtime, three_clips):
    conditioning = node_of(three_clips, "SVIConditioning", 0)
    conditioning["mode"] = "1.0 Film (pixel motion, zero padding)"
    assert_fails(comfy_runtime, three_clips, "needs the resized reference")


def test_runtime_still_runs_after_errors(comfy_runtime, long_video):
    prompt, _ = long_video
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
