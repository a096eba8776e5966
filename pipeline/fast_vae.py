"""Faster Wan VAE encoding and decoding on CUDA, for the duration of one call.

Three changes; whatever they touch on the VAE is restored when the call ends, so the VAE object the graph shares is
left as it was:
- Channels-last 3D convolutions with cuDNN autotuning. ComfyUI keeps the activations in NCDHW, for which
  cuDNN's bf16 3D convolutions run ~25% slower and add layout transposes; giving the convolution weights a
  channels-last layout makes PyTorch run every convolution channels-last, and the elementwise work between
  them keeps that layout.
- Each RMS_norm + SiLU pair of the decoder's (or encoder's) blocks runs as one kernel over those channels-last rows
  (kernels/vae_norm.py) instead of ComfyUI's six-pass version, where the kernel gate allows it (a Hopper GPU with a
  working TileLang compile); elsewhere those pairs stay ComfyUI's own.
- Decoded frames stay on the GPU until ComfyUI's decode returns and then go to the CPU in one copy into pinned
  memory (PyTorch's host allocator caches it between clips) instead of a pageable copy (~0.12 s at 480p).
The first and last are plain PyTorch and apply on every CUDA GPU. The math is unchanged (the same convolutions and
norms), so outputs match up to rounding and summation order.
Encoding matters for the SVI 1.0 modes (and SVI 2.0 on Wan 2.1), which VAE-encode a whole 81-frame conditioning
video for every clip.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from contextlib import contextmanager

import torch

from ..kernels.dispatch import STILL_COMPILING, kernel_gate
from ..kernels.vae_norm import rms_norm_silu

log = logging.getLogger(__name__)

CHANNELS_LAST = {5: torch.channels_last_3d, 4: torch.channels_last}


def _convolution_weights(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.weight.ndim in CHANNELS_LAST]


def _relayout(weights: list[torch.nn.Parameter], channels_last: bool) -> None:
    for weight in weights:
        layout = CHANNELS_LAST[weight.ndim] if channels_last else torch.contiguous_format
        weight.data = weight.data.contiguous(memory_format=layout)


def norm_silu_pairs(decoder: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(RMS_norm, SiLU) modules that run back to back inside the decoder's Sequentials (residual blocks, head)."""
    from comfy.ldm.wan.vae import RMS_norm

    pairs = []
    for sequence in decoder.modules():
        if isinstance(sequence, torch.nn.Sequential):
            layers = list(sequence)
            pairs += [(norm, act) for norm, act in zip(layers, layers[1:]) if isinstance(norm, RMS_norm)
                      and isinstance(act, torch.nn.SiLU) and norm.channel_first and norm.bias is None and norm.gamma.ndim == 4]
    return pairs


@contextmanager
def fused_norm_silu(decoder: torch.nn.Module):
    """Within the block, each RMS_norm + SiLU pair of `decoder` is one call of the fused kernel (dispatch falls back
    to ComfyUI's math where the kernel cannot run)."""
    pairs = norm_silu_pairs(decoder)
    for norm, act in pairs:
        norm.forward = lambda x, norm=norm: rms_norm_silu(x, norm.gamma)[0]
        act.forward = lambda x: x
    try:
        yield len(pairs)
    finally:
        for norm, act in pairs:
            del norm.forward, act.forward


def runs_on_cuda(vae) -> bool:
    """Whether the fast encode and decode apply: the VAE runs on a CUDA device."""
    device = getattr(vae, "device", None)
    return torch.cuda.is_available() and device is not None and torch.device(device).type == "cuda"


def fused_norm_problem(vae, kernels_ready: threading.Event | None = None) -> str:
    """'' when the VAE's RMSNorm+SiLU pairs may run as the TileLang kernel (the kernel gate for the VAE's device, and
    `kernels_ready` set where given: a background compile has loaded the kernel), else why they stay ComfyUI's."""
    problem = kernel_gate(vae.device)
    if not problem and kernels_ready is not None and not kernels_ready.is_set():
        return STILL_COMPILING
    return problem


