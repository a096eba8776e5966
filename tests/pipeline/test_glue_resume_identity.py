"""A run's identity covers the reference image and the models with their LoRAs: resuming with another is refused.

Through ComfyUI's executor on the shipped Wan 2.2 long-video workflow: one clip is made, then the same run is
resumed with one thing changed at a time. The unchanged resume is accepted (so a refusal below is about the
change, not something else), and a refused resume leaves the run's clip untouched.
"""

import re

import pytest

PREFIX = "svi_glue/identity"


@pytest.fixture(scope="module")
def first_run(comfy_runtime, glue):
    from svi_infinity.demo.tiny_models import write_reference_image

    other = write_reference_image(comfy_runtime.base_dir / "input" / "svi_reference_identity.png", seed=9).name
    prompt, _ = glue.long_video_prompt(comfy_runtime, prefix=PREFIX, num_clips=1)
    run_dir = glue.run_dir_of(comfy_runtime, glue.run_ok(comfy_runtime, prompt))
    return run_dir, other


def resume_prompt(runtime, glue):
    prompt, inputs = glue.long_video_prompt(runtime, prefix=PREFIX, num_clips=1)
    inputs["resume"] = True
    return prompt


def lora_stack(prompt, expert_input: str) -> dict:
    """The SVI LoRA Stack feeding the long-video node's `model` or `model_low_noise`."""
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")
    return prompt[long_video["inputs"][expert_input][0]]["inputs"]


def assert_refused(runtime, prompt, run_dir, *names):
    """Refused with a message naming each of `names` (regular expressions) as a word of its own: 'model' is not
    'model_low_noise'."""
    latent = (run_dir / "clip_00000.latent.safetensors").read_bytes()
    run = runtime.run_prompt(prompt)
    assert not run.success, "resume accepted"
    message = run.error["exception_message"]
    assert "cannot resume" in message, message
    for name in names:
        assert re.search(rf"(?<!\w){name}(?!\w)", message), message
    assert (run_dir / "clip_00000.latent.safetensors").read_bytes() == latent


def test_unchanged_settings_resume(comfy_runtime, glue, first_run):
    run = glue.run_ok(comfy_runtime, resume_prompt(comfy_runtime, glue))
    assert glue.run_dir_of(comfy_runtime, run) == first_run[0]
    texts = [line for out in run.outputs.values() for line in out.get("text", [])]
    assert any("1 resumed, 0 made" in line for line in texts), texts


def test_another_reference_image_is_refused(comfy_runtime, glue, first_run):
    run_dir, other = first_run
    prompt = resume_prompt(comfy_runtime, glue)
    next(v for v in prompt.values() if v["class_type"] == "LoadImage")["inputs"]["image"] = other
    assert_refused(comfy_runtime, prompt, run_dir, r"reference\w*")


@pytest.mark.parametrize("expert_input", ["model", "model_low_noise"])
def test_another_lora_strength_is_refused(comfy_runtime, glue, first_run, expert_input):
    prompt = resume_prompt(comfy_runtime, glue)
    lora_stack(prompt, expert_input)["svi_strength"] = 0.5
    assert_refused(comfy_runtime, prompt, first_run[0], expert_input)


def test_another_lora_file_is_refused(comfy_runtime, glue, first_run):
    """The low-noise expert's SVI LoRA swapped for the high-noise one (same shapes, other weights)."""
    prompt = resume_prompt(comfy_runtime, glue)
    lora_stack(prompt, "model_low_noise")["svi_lora"] = comfy_runtime.tiny_models["svi_lora_wan22_high"]
    assert_refused(comfy_runtime, prompt, first_run[0], "model_low_noise")


def test_another_base_model_is_refused(comfy_runtime, glue, first_run):
    """The two experts' base weights swapped (each keeps its LoRA stack)."""
    prompt = resume_prompt(comfy_runtime, glue)
    loaders = [v["inputs"] for v in prompt.values() if v["class_type"] == "UNETLoader"]
    loaders[0]["unet_name"], loaders[1]["unet_name"] = loaders[1]["unet_name"], loaders[0]["unet_name"]
    assert_refused(comfy_runtime, prompt, first_run[0], "model")
