"""The 8-bit attention on a CPU: its PyTorch emulation (the quantisation round trip, what the softmax is blind to, the
quality gate on Wan-like inputs) and the dispatch's fallback decisions."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from svi_infinity.kernels import attention_8bit
from svi_infinity.kernels.attention import attention_reference
from svi_infinity.kernels.attention_8bit import (K_GROUPS, LOG2_E, P_SCALE, PV_PERMUTATION, QUANT_ROWS, attention_8bit_reference,
                                                 pv_permutation, quantize_reference)

_spec = importlib.util.spec_from_file_location("attention_inputs", Path(__file__).with_name("attention_inputs.py"))
inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inputs)

GATE = 0.9995  # cosine to a float reference on Wan-like inputs (issue 17)


def test_pv_permutation_turns_accumulator_columns_into_the_fp8_a_operand():
    """Thread t % 4 holds accumulator columns 8g + 2(t % 4) + {0, 1} and 8-bit A-operand columns 4(t % 4) + {0..3}
    (+16): column j of P must come from a column of S that the same thread holds, within the same 16."""
    assert PV_PERMUTATION == [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
    for j in range(128):
        source = pv_permutation(j)
        assert (source % 8) // 2 == (j % 16) // 4 and source // 16 == j // 16
    assert sorted(pv_permutation(j) for j in range(128)) == list(range(128))


def _values_in_key_order(vt: torch.Tensor) -> torch.Tensor:
    """[B, heads, d, padded keys] in the kernel's permuted order -> [B, padded keys, heads, d] in key order."""
    order = torch.tensor([16 * (j // 16) + PV_PERMUTATION[j % 16] for j in range(QUANT_ROWS)])
    keys = (torch.arange(vt.shape[-1] // QUANT_ROWS)[:, None] * QUANT_ROWS + torch.argsort(order)).flatten()
    return vt[..., keys].float().permute(0, 3, 1, 2)


def _dequantize(quantized, heads, seq_q, seq_kv):
    """Q, K, V back from their 8-bit form, in the balanced frame: q / alpha, (k - mean) alpha, v."""
    b, _, c = quantized.q8.shape
    d = c // heads
    logit_scale = LOG2_E / math.sqrt(d)
    q = quantized.q8.view(b, seq_q, heads, d).float() * (quantized.q_scale[:, :, :seq_q].transpose(1, 2) / logit_scale)[..., None]
    groups = (torch.arange(seq_kv) % QUANT_ROWS % 8) // 2 + torch.arange(seq_kv) // QUANT_ROWS * K_GROUPS
    k = quantized.k8.view(b, seq_kv, heads, d).float() * quantized.k_scale[:, :, groups].transpose(1, 2)[..., None]
    v = _values_in_key_order(quantized.vt)[:, :seq_kv] * quantized.v_scale[:, None] + quantized.v_mean[:, None]
    return q, k, v


def test_quantisation_round_trip_within_half_a_step():
    heads, d, seq_q, seq_kv = 2, 128, 300, 200  # ragged: 3 query tiles, 2 KV tiles, both partial
    q, k, v = inputs.wan_like_qkv(1, seq_q, seq_kv, heads, d, seed=3, dtype=torch.float32)
    quantized = quantize_reference(q, k, v, heads)
    qh, kh, vh = (t.view(1, -1, heads, d) for t in (q, k, v))
    k_mean = kh.mean(1, keepdim=True)
    q_amax, k_amax = qh.abs().amax(1, keepdim=True), (kh - k_mean).abs().amax(1, keepdim=True)
    alpha = (q_amax / k_amax).sqrt()
    q_back, k_back, v_back = _dequantize(quantized, heads, seq_q, seq_kv)
    q_step = (qh / alpha).abs().amax(-1, keepdim=True) / 127
    assert ((q_back - qh / alpha).abs() <= 0.5001 * q_step).all()
    balanced_k = (kh - k_mean) * alpha
    k_step = quantized.k_scale.max()
    assert ((k_back - balanced_k).abs() <= 0.5001 * k_step).all()
    assert (k_back - balanced_k).abs().max() > 0.1 * k_step  # the round trip is really lossy: not a no-op
    v_mean = vh.mean(1, keepdim=True)
    assert ((v_back - vh).abs() <= 2 ** -4 * (vh - v_mean).abs() + 2 ** -9 * quantized.v_scale[:, None] + 1e-6).all()
    assert (_values_in_key_order(quantized.vt)[:, seq_kv:] == 0).all() and (quantized.q_scale[:, :, seq_q:] == 0).all()
    assert quantized.vt.shape[-1] == 2 * QUANT_ROWS and (quantized.vt[..., seq_kv:].float() != 0).any()  # permuted tail
    assert quantized.q8.abs().max() == 127 and quantized.vt.float().abs().max() == P_SCALE


def test_k_smoothing_and_channel_balance_leave_the_softmax_unchanged():
    heads, d = 2, 64
    q, k, _ = inputs.wan_like_qkv(1, 40, 90, heads, d, seed=1, dtype=torch.float64)
    qh, kh = q.view(1, -1, heads, d).transpose(1, 2), k.view(1, -1, heads, d).transpose(1, 2)
    k_mean = kh.mean(2, keepdim=True)
    alpha = (qh.abs().amax(2, keepdim=True) / (kh - k_mean).abs().amax(2, keepdim=True)).sqrt()
    plain = (qh @ kh.transpose(-1, -2)).softmax(-1)
    transformed = ((qh / alpha) @ ((kh - k_mean) * alpha).transpose(-1, -2)).softmax(-1)
    assert torch.allclose(plain, transformed, atol=1e-12)
    assert not torch.allclose(qh @ kh.transpose(-1, -2), (qh / alpha) @ ((kh - k_mean) * alpha).transpose(-1, -2))


@pytest.mark.parametrize("sharpness, outlier_gain", [(1.0, 8.0), (2.0, 8.0), (2.0, 16.0), (3.0, 8.0)])
def test_emulated_8bit_attention_meets_the_gate_on_wan_like_inputs(sharpness, outlier_gain):
    """Self- and cross-attention lengths (ragged), q/k after RMSNorm with 4 outlier channels per head; sharper
    attention (fewer keys carry the weight) is harder for int8 logits."""
    heads, d = 2, 128
    for seq_q, seq_kv in ((300, 1100), (300, 257)):
        q, k, v = inputs.wan_like_qkv(1, seq_q, seq_kv, heads, d, sharpness=sharpness, outlier_gain=outlier_gain, seed=5)
        reference = inputs.float32_attention(q, k, v, heads)
        cosine, relative = inputs.cosine_and_relative_l2(attention_8bit_reference(q, k, v, heads), reference)
        print(f"sharpness {sharpness}, outliers x{outlier_gain}, {seq_q} over {seq_kv}: cosine {cosine:.6f}, relative L2 {relative:.2e}")
        assert cosine >= GATE, (cosine, relative)


def test_emulated_8bit_attention_on_iid_inputs_is_at_e4m3s_floor():
    """N(0, 1) q, k, v: V has no common part, so e4m3's 3 mantissa bits in P and V show fully (cosine ~0.9992)."""
    q, k, v = inputs.iid_qkv(1, 300, 1100, 2, 128, seed=2)
    cosine, relative = inputs.cosine_and_relative_l2(attention_8bit_reference(q, k, v, 2),
                                                     inputs.float32_attention(q, k, v, 2))
    print(f"iid: cosine {cosine:.6f}, relative L2 {relative:.2e}")
    assert 0.999 <= cosine < GATE


def test_on_cpu_the_dispatch_runs_the_bf16_path_and_says_why():
    q, k, v = inputs.wan_like_qkv(1, 50, attention_8bit.MIN_KEYS, 2, 64, seed=4, dtype=torch.float32)
    out, decision = attention_8bit.attention_8bit(q, k, v, 2)
    assert decision.op == "attention" and decision.backend == "reference"
    assert decision.reason == "8-bit kernel not run: tensors are on cpu, not CUDA"
    assert torch.equal(out, attention_reference(q, k, v, 2))


def test_unsupported_shapes_are_named(monkeypatch):
    monkeypatch.setattr(attention_8bit, "kernel_problem", lambda *tensors: "")
    q = torch.randn(1, 8, 2 * 96, dtype=torch.bfloat16)
    kv = torch.randn(1, attention_8bit.MIN_KEYS, 2 * 96, dtype=torch.bfloat16)
    assert attention_8bit.problem(q, kv, kv, 2) == "head dim 96 is not 64 or 128"
    assert attention_8bit.problem(q, kv.half(), kv, 3) == "q, k and v dtypes differ"
    assert attention_8bit.problem(q, kv, kv, 3) == ""  # head dim 64
    assert "512 keys (cross-attention)" in attention_8bit.problem(q, kv[:, :512], kv[:, :512], 3)
    monkeypatch.setattr(attention_8bit, "kernel_problem", lambda *tensors: "TileLang not importable: x")
    assert attention_8bit.problem(q, kv, kv, 3) == "TileLang not importable: x"
