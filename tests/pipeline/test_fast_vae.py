"""The pack's VAE encode/decode patches: found where ComfyUI's Wan VAE has them, exact on the reference path, and undone."""

import pytest
import torch

from svi_infinity.demo.tiny_models import wan21_vae_state_dict


@pytest.fixture(scope="module")
def vae(comfy_runtime):
    import comfy.sd

    return comfy.sd.VAE(sd=wan21_vae_state_dict(dim=8, seed=3))


def latent() -> torch.Tensor:
    return torch.randn(1, 16, 3, 6, 8, generator=torch.Generator().manual_seed(1))


def test_every_residual_block_and_the_head_have_a_norm_silu_pair(vae):
    from comfy.ldm.wan.vae import ResidualBlock

    from svi_infinity.pipeline.fast_vae import norm_silu_pairs

    decoder = vae.first_stage_model.decoder
    blocks = sum(isinstance(m, ResidualBlock) for m in decoder.modules())
    assert blocks == 14  # 2 middle + 4 levels x 3
    assert len(norm_silu_pairs(decoder)) == 2 * blocks + 1


def test_fused_pairs_decode_exactly_like_comfyui_off_hopper_and_are_undone(vae):
    from svi_infinity.pipeline.fast_vae import fused_norm_silu, norm_silu_pairs

    decoder = vae.first_stage_model.decoder
    expected = vae.decode(latent())
    with fused_norm_silu(decoder) as patched:
        assert patched == len(norm_silu_pairs(decoder))
        assert all("forward" in vars(norm) for norm, _ in norm_silu_pairs(decoder))
        fused = vae.decode(latent())
    assert torch.equal(fused, expected)  # the dispatch's reference is ComfyUI's own math, op for op
    assert all("forward" not in vars(norm) and "forward" not in vars(act) for norm, act in norm_silu_pairs(decoder))


def test_channels_last_weights_decode_the_same_frames_and_are_restored(vae):
    from svi_infinity.pipeline.fast_vae import _convolution_weights, _relayout

    weights = _convolution_weights(vae.first_stage_model.decoder)
    expected = vae.decode(latent())
    _relayout(weights, True)
    try:
        assert all(not w.is_contiguous() for w in weights if w.shape[-1] > 1)
        relaid = vae.decode(latent())
    finally:
        _relayout(weights, False)
    assert all(w.is_contiguous() for w in weights)
    torch.testing.assert_close(relaid, expected, atol=1e-5, rtol=0)


def test_decode_context_leaves_a_cpu_vae_alone(vae):
    from svi_infinity.pipeline.clips import decode_clip

    expected = vae.decode(latent())
    frames = decode_clip(vae, latent())
    assert torch.equal(frames, expected.reshape(-1, *expected.shape[-3:]))
    assert torch.backends.cudnn.benchmark is False


def test_kernel_reference_is_comfyuis_rms_norm_then_silu(comfy_runtime):
    from comfy.ldm.wan.vae import RMS_norm

    from svi_infinity.kernels.vae_norm import rms_norm_silu

    norm = RMS_norm(12, images=False)
    with torch.no_grad():
        norm.gamma.copy_(1 + 0.1 * torch.randn(12, 1, 1, 1))
    x = torch.randn(2, 12, 3, 4, 5)
    out, decision = rms_norm_silu(x, norm.gamma)
    assert decision.backend == "reference" and decision.reason
    assert torch.equal(out, torch.nn.functional.silu(norm(x)))


def test_the_encoder_has_its_norm_silu_pairs_too(vae):
    from svi_infinity.pipeline.fast_vae import norm_silu_pairs

    encoder = vae.first_stage_model.encoder
    blocks = sum(type(m).__name__ == "ResidualBlock" for m in encoder.modules())
    assert blocks and len(norm_silu_pairs(encoder)) == 2 * blocks + 1