def fast_path_line(vae) -> str:
    """What a fast encode and decode of this VAE runs, for the kernel node's report."""
    if not runs_on_cuda(vae):
        return f"VAE encode and decode: ComfyUI's own (the VAE runs on {vae.device})"
    problem = fused_norm_problem(vae)
    if problem:
        return f"VAE encode and decode: channels-last convolutions, one pinned copy out; RMSNorm+SiLU: ComfyUI's ({problem})"
    return "VAE encode and decode: channels-last convolutions, fused RMSNorm+SiLU (TileLang), one pinned copy out"


@functools.lru_cache(maxsize=None)
def _say_once(problem: str) -> None:
    log.info("SVI fast VAE: RMSNorm+SiLU stays ComfyUI's: %s", problem)


@contextmanager
def channels_last_vae(vae, enabled: bool = True, *, part: str = "decoder", fused_norms: bool = True, autotune: bool = True,
                      kernels_ready: threading.Event | None = None):
    """Within the block, the Wan VAE's `part` ("decoder": `vae.decode`, "encoder": `vae.encode`) runs channels-last with
    the fused norms where the kernel gate allows them (CUDA only; else as is); `autotune`: cuDNN times its algorithms for each new convolution shape (the
    first call in a process pays); `kernels_ready`: see `fused_norm_problem`."""
    model = getattr(vae, "first_stage_model", None)
    coder = getattr(model, part, None)
    if not enabled or coder is None or not runs_on_cuda(vae):
        yield
        return
    weights = _convolution_weights(coder)
    previous_autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = autotune
    _relayout(weights, True)
    problem = fused_norm_problem(vae, kernels_ready) if fused_norms else "switched off"
    if fused_norms and problem:
        _say_once(problem)
    try:
        if not problem:
            with fused_norm_silu(coder):
                yield
        else:
            yield
    finally:
        _relayout(weights, False)
        torch.backends.cudnn.benchmark = previous_autotune


def encode_frames(vae, pixels: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """ComfyUI's `vae.encode` (pixels [F, H, W, 3] -> latent on ComfyUI's intermediate device), with the changes
    above when `fast` (a fast_vae brings its background compile's gate)."""
    kernels_ready = getattr(vae, "svi_kernels_ready", None)
    vae = getattr(vae, "svi_plain_vae", vae)
    with channels_last_vae(vae, fast, part="encoder", kernels_ready=kernels_ready):
        return vae.encode(pixels)


def decode_frames(vae, samples: torch.Tensor, fast: bool = True, *, autotune: bool = True) -> torch.Tensor:
    """ComfyUI's `vae.decode` ([B, F, H, W, 3] on ComfyUI's intermediate device), with the changes above when `fast`
    (a fast_vae brings its background compile's gate)."""
    kernels_ready = getattr(vae, "svi_kernels_ready", None)
    vae = getattr(vae, "svi_plain_vae", vae)  # a fast_vae: decode through the VAE it wraps, once
    if not fast or not runs_on_cuda(vae) or torch.device(vae.output_device).type != "cpu":
        with channels_last_vae(vae, fast, autotune=autotune, kernels_ready=kernels_ready):
            return vae.decode(samples)
    output_device = vae.output_device
    vae.output_device = vae.device
    try:
        with channels_last_vae(vae, autotune=autotune, kernels_ready=kernels_ready):
            frames = vae.decode(samples)
    finally:
        vae.output_device = output_device
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    host.copy_(frames)
    return host


def fast_vae(vae, kernels_ready: threading.Event | None = None):
    """A shallow copy of a ComfyUI VAE whose `decode` and `encode` are `decode_frames` and `encode_frames` (what
    ComfyUI's VAE Decode / Encode nodes and the SVI nodes call), so a graph's own nodes get the fast path; the VAE
    object the rest of the graph shares is left as it is. `kernels_ready`: the fused norms wait for nothing, they are
    left out until it is set (a background compile is still building them)."""
    plain = getattr(vae, "svi_plain_vae", vae)
    fast = copy.copy(plain)
    fast.svi_plain_vae = plain
    fast.svi_kernels_ready = kernels_ready  # read by decode_frames / encode_frames, which the SVI nodes call on it
    fast.decode = lambda samples_in, vae_options={}: (decode_frames(fast, samples_in) if not vae_options
                                                      else plain.decode(samples_in, vae_options))
    fast.encode = lambda pixel_samples: encode_frames(fast, pixel_samples)
    return fast
