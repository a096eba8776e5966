"""On a machine without Hopper the dispatch says why it fell back, and the references compute Wan's math."""

import math
import sys

import torch

from svi_infinity.kernels import dispatch
from svi_infinity.kernels.attention import attention, attention_reference
from svi_infinity.kernels.rmsnorm import rms_norm, rms_norm_rope, rms_norm_rope_reference, rotation_table


def test_fallback_reasons_on_cpu():
    q = torch.randn(1, 40, 256)
    for op, (out, decision) in {"attention": attention(q, q, q, 2), "rms_norm": rms_norm(q, torch.ones(256), 1e-6)}.items():
        assert decision.op == op and decision.backend == "reference"
        assert decision.reason == "tensors are on cpu, not CUDA"
        assert out.shape == q.shape and torch.isfinite(out).all()


def test_tilelang_missing_is_a_visible_reason_that_says_how_to_get_it(monkeypatch):
    dispatch.tilelang_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "tilelang", None)
    try:
        assert dispatch.tilelang_problem() == dispatch.tilelang_missing()
        assert "TileLang is not installed" in dispatch.tilelang_problem()
        assert "pip install -r requirements-hopper.txt" in dispatch.tilelang_problem()
    finally:
        dispatch.tilelang_problem.cache_clear()


def test_a_compiler_failure_is_a_visible_reason(monkeypatch):
    """TileLang importable but unable to build (no nvcc on a user's GPU machine): one probe says so, once."""
    from svi_infinity.kernels import rmsnorm

    def no_compiler(*args):
        raise RuntimeError("nvcc not found")

    dispatch.compile_problem.cache_clear()
    monkeypatch.setattr(dispatch, "tilelang_problem", lambda: "")
    monkeypatch.setattr(rmsnorm, "rms_norm_kernel", no_compiler)
    try:
        assert dispatch.compile_problem() == "TileLang cannot compile kernels here: RuntimeError: nvcc not found"
    finally:
        dispatch.compile_problem.cache_clear()


def test_attention_reference_against_float64():
    b, s, k_len, heads, d = 2, 37, 29, 3, 64
    q, k, v = (torch.randn(b, n, heads * d, dtype=torch.float64) for n in (s, k_len, k_len))
    split = lambda t: t.view(b, -1, heads, d).permute(0, 2, 1, 3)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    expected = (weights @ split(v)).permute(0, 2, 1, 3).reshape(b, s, heads * d)
    assert torch.allclose(attention_reference(q, k, v, heads), expected, atol=1e-10)


def test_rms_norm_rope_reference_matches_comfyui_wan_path(comfy_runtime):
    """Wan's own q path: comfy RMSNorm over the whole dim, view per head, comfy's apply_rope1 with real Wan freqs."""
    import comfy.ops
    from comfy.ldm.flux.math import _apply_rope1
    from comfy.ldm.flux.layers import EmbedND

    heads, d, t, h, w = 2, 128, 3, 4, 5
    dim, seq = heads * d, t * h * w
    norm = comfy.ops.disable_weight_init.RMSNorm(dim, eps=1e-6, elementwise_affine=True)
    norm.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(dim))
    ids = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(1, -1, 3).float()
    freqs = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(ids).movedim(1, 2)
    x = torch.randn(1, seq, dim)
    expected = _apply_rope1(norm(x).view(1, seq, heads, d), freqs)
    out, decision = rms_norm_rope(x, norm.weight, 1e-6, freqs, heads)
    assert decision.backend == "reference"
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(rms_norm_rope_reference(x, norm.weight, 1e-6, freqs, heads), expected, atol=1e-5)


def test_rotation_table_holds_cos_sin_and_is_built_once_per_freqs():
    angles = torch.rand(7, 64) * 6.28
    matrices = torch.stack([torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -2)
    freqs = matrices.view(1, 7, 1, 64, 2, 2)
    table = rotation_table(freqs, 7, 64)
    assert table.dtype == torch.float16 and table.shape == (7, 128)
    assert torch.allclose(table.view(7, 64, 2).float(), torch.stack([angles.cos(), angles.sin()], -1), atol=1e-3)
    assert rotation_table(freqs, 7, 64) is table
    assert rotation_table(freqs.clone(), 7, 64) is not table
