"""End-to-end SVI long-video speed and memory at real model size: ComfyUI's own path vs the pack's kernels.

Runs the pack's real pipeline (anchor encode, SVI conditioning, few-step sampling through ComfyUI's
samplers, VAE decode) clip after clip on random weights at the real shapes (speed does not depend
on the values; never zeros), loading them through ComfyUI's own state-dict loader, and prints a
table: seconds per step and per clip, time to the first clip, decode and encode times, peak GPU
memory per clip, for each path side by side, plus their ratios. Each path's first clip starts from
unloaded models (so it moves the weights itself); after that the paths take turns clip by clip, so
both run in the same thermal and power state of the card.

  python bench/e2e_bench.py --model wan21 --res 480p --clips 3 --paths comfy,pack     (pack8: with 8-bit attention;
                                                    pack_fp8 / pack8_fp8: with fp8 GEMMs too;
                                                    pack_bg: the kernels compiled in the background, the node's default;
                                                    comfy_sage: ComfyUI with the importable sageattention)
  python bench/e2e_bench.py --tiny ...   (a CPU-sized smoke run of the same code)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from random_models import WAN_14B, WAN_TINY, WEIGHT_DTYPES, load_vae, load_wan  # noqa: E402

from svi_infinity.kernels.model_patch import BF16, EIGHT_BIT, FP8_GEMMS  # noqa: E402

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720), "tiny": (64, 64)}
TEXT_TOKENS = 512  # umt5-xxl prompts are padded to 512 tokens for Wan


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class VisionOutput:
    def __init__(self, states):
        self.penultimate_hidden_states = states


class GpuMonitor:
    """SM clock (MHz) and board power (W) sampled through NVML every 50 ms while a path runs: where a card at its power
    cap slows one path's kernels, the clocks say so. Entered once per clip: the samples of all entries add up.
    Inactive (empty summary) without NVML or CUDA."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s, self.samples, self._stop, self._thread = interval_s, [], threading.Event(), None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # no NVML bindings, no driver, no GPU: the benchmark runs without clock readings
            self._nvml = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            clock = self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM)
            self.samples.append((time.perf_counter(), clock, self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000))

    def __enter__(self):
        self._stop.clear()
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, since: float | None = None) -> dict:
        """Medians over the samples taken after `since` (a time.perf_counter() value), or over all."""
        samples = [(c, w) for t, c, w in self.samples if since is None or t >= since]
        if not samples:
            return {}
        return {"sm_clock_mhz_median": statistics.median(c for c, _ in samples),
                "power_w_median": statistics.median(w for _, w in samples)}


def clip_loop(path: str, models, vae, args, width: int, height: int, result: dict, kernels_ready=None):
    """The SVI 2.0 Pro loop on the pack's pipeline functions, one clip per `next()`; timings and peaks go into
    `result`. `kernels_ready`: a background compile's gate, which the fast VAE gets as the kernel node hands it on."""
    from svi_infinity.pipeline.clips import build_clip_inputs, condition, decode_clip, encode_anchor, sample_clip
    from svi_infinity.pipeline.fast_vae import fast_vae
    from svi_infinity.svi.conditioning import SVIMode, last_latent_frames
    from svi_infinity.svi.plan import clip_seed, schedule_sigmas

    model, model_low = models
    if not path.startswith("comfy"):  # the VAE as the kernel node hands it on: its encode (the anchor) runs the fast path too
        vae = fast_vae(vae, kernels_ready)
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, height, width, 3, generator=generator)
    text = [[torch.randn(1, TEXT_TOKENS, 4096, generator=generator), {"pooled_output": None}]]
    vision = VisionOutput(torch.randn(1, 257, 1280, generator=generator)) if model_low is None else None
    sigmas = schedule_sigmas("lightning 4-step (lightx2v / Wan2.2-Lightning)")
    result.update(path=path, clips=[])
    started = time.perf_counter()
    synchronize()
    encode_started = time.perf_counter()
    anchor, _ = encode_anchor(vae, reference, width, height)
    synchronize()
    result["anchor_encode_s"] = time.perf_counter() - encode_started
    motion = None
    for index in range(args.clips):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        step_times = []
        last = [time.perf_counter()]

        def on_step(done, total, x0):
            synchronize()
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        clip_started = time.perf_counter()
        inputs = build_clip_inputs(vae, SVIMode.PRO_LATENT, args.frames, anchor=anchor, motion=motion)
        positive, negative = condition(text, inputs, vision), condition(text, inputs, vision)
        synchronize()
        last[0] = conditioned = time.perf_counter()
        samples = sample_clip(model, model_low, positive, negative, inputs.empty_latent, seed=clip_seed(1, index),
                              sigmas=sigmas, boundary=0.9, cfg=1.0, step_callback=on_step)
        synchronize()
        sampled = time.perf_counter()
        frames = decode_clip(vae, samples, fast=not path.startswith("comfy"))
        synchronize()
        decoded = time.perf_counter()
        motion = last_latent_frames(samples, 1)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        result["clips"].append({"steps_s": step_times, "condition_s": conditioned - clip_started,
                                "sample_s": sampled - conditioned, "decode_s": decoded - sampled,
                                "clip_s": decoded - clip_started, "peak_gib": peak, "frames": int(frames.shape[0])})
        if index == 0:
            result["first_clip_s"] = decoded - started
            result["first_latent"], result["first_frames"] = samples.float().cpu(), frames.float()
        result["last_latent"] = samples.float().cpu()
        del frames
        yield


