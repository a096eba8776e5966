"""On a Hopper GPU: each kernel against a float32 reference on fresh random inputs, outputs poisoned with NaN first,
and a whole tiny Wan forward through ComfyUI with and without the kernel node."""

import pytest
import torch

from svi_infinity.kernels.dispatch import TARGET, device_problem, tilelang_problem

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
elif device_problem(torch.empty(1, device="cuda", dtype=torch.bfloat16)) or tilelang_problem():
    pytestmark = pytest.mark.skip(reason=device_problem(torch.empty(1, device="cuda", dtype=torch.bfloat16)) or tilelang_problem())


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.float() - reference.float()).norm() / reference.float().norm()).item()


def compile_into(program):
    """The kernel with its output as an argument, so the test can poison it."""
    import tilelang

    return tilelang.compile(program, out_idx=None, target=TARGET)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads, head_dim", [(4, 128), (6, 64)])
@pytest.mark.parametrize("seq_q, seq_kv", [(1037, 1037), (2048, 2048), (1037, 512), (300, 257)])
def test_flash_attention_matches_reference(dtype, heads, head_dim, seq_q, seq_kv):
    from svi_infinity.kernels.attention import _flash_program, attention_reference, config_for

    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    kernel = compile_into(_flash_program(2, heads, seq_q, seq_kv, head_dim, name, config_for(seq_kv)))
    q = torch.randn(2, seq_q, heads * head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, seq_kv, heads * head_dim, device="cuda", dtype=dtype) for _ in range(2))
    out = torch.full_like(q, float("nan"))
    kernel(q, k, v, out)
    assert not out.isnan().any(), "unwritten output elements"
    assert relative_error(out, attention_reference(q.float(), k.float(), v.float(), heads)) < 1e-2


def test_router_uses_cudnn_and_matches(monkeypatch):
    from svi_infinity.kernels.attention import attention, attention_reference

    q, k, v = (torch.randn(1, 1037, 8 * 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, decision = attention(q, k, v, 8)
    assert decision.backend in ("cudnn", "tilelang")
    assert relative_error(out, attention_reference(q.float(), k.float(), v.float(), 8)) < 1e-2


@pytest.mark.parametrize("rows, dim", [(1037, 5120), (4096, 1536), (515, 3072)])
def test_rms_norm_matches_reference(rows, dim):
    from svi_infinity.kernels.rmsnorm import _rms_norm_program, rms_norm_reference

    kernel = compile_into(_rms_norm_program(rows, dim, "bfloat16", 1e-6))
    x = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16) * 3
    weight = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=torch.bfloat16)
    out = torch.full_like(x, float("nan"))
    kernel(x, weight, out)
    assert not out.isnan().any()
    assert relative_error(out, rms_norm_reference(x.float(), weight.float(), 1e-6)) < 1e-2


@pytest.mark.parametrize("seq, dim, head_dim", [(1037, 5120, 128), (2000, 1536, 128)])
def test_fused_rms_norm_rope_matches_reference(seq, dim, head_dim):
    from svi_infinity.kernels.rmsnorm import _rms_norm_rope_program, rms_norm_rope_reference

    heads = dim // head_dim
    kernel = compile_into(_rms_norm_rope_program(1, seq, dim, head_dim, "bfloat16", 1e-6))
    x = torch.randn(1, seq, dim, device="cuda", dtype=torch.bfloat16)
    weight = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=torch.bfloat16)
    angles = torch.rand(seq, head_dim // 2, device="cuda") * 6.28
    rotation = torch.stack([torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -2)
    freqs = rotation.view(1, seq, 1, head_dim // 2, 2, 2)
    out = torch.full((seq, dim), float("nan"), device="cuda", dtype=torch.bfloat16)
    kernel(x.view(seq, dim), weight, rotation.contiguous(), out)
    assert not out.isnan().any()
    expected = rms_norm_rope_reference(x.float(), weight.float(), 1e-6, freqs, heads)
    assert relative_error(out.view(1, seq, heads, head_dim), expected) < 1e-2


def test_tiny_wan_forward_with_and_without_the_node(comfy_modules, tmp_path):
    """A whole Wan forward through ComfyUI's sampler, plain vs kernel-patched, agrees to bf16 tolerance, with a LoRA
    (including a full-weight delta on a q/k norm, as speed LoRAs carry) applied by ComfyUI's patcher before the node."""
    import comfy.sd

    from svi_infinity.demo.tiny_models import lora_target_shapes, lora_tensors_in_format, random_lora, wan_dit_state_dict
    from svi_infinity.kernels.model_patch import accelerate_model
    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.pipeline.lora import apply_lora
    from safetensors.torch import save_file

    state = wan_dit_state_dict(image_branch=False, dim=512, layers=2, seed=3)  # 4 heads of 128
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.bfloat16})
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    lora["diffusion_model.blocks.0.cross_attn.norm_q.diff"] = 0.1 * torch.randn(512)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    model, _ = apply_lora(model, tmp_path / "lora.safetensors", 0.8)
    low = comfy.sd.load_diffusion_model_state_dict(wan_dit_state_dict(image_branch=False, dim=512, layers=2, seed=4),
                                                   model_options={"dtype": torch.bfloat16})
    fast, report = accelerate_model(model)
    fast_low, _ = accelerate_model(low)
    assert report.active, report.lines()
    generator = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 16, 5, 24, 40)
    y = {"concat_latent_image": torch.randn(1, 16, 5, 24, 40, generator=generator), "concat_mask": torch.ones(1, 1, 5, 24, 40)}
    text = [[torch.randn(1, 512, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0])
    plain = sample_clip(model, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    patched = sample_clip(fast, fast_low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    assert relative_error(patched, plain) < 2e-2
    ran = dict(report.ran)
    assert ran.get(("rms_norm_rope", "tilelang"), 0) > 0 and ran.get(("attention", "cudnn"), 0) + ran.get(("attention", "tilelang"), 0) > 0
