"""On a Hopper GPU: the 8-bit attention's kernels against their PyTorch emulation (outputs poisoned first, two runs
compared), the whole path against float32 attention on Wan-like inputs (the quality gate), and a tiny Wan forward
with the node's 8-bit switch. Prints cosine and relative L2 per case (`pytest -s`).

The shape lists are module constants so bench/kernels_precompile.py can build the same kernels ahead of time."""

import importlib.util
from pathlib import Path

import pytest
import torch

from svi_infinity.kernels.dispatch import kernel_gate

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
elif kernel_gate("cuda"):
    pytestmark = pytest.mark.skip(reason=kernel_gate("cuda"))

_spec = importlib.util.spec_from_file_location("attention_inputs", Path(__file__).with_name("attention_inputs.py"))
inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inputs)

GATE = 0.9995
# (batch, heads, head_dim, seq_q, seq_kv): ragged lengths on both sides, a partial last CTA of the 4-tile cross
# schedule, one KV tile, head dim 64, two samples
SMALL_CASES = [
    (2, 4, 128, 1037, 1037),
    (1, 4, 128, 2048, 2048),
    (2, 6, 64, 1037, 1037),
    (2, 4, 128, 1037, 512),
    (1, 4, 128, 300, 257),
    (1, 6, 64, 1037, 257),
    (1, 4, 128, 1037, 100),
]
WAN_CASES = [(1, 40, 128, 32760, 32760), (1, 40, 128, 32760, 512), (1, 40, 128, 32760, 257)]  # 14B at 480p
CASES = SMALL_CASES + WAN_CASES
DTYPES = [torch.bfloat16, torch.float16]


def _case_id(case):
    return "x".join(str(n) for n in case)


def _wan_like(case, dtype, **options):
    batch, heads, head_dim, seq_q, seq_kv = case
    return inputs.wan_like_qkv(batch, seq_q, seq_kv, heads, head_dim, dtype=dtype, device="cuda", **options)


