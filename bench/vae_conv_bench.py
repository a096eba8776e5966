"""The Wan VAE decoder's convolutions at real size, one shape at a time: cuDNN's channels-last 3D convolution (what
the pack's decode runs today) against the same math as 2D convolutions, one per temporal tap, summed.

One decode of a random 81-frame latent through the pack's decode records every convolution call (input and weight
shapes, how often); each distinct call is then timed alone with random bf16 inputs, and the table weights the times
by the calls per decode, so its total is what one decode spends on convolutions by each method.

  python3 bench/vae_conv_bench.py [--res 480p] [--repeats 10]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}


@contextmanager
def recording_conv3d(calls: collections.Counter):
    """Counts each F.conv3d call by (input shape, weight shape, stride, padding) while the block runs."""
    original = F.conv3d

    def record(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        calls[(tuple(input.shape), tuple(weight.shape), tuple(stride) if isinstance(stride, tuple) else (stride,) * 3,
               tuple(padding) if isinstance(padding, tuple) else (padding,) * 3, bias is not None)] += 1
        return original(input, weight, bias, stride, padding, dilation, groups)

    F.conv3d = record
    try:
        yield
    finally:
        F.conv3d = original


def conv3d_as_taps(x: torch.Tensor, weight: torch.Tensor, bias, padding) -> torch.Tensor:
    """A stride-1 3D convolution without temporal padding as one 2D convolution per temporal tap over frame views of
    the channels-last input, summed."""
    batch, _, frames, _, _ = x.shape
    taps = weight.shape[2]
    out_frames = frames - taps + 1
    frame_major = x.permute(0, 2, 1, 3, 4)
    out = None
    for tap in range(taps):
        view = frame_major[:, tap:tap + out_frames].reshape(batch * out_frames, *frame_major.shape[2:])
        part = F.conv2d(view, weight[:, :, tap].contiguous(memory_format=torch.channels_last),
                        bias if tap == 0 else None, padding=padding[1:])
        out = part if out is None else out.add_(part)
    return out.reshape(batch, out_frames, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def timed(function, repeats: int) -> float:
    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", choices=list(RESOLUTIONS), default="480p")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 1

    from svi_infinity.demo.comfy_runtime import find_comfyui, import_comfy

    import_comfy(find_comfyui(), Path(tempfile.mkdtemp()), cpu=False)
    import comfy.sd
    from svi_infinity.demo.tiny_models import wan21_vae_state_dict
    from svi_infinity.pipeline.fast_vae import decode_frames

    torch.backends.cudnn.benchmark = True
    width, height = RESOLUTIONS[args.res]
    vae = comfy.sd.VAE(sd=wan21_vae_state_dict(dim=96, seed=3))
    latent = torch.randn(1, 16, 21, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    calls: collections.Counter = collections.Counter()
    decode_frames(vae, latent)
    with recording_conv3d(calls):
        decode_frames(vae, latent)
    print(f"Wan 2.1 VAE decoder, {args.res}, {sum(calls.values())} conv3d calls in {len(calls)} shapes, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")

    generator = torch.Generator(device="cuda").manual_seed(1)
    totals = collections.Counter()
    flops_total = 0.0
    print("\n| input | weight | calls | GFLOP per call | conv3d ms / TFLOP/s | 2D taps ms / TFLOP/s | taps max rel diff |")
    print("|---|---|---|---|---|---|---|")
    for (in_shape, w_shape, stride, padding, has_bias), count in sorted(calls.items(), key=lambda kv: -kv[1] * kv[0][0][2]):
        x = torch.randn(in_shape, device="cuda", dtype=torch.bfloat16, generator=generator)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        w = (torch.randn(w_shape, device="cuda", dtype=torch.bfloat16, generator=generator) * 0.05)
        w = w.contiguous(memory_format=torch.channels_last_3d)
        b = torch.randn(w_shape[0], device="cuda", dtype=torch.bfloat16, generator=generator) if has_bias else None
        reference = F.conv3d(x, w, b, stride, padding)
        flops = 2.0 * reference.numel() * w_shape[1] * w_shape[2] * w_shape[3] * w_shape[4]
        flops_total += flops * count
        t3 = timed(lambda: F.conv3d(x, w, b, stride, padding), args.repeats)
        totals["conv3d"] += t3 * count
        taps_cell, diff_cell = "-", "-"
        if stride == (1, 1, 1) and padding[0] == 0 and w_shape[2] > 1:
            taps = conv3d_as_taps(x, w, b, padding)
            diff = ((taps.float() - reference.float()).abs().max() / reference.float().abs().max()).item()
            t2 = timed(lambda: conv3d_as_taps(x, w, b, padding), args.repeats)
            taps_cell, diff_cell = f"{t2 * 1e3:.3f} / {flops / t2 / 1e12:.0f}", f"{diff:.1e}"
            totals["taps"] += min(t2, t3) * count
        else:
            totals["taps"] += t3 * count
        print(f"| {in_shape} | {w_shape} | {count} | {flops / 1e9:.1f} | {t3 * 1e3:.3f} / {flops / t3 / 1e12:.0f} | {taps_cell} "
              f"| {diff_cell} |")
    print(f"\nper decode: {flops_total / 1e12:.1f} TFLOP of conv3d; cuDNN conv3d {totals['conv3d']:.3f} s "
          f"({flops_total / totals['conv3d'] / 1e12:.0f} TFLOP/s); best of conv3d and 2D taps per shape {totals['taps']:.3f} s")
    return 0


if __name__ == "__main__":
    with torch.inference_mode():
        sys.exit(main())
