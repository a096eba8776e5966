"""Wan VAE decode of one clip at real size: ComfyUI's own decode vs the pack's channels-last decode, side by side.

A full-size Wan 2.1 VAE (dim 96) with random weights, loaded by ComfyUI, decodes a random 81-frame latent
through `comfy.sd.VAE.decode` in interleaved rounds. Variants isolate the two parts of the pack's decode
(cuDNN autotuning, channels-last weights, the fused RMSNorm+SiLU kernel); the table gives medians, ratios against ComfyUI and the largest
difference from ComfyUI's frames. `--profile` splits one decode by kernel class.

  python3 bench/vae_decode_bench.py [--res 480p] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}


@contextmanager
def autotune_only():
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def with_context(context, vae, latent):
    def run():
        with context():
            return vae.decode(latent)
    return run


def variants(vae, latent) -> dict:
    """Each variant decodes `latent` to frames on the CPU, as ComfyUI's decode returns them."""
    from contextlib import nullcontext

    from svi_infinity.pipeline.fast_vae import channels_last_vae, decode_frames

    return {
        "ComfyUI": with_context(nullcontext, vae, latent),
        "cuDNN autotune": with_context(autotune_only, vae, latent),
        "channels-last": with_context(lambda: channels_last_vae(vae, fused_norms=False, autotune=False), vae, latent),
        "channels-last + autotune": with_context(lambda: channels_last_vae(vae, fused_norms=False), vae, latent),
        "+ fused RMSNorm+SiLU": with_context(lambda: channels_last_vae(vae), vae, latent),
        "pack (+ pinned copy out)": lambda: decode_frames(vae, latent),
        "pack without cuDNN autotune": lambda: decode_frames(vae, latent, autotune=False),
    }


def kernel_class(name: str) -> str:
    lowered = name.lower()
    if "conv" in lowered or "implicit" in lowered or "gemm" in lowered or "xmma" in lowered or "sm90" in lowered \
            or "nchw" in lowered or "nhwc" in lowered or "cudnn" in lowered or "wgrad" in lowered or "dgrad" in lowered:
        return "convolution"
    if "copy" in lowered or "cat" in lowered or "memcpy" in lowered or "layout" in lowered or "transpose" in lowered:
        return "copies / layout"
    return "elementwise + norms"


def profile_decode(decode) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    decode()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        decode()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in profiler.key_averages():
        device_us = getattr(event, "self_device_time_total", 0)
        if device_us:
            label = kernel_class(event.key)
            totals[label] = totals.get(label, 0.0) + device_us / 1e6
    top = sorted(((getattr(e, "self_device_time_total", 0), e.key) for e in profiler.key_averages()), reverse=True)[:8]
    for us, key in top:
        print(f"    {us / 1e3:9.1f} ms  {key[:110]}")
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", choices=list(RESOLUTIONS), default="480p")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 1

    from svi_infinity.demo.comfy_runtime import find_comfyui, import_comfy

    import_comfy(find_comfyui(), Path(tempfile.mkdtemp()), cpu=False)
    import comfy.sd
    from svi_infinity.demo.tiny_models import wan21_vae_state_dict

    width, height = RESOLUTIONS[args.res]
    vae = comfy.sd.VAE(sd=wan21_vae_state_dict(dim=96, seed=3))
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8, generator=generator)
    print(f"Wan 2.1 VAE dim 96, dtype {vae.vae_dtype}, latent {tuple(latent.shape)} -> {args.frames} frames {width}x{height}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)

    decodes = variants(vae, latent)
    outputs, times, first = {}, {name: [] for name in decodes}, {}
    for name, decode in decodes.items():  # warm-up: loads the VAE, lets cuDNN autotune each shape once
        torch.cuda.synchronize()
        start = time.perf_counter()
        outputs[name] = decode()
        torch.cuda.synchronize()
        first[name] = time.perf_counter() - start
    for _ in range(args.rounds):
        for name, decode in decodes.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            decode()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    peaks = {}
    for name, decode in decodes.items():
        torch.cuda.reset_peak_memory_stats()
        decode()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30

    base = statistics.median(times["ComfyUI"])
    print(f"\n| decode ({args.res}, {args.frames} frames) | median s | vs ComfyUI | frames vs ComfyUI: max / mean abs diff | peak GiB "
          "| first call s (in this order: autotune results are shared by later variants of the same layout) |")
    print("|---|---|---|---|---|---|")
    for name in decodes:
        median = statistics.median(times[name])
        diff = (outputs[name] - outputs["ComfyUI"]).abs()
        print(f"| {name} | {median:.3f} | {base / median:.2f}x | {diff.max().item():.2e} / {diff.mean().item():.2e} | {peaks[name]:.2f} "
              f"| {first[name]:.3f} |")
    if args.profile:
        for name in ("ComfyUI", "pack (+ pinned copy out)"):
            print(f"\n{name}: one decode, CUDA time by kernel class")
            for label, seconds in sorted(profile_decode(decodes[name]).items(), key=lambda kv: -kv[1]):
                print(f"| {label} | {seconds:.3f} s |")
    return 0


if __name__ == "__main__":
    with torch.inference_mode():
        sys.exit(main())
