"""On a Hopper GPU: the fp8 row-quantisation kernels (standalone, with GELU, and fused into the LayerNorm passes)
against their PyTorch rules with poisoned outputs, the row-wise scaled GEMM against its fp32 product, and a tiny Wan
sampled through ComfyUI with the fp8 GEMMs on."""

import pytest
import torch

from svi_infinity.kernels.dispatch import kernel_gate

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
elif kernel_gate("cuda"):
    pytestmark = pytest.mark.skip(reason=kernel_gate("cuda"))

E4M3_NAN = 0x7F  # the byte an unwritten e4m3 output keeps
# (rows, dim, gelu): Wan 14B's attention output and FFN hidden, 1.3B's, odd row counts
ROW_QUANT_CASES = [(1037, 5120, False), (1037, 13824, True), (515, 1536, False), (515, 8960, True)]
LAYER_NORM_CASES = [(1, 1037, 5120), (2, 1200, 5120), (1, 515, 1536)]


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.float() - reference.float()).norm() / reference.float().norm()).item()


def assert_same_rows(got, expected, gelu: bool) -> None:
    """e4m3 rows from a kernel and from the PyTorch rule: equal scales, and bytes equal but for rare one-step
    rounding differences (fast-math reciprocal, FMA contraction and, with the GELU, tanh.approx in the kernel)."""
    assert not (got.data.view(torch.uint8) == E4M3_NAN).any() and not got.scale.isnan().any(), "unwritten output"
    assert torch.allclose(got.scale, expected.scale, rtol=1e-3 if gelu else 1e-6, atol=0)
    same = (got.data.view(torch.uint8) == expected.data.view(torch.uint8)).float().mean().item()
    assert same > (0.995 if gelu else 0.999), same  # the kernel's tanh is the fast approximation
    step = (got.dequantize() - expected.dequantize()).abs() <= expected.dequantize().abs() / 8 + expected.scale * 2.0 ** -9
    assert step.all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("rows, dim, gelu", ROW_QUANT_CASES)
def test_row_quant_kernel_matches_its_rule(rows, dim, gelu, dtype):
    from svi_infinity.kernels.fp8_gemm import FP8, Fp8Rows, quantize_rows, quantize_rows_reference, row_quant_kernel

    x = 2 * torch.randn(rows, dim, device="cuda", dtype=dtype)
    x[3] *= 100  # a loud token
    x[5] = 0  # and a silent one
    got, decision = quantize_rows(x, gelu)
    assert decision.backend == "tilelang", decision.reason
    assert_same_rows(got, quantize_rows_reference(x, gelu), gelu)
    poisoned = Fp8Rows(torch.full((rows, dim), E4M3_NAN, device="cuda", dtype=torch.uint8).view(FP8),
                       torch.full((rows, 1), float("nan"), device="cuda"))
    row_quant_kernel(rows, dim, dtype, gelu)(x, poisoned.data, poisoned.scale)
    assert torch.equal(poisoned.data.view(torch.uint8), got.data.view(torch.uint8)) and torch.equal(poisoned.scale, got.scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("residual, modulate", [("none", True), ("gated", False), ("add", True)])
@pytest.mark.parametrize("batch, seq, dim", LAYER_NORM_CASES)
def test_layer_norm_to_fp8_matches_the_bf16_kernel_quantised(batch, seq, dim, residual, modulate, dtype):
    """The fp8 plan is the bf16 plan's pass with e4m3 output: the same updated stream bit for bit, and the normed row
    quantised from its fp32 value (the rule applied to the float64 reference, to within one e4m3 step)."""
    from svi_infinity.kernels.fp8_gemm import quantize_rows_reference
    from svi_infinity.kernels.layernorm import NormPlan, layer_norm, layer_norm_reference

    x, y = (3 * torch.randn(batch, seq, dim, device="cuda", dtype=dtype) + 0.5 for _ in range(2))
    gate, shift, scale = (0.5 * torch.randn(batch, 1, dim, device="cuda", dtype=dtype) for _ in range(3))
    weight, bias = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=dtype), 0.1 * torch.randn(dim, device="cuda", dtype=dtype)
    vectors = dict(y=y, gate=gate, shift=shift, scale=scale, weight=weight, bias=bias)
    updated, rows, decision = layer_norm(x, NormPlan(residual, modulate, fp8_out=True), 1e-6, **vectors)
    assert decision.backend == "tilelang", decision.reason
    bf16_updated, _, _ = layer_norm(x, NormPlan(residual, modulate), 1e-6, **vectors)
    assert torch.equal(updated, bf16_updated)
    # the kernel normalises the updated stream as rounded to its dtype (as ComfyUI's ops do): start from that
    _, expected = layer_norm_reference(updated.double(), NormPlan("none", modulate), 1e-6, **{k: v.double() for k, v in vectors.items()})
    expected = expected.reshape(-1, dim)
    reference = quantize_rows_reference(expected.float())
    assert torch.allclose(rows.scale, reference.scale, rtol=1e-4)
    assert relative_error(rows.dequantize(), expected) < 4e-2
    same = (rows.data.view(torch.uint8) == reference.data.view(torch.uint8)).float().mean().item()
    assert same > 0.99, same


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_scaled_linear_is_its_fp32_product(out_dtype):
    from svi_infinity.kernels.fp8_gemm import (Fp8Weight, output_dtype, quantize_rows, quantize_weight, scaled_linear,
                                               scaled_linear_reference)

    x = torch.randn(1037, 5120, device="cuda", dtype=out_dtype)
    weight = torch.randn(13824, 5120, device="cuda", dtype=out_dtype) / 70
    bias = 0.1 * torch.randn(13824, device="cuda", dtype=out_dtype)
    rows, _ = quantize_rows(x)
    data, scale = quantize_weight(weight)
    quantized = Fp8Weight(data, scale, bias.to(output_dtype(x.device, out_dtype)))
    out = scaled_linear(rows, quantized, out_dtype)
    assert out.dtype == out_dtype
    assert relative_error(out, scaled_linear_reference(rows, quantized)) < 5e-3  # only the output's rounding
    assert relative_error(out, torch.nn.functional.linear(x.double(), weight.double(), bias.double())) < 5e-2