def test_fast_vae_is_a_copy_that_decodes_like_the_vae_it_wraps(vae):
    from svi_infinity.pipeline.fast_vae import decode_frames, fast_vae

    expected = vae.decode(latent())
    fast = fast_vae(vae)
    assert fast is not vae and fast.first_stage_model is vae.first_stage_model and "decode" not in vars(vae)
    assert torch.equal(fast.decode(latent()), expected)
    assert torch.equal(decode_frames(fast, latent()), expected)  # decode_frames unwraps it instead of nesting the patches
    assert fast_vae(fast).svi_plain_vae is vae
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fast.encode(image), vae.encode(image))  # on the CPU the fast encode is ComfyUI's own
    assert "encode" not in vars(vae)


@pytest.mark.parametrize("capability, compile_answer, fused", [
    ((8, 9), "", False), ((10, 0), "", False), ((12, 0), "", False),
    ((9, 0), "TileLang cannot compile kernels here: RuntimeError: nvcc not found", False), ((9, 0), "", True),
], ids=["sm_89", "sm_100", "sm_120", "sm_90_no_compiler", "sm_90"])
def test_fused_norms_only_where_the_kernel_gate_allows(vae, monkeypatch, capability, compile_answer, fused):
    """The fast decode keeps its channels-last convolutions on every CUDA GPU, but swaps in the TileLang RMSNorm+SiLU
    only on Hopper with a working compile; elsewhere the pairs keep ComfyUI's forward and the report says why.
    The capability and the compile answer are injected; the CPU VAE stands in for a CUDA one (`runs_on_cuda`), which
    only decides whether the PyTorch-level changes apply."""
    from svi_infinity.kernels import dispatch
    from svi_infinity.pipeline import fast_vae

    monkeypatch.setattr(fast_vae, "runs_on_cuda", lambda vae: True)
    monkeypatch.setattr(dispatch, "capability_of", lambda device: capability)
    monkeypatch.setattr(dispatch, "compile_problem", lambda: compile_answer)
    decoder = vae.first_stage_model.decoder
    weights = fast_vae._convolution_weights(decoder)
    with fast_vae.channels_last_vae(vae):
        patched = ["forward" in vars(norm) for norm, _ in fast_vae.norm_silu_pairs(decoder)]
        relaid = [not w.is_contiguous() for w in weights if w.shape[-1] > 1]
    assert all(relaid) and relaid
    assert all(patched) if fused else not any(patched)
    line = fast_vae.fast_path_line(vae)
    assert line.startswith("VAE encode and decode: channels-last convolutions") and "pinned copy" in line
    if fused:
        assert "fused RMSNorm+SiLU (TileLang)" in line
    else:
        assert f"RMSNorm+SiLU: ComfyUI's ({dispatch.tilelang_gate(capability, lambda: compile_answer)})" in line


def test_fused_norms_wait_for_nothing_while_the_kernels_compile(vae, monkeypatch):
    """A fast VAE given a background compile's gate: while it is closed the encode runs ComfyUI's norms (its
    convolutions still go channels-last), once it is set the fused ones."""
    import threading

    from svi_infinity.kernels import dispatch
    from svi_infinity.pipeline import fast_vae

    monkeypatch.setattr(fast_vae, "runs_on_cuda", lambda vae: True)
    monkeypatch.setattr(dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(dispatch, "compile_problem", lambda: "")
    norm = fast_vae.norm_silu_pairs(vae.first_stage_model.encoder)[0][0]
    fused_at_call = []
    hook = norm.register_forward_pre_hook(lambda module, args: fused_at_call.append("forward" in vars(module)))
    ready = threading.Event()
    fast = fast_vae.fast_vae(vae, ready)
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4))
    try:
        fast.encode(image)
        fast_vae.encode_frames(fast, image)  # how the SVI nodes call it: the gate travels with the fast VAE
        while_compiling = set(fused_at_call)
        fused_at_call.clear()
        ready.set()
        fast.encode(image)
    finally:
        hook.remove()
    assert while_compiling == {False} and set(fused_at_call) == {True}
    assert fast_vae.fused_norm_problem(vae, threading.Event()) == dispatch.STILL_COMPILING
