"""On a Hopper GPU: each kernel against a float32 reference on fresh random inputs, outputs poisoned with NaN first,
and a whole tiny Wan forward through ComfyUI with and without the kernel node.

The shape lists are module constants so bench/kernels_precompile.py can build the same kernels ahead of time."""

import pytest
import torch

from svi_infinity.kernels.attention import CROSS_ATTENTION, SELF_ATTENTION, AttentionConfig
from svi_infinity.kernels.dispatch import kernel_gate

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
elif kernel_gate("cuda"):
    pytestmark = pytest.mark.skip(reason=kernel_gate("cuda"))

NO_PINGPONG = AttentionConfig(pingpong=False)
STAGED_OUTPUT = AttentionConfig(block_n=160)  # the previous self-attention schedule: O through shared memory and TMA
# (batch, heads, head_dim, seq_q, seq_kv, config): ragged lengths on both sides (the self config stores O from
# registers, guarded past the sequence end), a partial last CTA for the multi-tile cross config (9 query tiles over
# CTAs of 4), single-tile KV, and the ablation configs.
ATTENTION_CASES = [
    (2, 4, 128, 1037, 1037, SELF_ATTENTION),
    (1, 4, 128, 2048, 2048, SELF_ATTENTION),
    (2, 6, 64, 1037, 1037, SELF_ATTENTION),
    (1, 4, 128, 1037, 1037, NO_PINGPONG),
    (2, 4, 128, 1037, 512, CROSS_ATTENTION),
    (1, 4, 128, 300, 257, CROSS_ATTENTION),
    (1, 6, 64, 1037, 257, CROSS_ATTENTION),
    (1, 4, 128, 1037, 100, CROSS_ATTENTION),
    (2, 4, 128, 1037, 1037, STAGED_OUTPUT),
]
NORM_CASES = [(1037, 5120), (4096, 1536), (515, 3072)]
# (channels, frames, height, width) of the VAE's fused RMSNorm+SiLU: row counts that end mid-CTA (dynamic rows)
VAE_NORM_CASES = [(96, 2, 30, 52), (192, 3, 15, 26), (96, 1, 7, 9)]
ROPE_CASES = [(1037, 5120, 128), (2000, 1536, 128), (515, 3072, 128)]
# (batch, seq, dim) of the fused residual + LayerNorm kernels: odd and multi-row-per-CTA sequences, two samples
LAYER_NORM_CASES = [(1, 1037, 5120), (2, 1200, 5120), (1, 515, 1536)]


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.float() - reference.float()).norm() / reference.float().norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("batch, heads, head_dim, seq_q, seq_kv, config", ATTENTION_CASES)
def test_flash_attention_matches_reference(dtype, batch, heads, head_dim, seq_q, seq_kv, config):
    from svi_infinity.kernels.attention import attention_reference, flash_attention_kernel

    kernel = flash_attention_kernel(batch, heads, seq_q, seq_kv, head_dim, dtype, config)
    q = torch.randn(batch, seq_q, heads * head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, seq_kv, heads * head_dim, device="cuda", dtype=dtype) for _ in range(2))
    for attempt in range(2):  # twice on the same inputs: a result that moves between runs is a race
        out = torch.full_like(q, float("nan"))
        kernel(q, k, v, out)
        assert not out.isnan().any(), "unwritten output elements"
        if attempt == 0:
            first = out
    assert torch.equal(out, first), "two runs on the same inputs differ"
    assert relative_error(out, attention_reference(q.double(), k.double(), v.double(), heads)) < 1e-2


def test_attention_dispatch_matches_reference():
    from svi_infinity.kernels.attention import attention, attention_reference

    q, k, v = (torch.randn(1, 1037, 8 * 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for backend in ("auto", "tilelang", "cudnn"):
        out, decision = attention(q, k, v, 8, backend)
        assert decision.backend in ("cudnn", "tilelang") and (backend == "auto" or decision.backend == backend)
        assert relative_error(out, attention_reference(q.float(), k.float(), v.float(), 8)) < 1e-2


@pytest.mark.parametrize("rows, dim", NORM_CASES)
def test_rms_norm_matches_reference(rows, dim):
    from svi_infinity.kernels.rmsnorm import rms_norm_kernel, rms_norm_reference

    x = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16) * 3
    weight = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=torch.bfloat16)
    out = torch.full_like(x, float("nan"))
    rms_norm_kernel(rows, dim, torch.bfloat16, 1e-6)(x, weight, out)
    assert not out.isnan().any()
    assert relative_error(out, rms_norm_reference(x.double(), weight.double(), 1e-6)) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("channels, frames, height, width", VAE_NORM_CASES)
