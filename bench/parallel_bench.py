"""One SVI clip on 1, 2, 4 and 8 GPUs of one host, side by side: Ulysses sequence parallelism and the banded VAE.

Runs the pack's real pipeline (anchor encode, SVI 2.0 Pro conditioning, few-step sampling through ComfyUI's samplers,
VAE decode) on random weights at the real shapes (bench/random_models.py, through ComfyUI's own loader) for each
degree in turn: this process is rank 0 and the pack's launcher (pipeline/parallel_workers.py) starts the other ranks,
so no torchrun is needed. Per degree: time to start the group and send the weights, then seconds per step, sampling,
decode and the whole clip, speed-up and scaling efficiency against one GPU, peak allocated memory of every GPU, and
how far the clip's latent and frames are from one GPU's (relative L2). Every rank runs with NVLink multicast off
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1).

  python bench/parallel_bench.py --model wan21 --res 480p --degrees 1,2,4,8
  python bench/parallel_bench.py --model wan22 --res 720p --degrees 1,2,4,8 --json out.json
  python bench/parallel_bench.py --tiny --degrees 1,2   (a CPU smoke run of the same code: gloo, tiny 4-head models)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from random_models import WAN_14B, WAN_TINY, WEIGHT_DTYPES, load_vae, load_wan  # noqa: E402
from e2e_bench import TEXT_TOKENS, VisionOutput, synchronize  # noqa: E402
from svi_infinity.pipeline.parallel_workers import NVLINK_MULTICAST_OFF  # noqa: E402

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720), "tiny": (64, 48)}
TINY_HEADS = 4
LIGHTNING = "lightning 4-step (lightx2v / Wan2.2-Lightning)"


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def one_clip(models, vae, width: int, height: int, frames: int) -> dict:
    """The first SVI 2.0 Pro clip, timed step by step; returns timings, the latent and the frames."""
    from svi_infinity.pipeline.clips import build_clip_inputs, condition, decode_clip, encode_anchor, sample_clip
    from svi_infinity.svi.conditioning import SVIMode
    from svi_infinity.svi.plan import schedule_sigmas

    model, model_low = models
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, height, width, 3, generator=generator)
    text = [[torch.randn(1, TEXT_TOKENS, 4096, generator=generator), {"pooled_output": None}]]
    vision = VisionOutput(torch.randn(1, 257, 1280, generator=generator)) if model_low is None else None
    steps, last = [], [0.0]

    def on_step(done, total, x0):
        synchronize()
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    synchronize()
    started = time.perf_counter()
    anchor, _ = encode_anchor(vae, reference, width, height)
    synchronize()
    encoded = time.perf_counter()
    inputs = build_clip_inputs(vae, SVIMode.PRO_LATENT, frames, anchor=anchor)
    positive = condition(text, inputs, vision)
    synchronize()
    last[0] = conditioned = time.perf_counter()
    samples = sample_clip(model, model_low, positive, positive, inputs.empty_latent, seed=1, sigmas=schedule_sigmas(LIGHTNING),
                          boundary=0.9, cfg=1.0, step_callback=on_step)
    synchronize()
    sampled = time.perf_counter()
    images = decode_clip(vae, samples)
    synchronize()
    decoded = time.perf_counter()
    return {"anchor_encode_s": encoded - started, "steps_s": steps, "sampling_s": sampled - conditioned,
            "decode_s": decoded - sampled, "clip_s": decoded - started, "latent": samples.cpu(), "frames": images.cpu()}


def run_degree(degree: int, models, vae, args, width: int, height: int, cuda: bool) -> dict:
    from svi_infinity.pipeline.fast_vae import fast_vae
    from svi_infinity.pipeline.sequence_parallel import parallel_model, parallel_vae, runtime_for

    result = {"degree": degree}
    runtime = None
    if degree == 1:
        clip_models, clip_vae = models, fast_vae(vae)
    else:
        runtime = runtime_for(degree, cuda=cuda)
        started = time.perf_counter()
        runtime.ensure()
        result["group_start_s"] = time.perf_counter() - started
        clip_models = tuple(parallel_model(m, runtime) if m is not None else None for m in models)
        clip_vae = parallel_vae(vae, runtime, args.vae_halo)
    first = time.perf_counter()
    one_clip(clip_models, clip_vae, width, height, args.frames)  # warm-up: weights to the workers, kernels, autotune
    result["first_clip_s"] = time.perf_counter() - first
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if runtime is not None:
        runtime.peak_memory()  # resets every rank's peak
    clips = [one_clip(clip_models, clip_vae, width, height, args.frames) for _ in range(args.clips)]
    result["peak_gib"] = (runtime.peak_memory() if runtime is not None
                          else [round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0])
    if runtime is not None:
        result["ranks"] = runtime.describe()
        runtime.stop()
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    for key in ("anchor_encode_s", "sampling_s", "decode_s", "clip_s"):
        result[key] = median([clip[key] for clip in clips])
    result["step_s"] = median([s for clip in clips for s in clip["steps_s"]])
    result["latent"], result["frames"] = clips[0]["latent"], clips[0]["frames"]
    return result


def print_table(results: list[dict]) -> None:
    base = results[0]
    print("| degree | s/step | sampling s | decode s | anchor encode s | clip s | speed-up | scaling efficiency | "
          "peak GiB per GPU | latent rel. L2 vs 1 GPU | frames rel. L2 vs 1 GPU |")
    print("|---|" + "---|" * 10)
    for r in results:
        speedup = base["clip_s"] / r["clip_s"]
        print(f"| {r['degree']} | {r['step_s']:.3f} | {r['sampling_s']:.3f} | {r['decode_s']:.3f} | {r['anchor_encode_s']:.3f} | "
              f"{r['clip_s']:.3f} | {speedup:.2f}x | {100 * speedup / (r['degree'] / base['degree']):.0f}% | "
              f"{' / '.join(map(str, r['peak_gib']))} | {relative_l2(r['latent'], base['latent']):.2e} | "
              f"{relative_l2(r['frames'], base['frames']):.2e} |")
    for r in results[1:]:
        print(f"degree {r['degree']}: group start {r['group_start_s']:.1f} s, first clip (weights sent) {r['first_clip_s']:.1f} s; "
              + "; ".join(r["ranks"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["wan21", "wan22"], default="wan21")
    parser.add_argument("--res", choices=list(RESOLUTIONS), default="480p")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--degrees", default="1,2,4,8", help="comma-separated; the first is the baseline (use 1)")
    parser.add_argument("--clips", type=int, default=2, help="timed clips per degree, after one warm-up clip")
    parser.add_argument("--vae-halo", type=int, default=12, help="latent rows of halo per VAE band")
    parser.add_argument("--weight-dtype", default="default", choices=WEIGHT_DTYPES)
    parser.add_argument("--tiny", action="store_true", help="tiny 4-head models, 64x48, gloo on the CPU: a smoke run")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    os.environ.update(NVLINK_MULTICAST_OFF)

    from svi_infinity.demo.comfy_runtime import find_comfyui, import_comfy

    cuda = torch.cuda.is_available() and not args.tiny
    with tempfile.TemporaryDirectory(prefix="svi-parallel-bench-") as base:
        import_comfy(find_comfyui(), Path(base), cpu=not cuda)
        return run(args, cuda)


def run(args, cuda: bool) -> int:
    width, height = RESOLUTIONS["tiny" if args.tiny else args.res]
    sizes, heads = (WAN_TINY, TINY_HEADS) if args.tiny else (WAN_14B, None)
    device = torch.device("cuda" if cuda else "cpu")
    image_branch = args.model == "wan21"
    models = (load_wan(image_branch, sizes, device, 1, args.weight_dtype, heads=heads),
              None if image_branch else load_wan(False, sizes, device, 2, args.weight_dtype, heads=heads))
    vae = load_vae(args.tiny, 3)
    degrees = [int(d) for d in args.degrees.split(",")]
    results = []
    for degree in degrees:
        results.append(run_degree(degree, models, vae, args, width, height, cuda))
        print(f"degree {degree}: clip {results[-1]['clip_s']:.2f} s, step {results[-1]['step_s']:.3f} s", flush=True)
    print(f"\n{args.model} {width}x{height}, {args.frames} frames, 4 steps, CFG 1, random weights, "
          f"{'gloo on the CPU (tiny)' if args.tiny else torch.cuda.get_device_name()}\n")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k not in ("latent", "frames")} for r in results],
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