KERNEL_CLASSES = (
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa", "cudnn_generated", "sm90_flash")),
    ("linear (GEMM)", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "matmul", "sm90_", "sm80_")),
    ("norms + RoPE", ("norm", "rope", "kitchen")),
)


def kernel_class(name: str) -> str:
    lowered = name.lower()
    for label, needles in KERNEL_CLASSES:
        if any(needle in lowered for needle in needles):
            return label
    return "rest (elementwise, copies, conv)"


def forward_flops(sizes: dict, tokens: int, text_tokens: int, image_tokens: int) -> dict[str, float]:
    """Matmul FLOPs of one DiT forward by class: linear layers (2 per MAC) and attention (4 L Lk d per block).

    Per token and block: self-attention q, k, v, o and cross-attention q, o (6 dim^2 MACs), the FFN (2 dim ffn);
    cross-attention k and v run on the text and image tokens only."""
    dim, ffn, layers = sizes["dim"], sizes["ffn_dim"], sizes["layers"]
    linear_macs = tokens * (6 * dim * dim + 2 * dim * ffn) + text_tokens * 2 * dim * dim + image_tokens * 2 * dim * dim
    attention = 4 * tokens * tokens * dim + 4 * tokens * (text_tokens + image_tokens) * dim
    return {"linear (GEMM)": layers * 2 * linear_macs, "attention": layers * attention}


def elementwise_bytes(sizes: dict, tokens: int, element_bytes: int = 2) -> dict[str, float]:
    """Bytes one forward's norms and elementwise work must move short of fusing them into the GEMMs: each step reads
    its inputs once and writes its outputs once, in units of one token-stream pass (tokens x dim).

    'norms + RoPE' per block: norm1 with its modulation (read x, write 1), q and k RMSNorm+RoPE (2 x 2), the first
    residual update with norm3 (read x and y, write x and the normed 4), the cross-attention q RMSNorm (2), the second
    residual update with norm2 and its modulation (4): 16 passes. 'rest': the last residual update (3); the FFN's
    GELU can ride in its GEMM's epilogue (0). The floor of a class is its bytes over the measured copy bandwidth."""
    stream = tokens * sizes["dim"] * element_bytes
    return {"norms + RoPE": sizes["layers"] * 16 * stream, "rest (elementwise, copies, conv)": sizes["layers"] * 3 * stream}