def test_vae_rms_norm_silu_matches_reference(dtype, channels, frames, height, width):
    from svi_infinity.kernels.vae_norm import rms_norm_silu, rms_norm_silu_reference

    x = (torch.randn(1, channels, frames, height, width, device="cuda", dtype=dtype) * 2).contiguous(memory_format=torch.channels_last_3d)
    gamma = 1 + 0.1 * torch.randn(channels, 1, 1, 1, device="cuda", dtype=dtype)
    out, decision = rms_norm_silu(x, gamma)
    assert decision.backend == "tilelang", decision.reason
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last_3d)
    assert relative_error(out, rms_norm_silu_reference(x.double(), gamma.double())) < 1e-2
    strided, _ = rms_norm_silu(x.contiguous(), gamma)  # NCDHW input: same result through a layout copy
    assert torch.equal(strided, out)


def test_vae_decode_channels_last_matches_comfyui(comfy_modules):
    """A small Wan VAE decode on the GPU through the pack's decode: as close to a float32 decode as ComfyUI's own bf16
    decode is (the fused norm rounds once where ComfyUI rounds six times), in pinned CPU memory, and the VAE's layouts,
    forwards and output device restored afterwards."""
    import comfy.sd

    from svi_infinity.demo.tiny_models import wan21_vae_state_dict
    from svi_infinity.pipeline.fast_vae import decode_frames, norm_silu_pairs

    weights = wan21_vae_state_dict(dim=32, seed=4)
    vae = comfy.sd.VAE(sd=weights)
    assert vae.vae_dtype == torch.bfloat16
    latent = torch.randn(1, 16, 5, 30, 52, generator=torch.Generator().manual_seed(2))
    truth = comfy.sd.VAE(sd=weights, dtype=torch.float32).decode(latent)
    expected = vae.decode(latent)
    fast = decode_frames(vae, latent)
    decoder = vae.first_stage_model.decoder
    assert all(p.is_contiguous() for p in decoder.parameters())
    assert all("forward" not in vars(norm) and "forward" not in vars(act) for norm, act in norm_silu_pairs(decoder))
    assert torch.device(vae.output_device).type == "cpu" and fast.device.type == "cpu" and fast.is_pinned()
    assert fast.shape == expected.shape
    comfy_error, fast_error = (expected - truth).abs().mean().item(), (fast - truth).abs().mean().item()
    assert fast_error <= 1.1 * comfy_error, (fast_error, comfy_error)
    assert (fast - expected).abs().max().item() < 0.06  # frames in 0..1: a few bf16 steps at most
    assert torch.equal(vae.decode(latent), expected)


def test_vae_encode_channels_last_matches_comfyui(comfy_modules):
    """A 17-frame Wan VAE encode on the GPU through the fast VAE (what SVI 1.0 modes run per clip): as close to a
    float32 encode as ComfyUI's own bf16 encode, and the encoder's layouts and forwards restored afterwards."""
    import comfy.sd

    from svi_infinity.demo.tiny_models import wan21_vae_state_dict
    from svi_infinity.pipeline.fast_vae import fast_vae, norm_silu_pairs

    weights = wan21_vae_state_dict(dim=32, seed=4)
    vae = comfy.sd.VAE(sd=weights)
    pixels = torch.rand(17, 96, 160, 3, generator=torch.Generator().manual_seed(3))
    truth = comfy.sd.VAE(sd=weights, dtype=torch.float32).encode(pixels)
    expected = vae.encode(pixels)
    fast = fast_vae(vae).encode(pixels)
    encoder = vae.first_stage_model.encoder
    assert all(p.is_contiguous() for p in encoder.parameters())
    assert all("forward" not in vars(norm) and "forward" not in vars(act) for norm, act in norm_silu_pairs(encoder))
    assert fast.shape == expected.shape == (1, 16, 5, 12, 20)
    comfy_error, fast_error = (expected - truth).abs().mean().item(), (fast - truth).abs().mean().item()
    assert fast_error <= 1.1 * comfy_error, (fast_error, comfy_error)
    assert torch.equal(vae.encode(pixels), expected)


