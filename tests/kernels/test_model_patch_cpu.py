"""The kernel node on a CPU: the model passes through unchanged, and the report says why nothing was swapped."""

import pytest
import torch


@pytest.fixture(scope="module")
def wan(comfy_runtime):
    import comfy.sd

    path = comfy_runtime.models_dir / "diffusion_models" / comfy_runtime.tiny_models["wan21_i2v"]
    return comfy.sd.load_diffusion_model(str(path))


def test_cpu_model_passes_through_with_reasons(wan):
    from svi_infinity.kernels.model_patch import accelerate_model

    patched, report = accelerate_model(wan)
    assert patched is not wan
    assert not patched.object_patches and "optimized_attention_override" not in patched.model_options.get("transformer_options", {})
    assert any("no CUDA device" in line for line in report.lines())
    assert not report.active


def test_fused_forward_matches_wan_forward_on_the_reference_path(wan):
    """The patched self-attention forward (reference dispatch on CPU) computes what Wan's own forward does."""
    from comfy.ldm.flux.layers import EmbedND
    from svi_infinity.kernels.model_patch import KernelReport, _fused_self_attention_forward

    block = wan.model.diffusion_model.blocks[0].self_attn
    d = block.head_dim
    ids = torch.zeros(1, 12, 3)
    ids[0, :, 2] = torch.arange(12)
    freqs = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(ids).movedim(1, 2)
    x = torch.randn(1, 12, block.dim)
    wan.patch_model()
    try:
        report = KernelReport()
        with torch.no_grad():
            expected = block(x, freqs)
            got = _fused_self_attention_forward(block, report)(x, freqs)
    finally:
        wan.unpatch_model()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert report.ran[("rms_norm_rope", "reference")] == 2


def test_node_in_a_workflow_runs_and_changes_nothing_on_cpu(comfy_runtime):
    from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), comfy_runtime.tiny_models, width=32, height=32,
                              length=9, num_clips=1)
    stack = next(k for k, v in prompt.items() if v["class_type"] == "SVILoraStack")
    prompt["900"] = {"class_type": "SVIKernelAccelerate", "inputs": {"model": [stack, 0], "attention": True, "attention_backend": "auto",
                                                                     "norms": True, "precompile_width": 32, "precompile_height": 32,
                                                                     "precompile_length": 9}}
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")
    long_video["inputs"]["model"] = ["900", 0]
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    assert any("no CUDA device" in line for line in run.outputs["900"]["text"])