def measured_ceilings() -> dict[str, float]:
    """The two ceilings of this GPU, measured now: a bf16 8192^3 matmul (TFLOP/s) and a device copy (GB/s, read + write)."""
    generator = torch.Generator(device="cuda").manual_seed(9)
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16, generator=generator) for _ in range(2))
    source = torch.randn(2**30 // 2, device="cuda", dtype=torch.float16, generator=generator)
    target = torch.empty_like(source)

    def median_ms(fn, repeats: int = 10) -> float:
        times = []
        for _ in range(3):
            fn()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    matmul_ms = median_ms(lambda: a @ b)
    copy_ms = median_ms(lambda: target.copy_(source))
    return {"gemm_tflops": 2 * 8192**3 / matmul_ms / 1e9, "copy_gbps": 2 * source.numel() * 2 / copy_ms / 1e6}


def profile_one_step(model, model_low, vae, width: int, height: int, frames: int, image_branch: bool) -> dict[str, float]:
    """CUDA time per kernel class over one sampling step (a forward at sigma 1)."""
    from torch.profiler import ProfilerActivity, profile

    from svi_infinity.pipeline.clips import build_clip_inputs, condition, encode_anchor, sample_clip
    from svi_infinity.svi.conditioning import SVIMode

    generator = torch.Generator().manual_seed(5)
    anchor, _ = encode_anchor(vae, torch.rand(1, height, width, 3, generator=generator), width, height)
    inputs = build_clip_inputs(vae, SVIMode.PRO_LATENT, frames, anchor=anchor)
    text = [[torch.randn(1, TEXT_TOKENS, 4096, generator=generator), {"pooled_output": None}]]
    vision = VisionOutput(torch.randn(1, 257, 1280, generator=generator)) if image_branch else None
    positive = condition(text, inputs, vision)
    one_step = torch.tensor([1.0, 0.9375])
    sample_clip(model, model_low, positive, positive, inputs.empty_latent, seed=0, sigmas=one_step, boundary=0.0, cfg=1.0)
    synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        sample_clip(model, model_low, positive, positive, inputs.empty_latent, seed=0, sigmas=one_step, boundary=0.0, cfg=1.0)
        synchronize()
    totals: dict[str, float] = {}
    kernels: dict[str, list[tuple[float, str]]] = {}
    for event in profiler.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if device_us:
            label = kernel_class(event.key)
            totals[label] = totals.get(label, 0.0) + device_us / 1e6
            kernels.setdefault(label, []).append((device_us / 1e6, event.key))
    for label, entries in kernels.items():  # what each class is made of, so the classification can be checked
        top = ", ".join(f"{seconds * 1e3:.0f} ms {name[:70]}" for seconds, name in sorted(entries, reverse=True)[:4])
        print(f"  {label}: {top}")
    return totals


def accelerated(model_patcher, **options):
    """The pack's kernel node applied to a clone (attention routing, norm kernels, fused blocks), with its report."""
    from svi_infinity.kernels.model_patch import accelerate_model

    patched, report = accelerate_model(model_patcher, **options)
    print("\n".join(report.lines()))
    return patched, report


def background_precompile(model_patcher, report, width: int, height: int, frames: int, vae):
    """What SVI Fast Kernels does by default: its clip's kernels (and the fast VAE's) compile in the background while
    the model samples on ComfyUI's ops; returns the gate the fast VAE waits on. Prints when the kernels are in (the
    log says when each group's gate opens)."""
    from svi_infinity.kernels.model_patch import VAE_KERNELS, precompile_in_background
    from svi_infinity.pipeline.fast_vae import fused_norm_problem

    started = time.perf_counter()
    compile_job = precompile_in_background(model_patcher, width, height, frames, report=report,
                                           vae_dtype=None if fused_norm_problem(vae) else vae.vae_dtype)

    def announce():
        compile_job.finished.wait()
        print(f"pack_bg: background compile of {compile_job.total} kernels finished after "
              f"{time.perf_counter() - started:.1f} s{' (' + compile_job.error + ')' if compile_job.error else ''}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    return report.gates[VAE_KERNELS]


def with_sage_attention(model_patcher):
    """ComfyUI with SageAttention: what --use-sage-attention selects, set on a clone (whichever `sageattention` is
    importable: 1.0.6 from PyPI, or 2.x built from source; its version is printed)."""
    import comfy.ldm.modules.attention as attention
    from importlib.metadata import version

    if not hasattr(attention, "sageattn"):
        raise RuntimeError("sageattention is not importable here: the comfy_sage path needs it on the path")
    print(f"comfy_sage: ComfyUI's attention_sage with sageattention {version('sageattention')}", flush=True)
    clone = model_patcher.clone()
    clone.set_model_optimized_attention(attention.attention_sage)
    return clone


def summarise(result: dict) -> dict:
    clips = result["clips"]
    steps = [s for clip in clips for s in clip["steps_s"][1:]] or [s for clip in clips for s in clip["steps_s"]]
    return {
        "step_s": statistics.median(steps),
        "clip_s": statistics.median(c["clip_s"] for c in clips[1:] or clips),
        "sample_s": statistics.median(c["sample_s"] for c in clips[1:] or clips),
        "decode_s": statistics.median(c["decode_s"] for c in clips[1:] or clips),
        "condition_s": statistics.median(c["condition_s"] for c in clips[1:] or clips),
        "first_clip_s": result["first_clip_s"],
        "three_clips_s": sum(c["clip_s"] for c in clips[:3]) + result["anchor_encode_s"],
        "all_clips_s": sum(c["clip_s"] for c in clips) + result["anchor_encode_s"],
        "anchor_encode_s": result["anchor_encode_s"],
        "peak_gib": [round(c["peak_gib"], 2) for c in clips],
        **result.get("gpu", {}),
    }


def print_side_by_side(summaries: dict[str, dict], rows) -> None:
    """The paths' numbers as one markdown table, with the first path over the second as a ratio when there are two."""
    names = list(summaries)
    pair = len(names) == 2
    print("| metric (s) | " + " | ".join(names) + (f" | {names[0]} / {names[1]} |" if pair else " |"))
    print("|---|" + "---|" * (len(names) + pair))
    for row in rows:
        values = [summaries[name][row] for name in names]
        ratio = f" | {values[0] / values[1]:.2f}x" if pair and values[1] else ""
        print(f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + ratio + " |")
    print("| peak GiB per clip | " + " | ".join(str(summaries[name]["peak_gib"]) for name in names) + (" | |" if pair else " |"))
    for key in ("sm_clock_mhz_median", "power_w_median"):
        if all(key in summaries[name] for name in names):
            print(f"| {key} (NVML, over the path's clips) | " + " | ".join(f"{summaries[name][key]:.0f}" for name in names)
                  + (" | |" if pair else " |"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["wan21", "wan22"], default="wan21")
    parser.add_argument("--res", choices=list(RESOLUTIONS), default="480p")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--paths", default="comfy,pack")
    parser.add_argument("--weight-dtype", default="default", choices=WEIGHT_DTYPES)
    parser.add_argument("--fresh-cache", action="store_true",
                        help="an empty TileLang kernel cache, as on a fresh install (the first path compiles everything)")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and size: a CPU smoke run of this script")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    parser.add_argument("--profile", action="store_true", help="also break one step down by kernel class (CUDA only)")
    parser.add_argument("--ablate", action="store_true", help="with --profile: also profile the pack without its fused blocks")
    args = parser.parse_args()
    if args.fresh_cache:  # before anything imports TileLang, which reads it once
        os.environ["TILELANG_CACHE_DIR"] = tempfile.mkdtemp(prefix="tilelang_fresh_")

    from svi_infinity.demo.comfy_runtime import find_comfyui, import_comfy

    import_comfy(find_comfyui(), Path(tempfile.mkdtemp()), cpu=not torch.cuda.is_available())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = WAN_TINY if args.tiny else WAN_14B
    width, height = RESOLUTIONS["tiny" if args.tiny else args.res]
    loaded = time.perf_counter()
    if args.model == "wan22":
        models = (load_wan(False, sizes, device, 1, args.weight_dtype), load_wan(False, sizes, device, 2, args.weight_dtype))
    else:
        models = (load_wan(True, sizes, device, 1, args.weight_dtype), None)
    vae = load_vae(args.tiny, 3)
    if torch.cuda.is_available():
        print(f"GPU memory allocated after loading: {torch.cuda.memory_allocated() / 2**30:.1f} GiB")
    print(f"models built and loaded through ComfyUI in {time.perf_counter() - loaded:.1f} s "
          f"({args.model}, dim {sizes['dim']}, {sizes['layers']} layers, weights {args.weight_dtype}: "
          f"{models[0].model_dtype()} as ComfyUI stores them)", flush=True)

    ceilings = measured_ceilings() if torch.cuda.is_available() else {"gemm_tflops": 0.0, "copy_gbps": 0.0}
    print(f"measured ceilings: bf16 8192^3 matmul {ceilings['gemm_tflops']:.0f} TFLOP/s, device copy {ceilings['copy_gbps']:.0f} GB/s",
          flush=True)
    import comfy.model_management

    paths = args.paths.split(",")
    results, loops, monitors, path_models, reports, gates = {}, {}, {}, {}, [], {}
    for path in paths:
        comfy.model_management.unload_all_models()  # every path's first clip moves the weights to the GPU itself
        comfy.model_management.soft_empty_cache()
        if path == "comfy":
            path_models[path] = models
        elif path == "comfy_sage":
            path_models[path] = tuple(None if m is None else with_sage_attention(m) for m in models)
        else:
            precision = EIGHT_BIT if path.startswith("pack8") else BF16  # pack8: the kernel node's 8-bit attention switch
            gemms = FP8_GEMMS if path.endswith("_fp8") else BF16  # *_fp8: and its fp8 GEMM switch
            patched = [None if m is None else accelerated(m, attention_precision=precision, gemm_precision=gemms) for m in models]
            path_models[path] = tuple(None if p is None else p[0] for p in patched)
            reports += [p[1] for p in patched if p is not None]
            if path == "pack_bg" and patched[0][1].active:  # the kernel node's default precompile: in the background, its clip's kernels and the VAE's
                gates[path] = background_precompile(models[0], patched[0][1], width, height, args.frames, vae)
        results[path], monitors[path] = {}, GpuMonitor()
        loops[path] = clip_loop(path, path_models[path], vae, args, width, height, results[path], gates.get(path))
        with monitors[path]:
            next(loops[path])
    for _ in range(1, args.clips):  # the paths take turns (the pack's clones share the weights with ComfyUI's model)
        for path in paths:
            pack_calls = sum(sum(report.ran.values()) for report in reports)
            with monitors[path]:
                next(loops[path])
            if path.startswith("comfy") and sum(sum(report.ran.values()) for report in reports) != pack_calls:
                raise RuntimeError("ComfyUI's path ran the pack's kernels: an object patch outlived its clone")
    for path in paths:
        results[path]["gpu"] = monitors[path].summary()
        print(f"{path}: {json.dumps(summarise(results[path]))}", flush=True)
    for path in paths:
        if args.profile and torch.cuda.is_available() and ceilings["gemm_tflops"]:
            breakdown = profile_one_step(path_models[path][0], None, vae, width, height, args.frames, args.model == "wan21")
            tokens = ((args.frames - 1) // 4 + 1) * (height // 16) * (width // 16)
            flops = forward_flops(sizes, tokens, TEXT_TOKENS, 257 if args.model == "wan21" else 0)
            moved = elementwise_bytes(sizes, tokens)
            floors = {**{k: v / (ceilings["gemm_tflops"] * 1e12) for k, v in flops.items()},
                      **{k: v / (ceilings["copy_gbps"] * 1e9) for k, v in moved.items()}}
            total = sum(breakdown.values())
            print(f"\n{path}: one step, CUDA time by kernel class (tokens {tokens}; matmul {sum(flops.values()) / 1e12:.0f} TFLOP, "
                  f"floor {sum(flops.values()) / (ceilings['gemm_tflops'] * 1e12):.2f} s at the measured {ceilings['gemm_tflops']:.0f} "
                  f"TFLOP/s; elementwise at {ceilings['copy_gbps']:.0f} GB/s)")
            print("| class | measured | share | floor | measured / floor | rate |")
            print("|---|---|---|---|---|---|")
            for label, seconds in sorted(breakdown.items(), key=lambda kv: -kv[1]):
                floor = floors.get(label)
                rate = (f"{flops[label] / seconds / 1e12:.0f} TFLOP/s" if label in flops else
                        f"{moved[label] / seconds / 1e9:.0f} GB/s" if label in moved else "")
                print(f"| {label} | {seconds:.3f} s | {100 * seconds / total:.1f}% | "
                      + (f"{floor:.3f} s | {seconds / floor:.2f}x" if floor else "| ") + f" | {rate} |")
            print(f"| all | {total:.3f} s | | {sum(floors.values()):.3f} s | {total / sum(floors.values()):.2f}x | |")
            results[path]["profile"] = breakdown
            if path != "comfy" and args.ablate:
                print(f"\n{path} without the fused blocks (attention + q/k norm kernels only): one step by kernel class")
                plain_blocks, _ = accelerated(models[0], fused_blocks=False)
                for label, seconds in sorted(profile_one_step(plain_blocks, None, vae, width, height, args.frames,
                                                              args.model == "wan21").items(), key=lambda kv: -kv[1]):
                    print(f"| {label} | {seconds:.3f} s | pack: {breakdown.get(label, 0.0):.3f} s |")

    names = list(results)
    rows = ["step_s", "sample_s", "decode_s", "condition_s", "clip_s", "first_clip_s", "three_clips_s", "all_clips_s",
            "anchor_encode_s"]
    print(f"\n{args.model} {'tiny' if args.tiny else args.res} {args.frames} frames, {args.clips} clips, 4 steps, cfg 1, "
          f"weights {args.weight_dtype}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    summaries = {name: summarise(results[name]) for name in names}
    print_side_by_side(summaries, rows)
    for other in names[1:]:
        for key in ("first_latent", "first_frames", "last_latent"):
            a, b = results[names[0]][key], results[other][key]
            rel = ((a - b).norm() / a.norm()).item()
            print(f"{key.replace('_', ' ')}: relative L2 {other} vs {names[0]} {rel:.2e}, max abs diff {(a - b).abs().max().item():.3e}")
    if args.json:
        args.json.write_text(json.dumps({"ceilings": ceilings, **{n: {**summaries[n], "clips": results[n]["clips"],
                                                                          "profile": results[n].get("profile")} for n in names}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        sys.exit(main())