def random_rotation(seq: int, head_dim: int) -> torch.Tensor:
    """Wan's freqs layout [1, S, 1, head_dim / 2, 2, 2] with random angles."""
    angles = torch.rand(seq, head_dim // 2, device="cuda") * 6.28
    rotation = torch.stack([torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -2)
    return rotation.view(1, seq, 1, head_dim // 2, 2, 2)


@pytest.mark.parametrize("seq, dim, head_dim", ROPE_CASES)
def test_fused_rms_norm_rope_matches_reference(seq, dim, head_dim):
    from svi_infinity.kernels.rmsnorm import rms_norm_rope_kernel, rms_norm_rope_reference, rotation_table

    heads = dim // head_dim
    x = torch.randn(1, seq, dim, device="cuda", dtype=torch.bfloat16)
    weight = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=torch.bfloat16)
    freqs = random_rotation(seq, head_dim)
    out = torch.full((seq, dim), float("nan"), device="cuda", dtype=torch.bfloat16)
    rms_norm_rope_kernel(1, seq, dim, head_dim, torch.bfloat16, 1e-6)(x.view(seq, dim), weight, rotation_table(freqs, seq, head_dim // 2), out)
    assert not out.isnan().any()
    expected = rms_norm_rope_reference(x.double(), weight.double(), 1e-6, freqs.double(), heads)
    assert relative_error(out.view(1, seq, heads, head_dim), expected) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("residual, modulate", [("none", True), ("gated", False), ("add", True)])
@pytest.mark.parametrize("batch, seq, dim", LAYER_NORM_CASES)
def test_fused_layer_norm_matches_reference(batch, seq, dim, residual, modulate, dtype):
    from svi_infinity.kernels.layernorm import NormPlan, layer_norm, layer_norm_kernel, layer_norm_reference

    plan = NormPlan(residual, modulate)
    x, y = (3 * torch.randn(batch, seq, dim, device="cuda", dtype=dtype) + 0.5 for _ in range(2))
    gate, shift, scale = (0.5 * torch.randn(batch, 1, dim, device="cuda", dtype=dtype) for _ in range(3))
    weight, bias = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=dtype), 0.1 * torch.randn(dim, device="cuda", dtype=dtype)
    vectors = dict(y=y, gate=gate, shift=shift, scale=scale, weight=weight, bias=bias)
    updated, out, decision = layer_norm(x, plan, 1e-6, **vectors)
    assert decision.backend == "tilelang", decision.reason
    expected_x, expected = layer_norm_reference(x.double(), plan, 1e-6, **{k: v.double() for k, v in vectors.items()})
    assert relative_error(out, expected) < 1e-2 and relative_error(updated, expected_x) < 1e-2
    comfy_x, comfy_out = layer_norm_reference(x, plan, 1e-6, **vectors)  # ComfyUI's ops in the stream's dtype
    assert relative_error(updated, comfy_x) < 1e-3 if residual != "none" else updated is x  # fp32 FMA vs mul-add: rare 1-ulp
    assert relative_error(out, comfy_out) < 1e-2
    poisoned = [torch.full_like(x, float("nan")) for _ in range(2)]  # every element written, by the kernel itself
    rows = lambda t: t.reshape(batch * seq, dim)  # noqa: E731
    per_sample = lambda t: t.reshape(-1, dim).expand(batch, -1).contiguous()  # noqa: E731
    first, second = (shift, scale) if modulate else (bias, weight)
    layer_norm_kernel(batch, seq, dim, dtype, 1e-6, plan)(rows(x), rows(y), per_sample(gate), per_sample(first),
                                                         per_sample(second), rows(poisoned[0]), rows(poisoned[1]))
    assert torch.equal(poisoned[1], out) and (residual == "none" or torch.equal(poisoned[0], updated))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("batch, seq, dim", LAYER_NORM_CASES)
def test_gated_residual_matches_addcmul(batch, seq, dim, dtype):
    from svi_infinity.kernels.layernorm import gated_residual, gated_residual_kernel

    x, y = (3 * torch.randn(batch, seq, dim, device="cuda", dtype=dtype) + 0.5 for _ in range(2))
    gate = 0.5 * torch.randn(batch, 1, dim, device="cuda", dtype=dtype)
    out, decision = gated_residual(x, y, gate)
    assert decision.backend == "tilelang", decision.reason
    assert relative_error(out, torch.addcmul(x.double(), y.double(), gate.double())) < 1e-2
    assert relative_error(out, torch.addcmul(x, y, gate)) < 1e-3  # fp32 FMA vs mul-add: rare 1-ulp differences
    poisoned = torch.full_like(x, float("nan"))
    gated_residual_kernel(batch, seq, dim, dtype)(x.view(-1, dim), y.view(-1, dim), gate.view(batch, dim), poisoned.view(-1, dim))
    assert torch.equal(poisoned, out)


def test_feed_forward_gelu_in_the_gemm_matches_wans_ffn(comfy_modules):
    import comfy.ops
    from comfy.ldm.wan.model import WanFeedForward

    from svi_infinity.kernels.model_patch import feed_forward

    ops = comfy.ops.disable_weight_init
    ffn = WanFeedForward(ops.Linear(1536, 4096, device="cuda", dtype=torch.float16), torch.nn.GELU(approximate="tanh"),
                         ops.Linear(4096, 1536, device="cuda", dtype=torch.float16))
    with torch.no_grad():
        for linear in (ffn[0], ffn[2]):
            linear.weight.copy_(torch.randn_like(linear.weight) / linear.weight.shape[1] ** 0.5)
            linear.bias.copy_(0.1 * torch.randn_like(linear.bias))
        x = torch.randn(1, 3000, 1536, device="cuda", dtype=torch.float16)
        out, decision = feed_forward(ffn, x)
        assert decision.backend == "cublaslt", decision.reason
        reference = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(
            x.double(), ffn[0].weight.double(), ffn[0].bias.double()), approximate="tanh"), ffn[2].weight.double(), ffn[2].bias.double())
        assert relative_error(out, reference) < 1e-2
        assert relative_error(out, ffn(x)) < 1e-2


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
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    assert lora  # (ComfyUI's loader empties the state dict it is given: the LoRA's shapes are read before)
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.bfloat16})
    lora["diffusion_model.blocks.0.cross_attn.norm_q.diff"] = 0.1 * torch.randn(512)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    model, _ = apply_lora(model, tmp_path / "lora.safetensors", 0.8)
    low = comfy.sd.load_diffusion_model_state_dict(wan_dit_state_dict(image_branch=False, dim=512, layers=2, seed=4),
                                                   model_options={"dtype": torch.bfloat16})
    generator = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 16, 5, 24, 40)
    y = {"concat_latent_image": torch.randn(1, 16, 5, 24, 40, generator=generator), "concat_mask": torch.ones(1, 1, 5, 24, 40)}
    text = [[torch.randn(1, 512, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0])
    plain = sample_clip(model, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    for backend in ("auto", "tilelang"):
        fast, report = accelerate_model(model, attention_backend=backend)
        fast_low, _ = accelerate_model(low, attention_backend=backend)
        assert report.active, report.lines()
        patched = sample_clip(fast, fast_low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
        assert relative_error(patched, plain) < 2e-2, backend
        ran = dict(report.ran)
        assert ran.get(("rms_norm_rope", "tilelang"), 0) > 0
        assert ran.get(("layer_norm", "tilelang"), 0) == 3 * 2 * 2, report.lines()  # 3 per block, 2 blocks, 2 steps of the high expert
        assert ran.get(("ffn_gelu", "cublaslt"), 0) == 2 * 2, report.lines()
        assert ran.get(("gated_residual", "tilelang"), 0) == 2 * 2, report.lines()
        assert ran.get(("attention", "tilelang" if backend == "tilelang" else "cudnn"), 0) > 0 or backend == "auto"