def test_tiny_wan_sampled_with_fp8_gemms(comfy_modules, tmp_path):
    """Wan sampled through ComfyUI with the fp8 GEMMs (and the 8-bit attention) against the plain model, with a LoRA
    merged by ComfyUI's patcher first: every block's eight GEMMs run fp8, and the latent stays within fp8's error."""
    import comfy.sd
    from safetensors.torch import save_file

    from svi_infinity.demo.tiny_models import lora_target_shapes, lora_tensors_in_format, random_lora, wan_dit_state_dict
    from svi_infinity.kernels.model_patch import EIGHT_BIT, FP8_GEMMS, accelerate_model
    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.pipeline.lora import apply_lora

    state = wan_dit_state_dict(image_branch=False, dim=512, layers=2, seed=3)  # 4 heads of 128
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    assert lora  # (ComfyUI's loader empties the state dict it is given: the LoRA's shapes are read before)
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.bfloat16})
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    model, _ = apply_lora(model, tmp_path / "lora.safetensors", 0.8)
    low = comfy.sd.load_diffusion_model_state_dict(wan_dit_state_dict(image_branch=False, dim=512, layers=2, seed=4),
                                                   model_options={"dtype": torch.bfloat16})
    generator = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 16, 5, 24, 40)
    y = {"concat_latent_image": torch.randn(1, 16, 5, 24, 40, generator=generator), "concat_mask": torch.ones(1, 1, 5, 24, 40)}
    text = [[torch.randn(1, 512, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0])  # 2 steps per expert
    plain = sample_clip(model, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    bf16, _ = accelerate_model(model)
    bf16_latent = sample_clip(bf16, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    for attention_precision in ("bf16", EIGHT_BIT):
        fast, report = accelerate_model(model, gemm_precision=FP8_GEMMS, attention_precision=attention_precision)
        assert report.gemm_precision == FP8_GEMMS, report.lines()
        fp8 = sample_clip(fast, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
        ran = dict(report.ran)
        # the high-noise expert, patched: 8 GEMMs per block, 2 blocks, 2 steps (the low-noise expert runs plain)
        assert ran.get(("fp8_gemm", "scaled_mm"), 0) == 8 * 2 * 2, report.lines()
        assert ran.get(("layer_norm", "tilelang"), 0) == 3 * 2 * 2 and ran.get(("fp8_quant_gelu", "tilelang"), 0) == 2 * 2
        error = relative_error(fp8, plain)
        print(f"tiny Wan, fp8 GEMMs, {attention_precision} attention: latent vs plain {error:.2e} "
              f"(bf16 kernels: {relative_error(bf16_latent, plain):.2e})")
        assert error < 6e-2
