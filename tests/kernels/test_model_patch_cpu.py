"""The kernel node on a CPU: the model passes through unchanged, and the report says why nothing was swapped."""

import shutil

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


def test_patched_model_with_lora_matches_on_the_reference_path(wan, monkeypatch, tmp_path):
    """The object patches themselves (attention override, fused q/k forward, norm forwards) on top of a LoRA with a
    norm delta: run on the CPU through the reference dispatch, the patched model samples what the plain one does."""
    from safetensors.torch import save_file

    from svi_infinity.demo.tiny_models import lora_target_shapes, lora_tensors_in_format, random_lora, wan_dit_state_dict
    from svi_infinity.kernels import model_patch
    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.pipeline.lora import apply_lora

    state = wan_dit_state_dict(image_branch=True, seed=1)
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    lora["diffusion_model.blocks.0.cross_attn.norm_q.diff"] = 0.1 * torch.randn(128)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    with_lora, _ = apply_lora(wan, tmp_path / "lora.safetensors", 0.8)
    monkeypatch.setattr(model_patch, "_hopper_problem", lambda patcher: "")
    monkeypatch.setattr(model_patch, "tilelang_problem", lambda: "")
    patched, report = model_patch.accelerate_model(with_lora)
    assert len(report.active) == 2 and patched.object_patches
    generator = torch.Generator().manual_seed(0)
    y = {"concat_latent_image": torch.randn(1, 16, 3, 8, 8, generator=generator), "concat_mask": torch.ones(1, 1, 3, 8, 8)}
    text = [[torch.randn(1, 8, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.0])
    plain = sample_clip(with_lora, None, text, text, torch.zeros(1, 16, 3, 8, 8), seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    fast = sample_clip(patched, None, text, text, torch.zeros(1, 16, 3, 8, 8), seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    assert torch.allclose(fast, plain, atol=1e-3, rtol=1e-3)
    ran = dict(report.ran)
    assert ran[("rms_norm_rope", "reference")] == 2 * 2 * 2  # q and k, 2 blocks, 2 steps
    assert ran[("rms_norm", "reference")] > 0 and ran[("attention", "reference")] > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: TileLang needs it to compile CUDA kernels")
def test_precompile_builds_the_kernels_a_clip_needs(wan, tmp_path, monkeypatch):
    """Precompile needs no GPU (the target is fixed to sm_90a); it builds norm, fused and attention kernels per shape."""
    from svi_infinity.kernels import dispatch
    from svi_infinity.kernels.model_patch import precompile

    monkeypatch.setenv("TILELANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_compiled", {})
    steps = []
    built = precompile(wan, 32, 32, 9, progress=lambda done, total: steps.append((done, total)))
    tokens = 3 * 2 * 2
    assert built[0] == f"RMSNorm+RoPE 1x{tokens}" and f"attention 1x{tokens} over 257" in built
    assert steps[-1] == (len(built), len(built))
    assert precompile(wan, 32, 32, 9, norms=False, attention_backend="cudnn") == []
