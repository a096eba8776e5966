"""Per-step progress with latent previews, and ComfyUI's cancel honoured between sampling steps."""

import pytest

from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models


@pytest.fixture
def recorded(comfy_runtime):
    comfy_runtime.progress.clear()
    comfy_runtime.on_progress = None
    yield comfy_runtime.progress
    comfy_runtime.on_progress = None


def test_each_sampler_reports_every_step_with_a_preview(comfy_runtime, recorded):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_3clips"), comfy_runtime.tiny_models, width=32, height=32,
                              length=9)
    run = comfy_runtime.run_prompt(prompt, extra_data={"preview_method": "latent2rgb"})
    assert run.success, run.error
    samplers = [k for k, v in prompt.items() if v["class_type"] == "SVITurboSampler"]
    for node in samplers:
        steps = [(value, total, preview) for node_id, value, total, preview in recorded if node_id == node]
        assert [s[:2] for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
        assert all(preview for _, _, preview in steps)


def test_long_video_progress_spans_all_clips(comfy_runtime, recorded):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), comfy_runtime.tiny_models, width=32,
                              height=32, length=9, num_clips=3)
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    node = next(k for k, v in prompt.items() if v["class_type"] == "SVILongVideo")
    values = [value for node_id, value, total, _ in recorded if node_id == node and total == 12]
    assert values[-1] == 12 and values == sorted(values) and len(set(values)) >= 12


def test_cancel_stops_between_steps(comfy_runtime, recorded):
    import comfy.model_management

    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_3clips"), comfy_runtime.tiny_models, width=32, height=32,
                              length=9)
    first_sampler = next(k for k, v in prompt.items() if v["class_type"] == "SVITurboSampler")
    node_of_seed = prompt[first_sampler]["inputs"]
    node_of_seed["seed"] = 123  # a fresh value so ComfyUI's cache does not skip the sampler

    def cancel_at_step_two(node_id, value, total):
        if node_id == first_sampler and value == 2:
            comfy.model_management.interrupt_current_processing(True)

    comfy_runtime.on_progress = cancel_at_step_two
    run = comfy_runtime.run_prompt(prompt)
    assert not run.success and run.error["event"] == "execution_interrupted"
    steps = [value for node_id, value, _, _ in recorded if node_id == first_sampler]
    assert steps == [1, 2]