def _mismatches(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (got.float() != expected.float()).float().mean().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_quantisation_kernels_match_the_emulation(case, dtype):
    """Every output written (poisoned with values the passes never produce), int8 / e4m3 codes equal to the
    emulation's but for rare ties moved by fp32 rounding (fast-math division), the scales equal to float rounding."""
    from svi_infinity.kernels import attention_8bit as a8

    batch, heads, d, seq_q, seq_kv = case
    q, k, v = _wan_like(case, dtype, seed=1)
    expected = a8.quantize_reference(q, k, v, heads)
    f32 = torch.float32
    stats = {name: torch.full((3, batch, heads, a8.stats_splits(x.shape[1]), d), float("nan"), device="cuda", dtype=f32)
             for name, x in (("q", q), ("k", k), ("v", v))}
    a8.channel_stats_kernel(batch, heads, seq_q, d, dtype)(q, stats["q"])
    for name, x in (("k", k), ("v", v)):
        a8.channel_stats_kernel(batch, heads, seq_kv, d, dtype)(x, stats[name])
    channel = [torch.full((batch, heads, d), float("nan"), device="cuda", dtype=f32) for _ in range(6)]
    a8.finish_stats_kernel(batch, heads, seq_q, seq_kv, d)(stats["q"], stats["k"], stats["v"], *channel)
    k_mean, q_factor, k_factor, v_mean, v_scale, v_inverse = channel
    assert not any(t.isnan().any() for t in [*stats.values(), *channel])
    assert torch.allclose(v_scale, expected.v_scale, rtol=1e-5) and torch.allclose(v_mean, expected.v_mean, rtol=1e-4, atol=1e-6)
    q8, k8 = torch.full_like(q, -128, dtype=torch.int8), torch.full_like(k, -128, dtype=torch.int8)  # never produced
    q_scale, k_scale = torch.full_like(expected.q_scale, float("nan")), torch.full_like(expected.k_scale, float("nan"))
    vt = torch.full_like(expected.vt.float(), float("nan")).to(torch.float8_e4m3fn)
    a8.quantize_kernel(batch, heads, seq_q, seq_kv, d, dtype)(q, k, v, k_mean, q_factor, k_factor, v_mean, v_inverse,
                                                              q8, q_scale, k8, k_scale, vt)
    assert (q8 != -128).all() and (k8 != -128).all() and not vt.float().isnan().any()
    assert torch.allclose(q_scale, expected.q_scale, rtol=1e-5) and torch.allclose(k_scale, expected.k_scale, rtol=1e-4)
    for got, want in ((q8, expected.q8), (k8, expected.k8)):
        assert _mismatches(got, want) < 1e-3 and (got.int() - want.int()).abs().max() <= 1
    close = (vt.float() - expected.vt.float()).abs() <= 0.125 * expected.vt.float().abs() + 2 ** -9
    assert _mismatches(vt, expected.vt) < 1e-3 and close.all()
    print(f"{_case_id(case)} {dtype}: q8 / k8 / vt codes off by one step: {_mismatches(q8, expected.q8):.1e} / "
          f"{_mismatches(k8, expected.k8):.1e} / {_mismatches(vt, expected.vt):.1e}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_attention_kernel_matches_the_emulation(case, dtype):
    """The attention kernel on the emulation's own 8-bit inputs: every output written, the same result twice (a race
    would move it), and equal to the PyTorch emulation of its arithmetic up to ex2.approx moving a few P codes."""
    from svi_infinity.kernels import attention_8bit as a8

    batch, heads, d, seq_q, seq_kv = case
    q, k, v = _wan_like(case, dtype, seed=2)
    quantized = a8.quantize_reference(q, k, v, heads)
    kernel = a8.attention_8bit_kernel(batch, heads, seq_q, seq_kv, d, dtype)
    outs = []
    for _ in range(2):
        out = torch.full_like(q, float("nan"))
        kernel(quantized.q8, quantized.k8, quantized.vt, quantized.q_scale, quantized.k_scale, quantized.v_scale,
               quantized.v_mean, out)
        assert not out.isnan().any(), "unwritten output elements"
        outs.append(out)
    assert torch.equal(*outs), "two runs on the same inputs differ"
    emulated = a8.attention_from_quantized(quantized, heads, seq_kv, torch.float32)
    cosine, relative = inputs.cosine_and_relative_l2(outs[0], emulated)
    print(f"{_case_id(case)} {dtype}: kernel vs emulation cosine {cosine:.7f}, relative L2 {relative:.2e}")
    assert relative < 5e-3


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_8bit_attention_against_float32(case):
    """The 8-bit path (quantisation passes, kernel; cross-attention shapes too, which the dispatch leaves to bf16 as
    slower) against float32 attention: the gate on Wan-like inputs; iid N(0, 1) inputs, where e4m3 P.V is at its
    floor (0.9989 measured at 14B 480p), printed beside the bf16 kernel path."""
    from svi_infinity.kernels.attention import attention
    from svi_infinity.kernels.attention_8bit import attention_8bit_tilelang

    batch, heads, d, seq_q, seq_kv = case
    sets = {f"wan-like sharpness {s}": _wan_like(case, torch.bfloat16, sharpness=s, seed=3) for s in (1.0, 2.0)}
    sets["iid"] = inputs.iid_qkv(batch, seq_q, seq_kv, heads, d, seed=3, device="cuda")
    for name, (q, k, v) in sets.items():
        reference = inputs.float32_attention(q, k, v, heads)
        out = attention_8bit_tilelang(q, k, v, heads)
        cosine, relative = inputs.cosine_and_relative_l2(out, reference)
        bf16_cosine, bf16_relative = inputs.cosine_and_relative_l2(attention(q, k, v, heads)[0], reference)
        print(f"{_case_id(case)} {name}: 8-bit cosine {cosine:.6f}, relative L2 {relative:.2e}; "
              f"bf16 path {bf16_cosine:.7f} / {bf16_relative:.2e}")
        assert cosine >= (0.998 if name == "iid" else GATE), (name, cosine, relative)


def test_unsupported_head_dim_falls_back_to_the_bf16_path_and_says_why():
    from svi_infinity.kernels.attention_8bit import attention_8bit

    q = torch.randn(1, 300, 2 * 96, device="cuda", dtype=torch.bfloat16)
    out, decision = attention_8bit(q, q, q, 2)
    assert decision.backend == "reference" and decision.reason == "8-bit kernel not run: head dim 96 is not 64 or 128"
    assert not out.isnan().any()


def test_tiny_wan_forward_with_the_8bit_switch(comfy_modules):
    """A whole Wan 2.2 forward (one expert in both roles) through ComfyUI's sampler with the node's 8-bit switch:
    self-attention (2080 tokens) runs through the 8-bit kernel in every block, cross-attention stays bf16, and the
    sample stays near the plain bf16 one."""
    import comfy.sd

    from svi_infinity.demo.tiny_models import wan_dit_state_dict
    from svi_infinity.kernels.attention_8bit import BACKEND
    from svi_infinity.kernels.model_patch import EIGHT_BIT, accelerate_model
    from svi_infinity.pipeline.clips import sample_clip

    state = wan_dit_state_dict(image_branch=False, dim=512, layers=2, seed=3)  # 4 heads of 128
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.bfloat16})
    generator = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 16, 5, 32, 52)
    y = {"concat_latent_image": torch.randn(1, 16, 5, 32, 52, generator=generator), "concat_mask": torch.ones(1, 1, 5, 32, 52)}
    text = [[torch.randn(1, 512, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0])
    plain = sample_clip(model, model, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    fast, report = accelerate_model(model, attention_precision=EIGHT_BIT)
    patched = sample_clip(fast, fast, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    relative = ((patched - plain).norm() / plain.norm()).item()
    print(f"tiny Wan, 4 steps: 8-bit vs plain relative L2 {relative:.2e}; {report.lines()}")
    assert report.ran[("attention", BACKEND)] == 2 * 4, report.lines()  # self-attention: 2 blocks, 4 steps
    assert relative < 5e-2
