"""What drift control and the SVI-Dance pose encoder add per clip at real size (81 frames, 480p or 720p).

Times, on the device SVI Long Video uses (CUDA when present), the drift controller correcting one decoded clip (Lab
statistics of its ends, the eased correction of every frame) and the pose encoder turning one clip's pose frames into
Wan tokens, with peak GPU memory; prints one table. The frames are a smooth moving gradient with noise (never constant),
the pose a stick figure; timings do not depend on the content.

  python bench/coherence_bench.py --res 480p --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.demo.tiny_models import pose_encoder_tensors, pose_video_frames  # noqa: E402
from svi_infinity.svi.dance import PoseEncoder  # noqa: E402
from svi_infinity.svi.drift import DriftController, DriftMode, DriftSettings  # noqa: E402

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720), "small": (192, 112)}
WAN_14B_DIM = 5120


def moving_clip(frames: int, width: int, height: int, device) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(0)
    y = torch.linspace(0, 1, height).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1, 1)
    t = torch.linspace(0, 1, frames).view(-1, 1, 1, 1)
    colour = torch.tensor([0.8, 0.5, 0.3]).view(1, 1, 1, 3)
    clip = 0.5 * (x + t) % 1 * colour + 0.3 * y + 0.1 * torch.rand(frames, height, width, 3, generator=generator)
    return (clip.clamp(0, 1) + 0.05).clamp(0, 1).to(device)


def timed(run, repeats: int, device) -> tuple[float, float]:
    """(median seconds, peak GiB of GPU memory) over `repeats` runs after one warm-up."""
    run()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", choices=RESOLUTIONS, default="480p")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    width, height = RESOLUTIONS[args.res]
    clip = moving_clip(args.frames, width, height, device)
    reference = clip[0].clone()
    brighter = (clip * 1.1 + 0.03).clamp(0, 1)  # a drifted clip, so the correction really runs
    rows = []
    for mode in (DriftMode.REFERENCE, DriftMode.SEAM):
        controller = DriftController(reference, DriftSettings(mode=mode), conditioning_corrected=True, seam_start=0, seam_count=5)
        controller.correct(clip)  # a previous clip, so seam matching has a seam
        seconds, peak = timed(lambda: controller.correct(brighter), args.repeats, device)
        rows.append((f"drift control, {mode.value}", seconds, peak))
    weights = {k[len("dwpose_embedding."):]: v for k, v in pose_encoder_tensors(WAN_14B_DIM).items()}
    encoder = PoseEncoder.from_weights(weights).to(device)
    pose = pose_video_frames(args.frames, width, height).to(device)
    seconds, peak = timed(lambda: encoder.tokens(pose), args.repeats, device)
    rows.append(("SVI-Dance pose tokens (fp32, dim 5120)", seconds, peak))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {args.frames} frames at {width}x{height}, median of {args.repeats}")
    print(f"{'step':48s} {'s per clip':>10s} {'peak GiB':>9s}")
    for label, seconds, peak in rows:
        print(f"{label:48s} {seconds:10.3f} {peak:9.2f}")


if __name__ == "__main__":
    main()
