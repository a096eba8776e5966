"""The shipped long-video workflow through ComfyUI's own executor at real model size: ComfyUI's path vs the pack's.

Runs example_workflows/api/svi_<model>_long_*.json, the graph users drag in, through ComfyUI's real executor (validation,
caching, progress hook, server messages) with only its loaders swapped: random-weight Wan and VAE built in memory at
the real sizes (bench/real_size_models, speed does not depend on the values), random real-size SVI and speed LoRA
files applied by the SVI LoRA Stack node through ComfyUI's patcher, stand-in text and CLIP-vision encoders with the
real token counts (512 text tokens, 257 image tokens). "comfy" is that graph as shipped; "pack" is the same graph with
the SVI Fast Kernels node between the LoRA stacks and SVI Long Video (model and VAE). Each path is one queued
prompt of N clips, starting from unloaded models (it moves its weights to the GPU and patches in its LoRAs itself);
the loaders' outputs are ComfyUI's cache hits in the second prompt, as in a user's second run.

Timings come from the messages SVI Long Video sends per clip (read as a websocket client would, with the GPU
synchronised at each): clip start, each step, decoded ('saving'), on disk ('done'; written on a worker thread while
the next clip samples). Peak GPU memory is reset at each clip start.

  python bench/graph_bench.py --model wan21 --res 480p --clips 3 [--weight-dtype fp8_e4m3fn_fast] [--json out.json]
  python bench/graph_bench.py --tiny ...   (a CPU-sized smoke run of the same code)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from e2e_bench import RESOLUTIONS, TEXT_TOKENS, GpuMonitor, print_side_by_side, synchronize  # noqa: E402
from random_models import SIZES, WEIGHT_DTYPES, write_random_lora  # noqa: E402
from svi_infinity.demo import workflows as shipped_files  # noqa: E402

WORKFLOWS = {"wan21": "svi_wan21_long_12clips", "wan22": "svi_wan22_turbo_long_12clips"}
ROLE_OF_FILE = {"wan2.1_i2v": "wan21_i2v", "high_noise": "wan22_high", "low_noise": "wan22_low"}
LORAS = {  # file in the shipped workflow -> (image branch, rank, format) of its random stand-in (real-size shapes)
    shipped_files.SVI_LORA_WAN21: (True, 128, "peft"),
    shipped_files.SPEED_LORA_WAN21: (True, 64, "kohya"),
    shipped_files.SVI_LORA_WAN22_HIGH: (False, 128, "peft"),
    shipped_files.SVI_LORA_WAN22_LOW: (False, 128, "peft"),
    shipped_files.SPEED_LORA_WAN22_HIGH: (False, 64, "kohya"),
    shipped_files.SPEED_LORA_WAN22_LOW: (False, 64, "kohya"),
}
SETUP_NODES = {"SVIBenchRandomWanLoader", "SVIBenchRandomVAELoader", "SVIStandInTextEncoderLoader",
               "SVIStandInClipVisionLoader", "LoadImage", "SVILoraStack"}


def bench_prompt(prompt: dict, *, size: str, weight_dtype: str, width: int, height: int, frames: int, clips: int,
                 prefix: str) -> dict:
    """The shipped graph with random-weight loaders and stand-in encoders; every other node as users have it."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "UNETLoader":
            role = next(role for needle, role in ROLE_OF_FILE.items() if needle in inputs["unet_name"])
            node["class_type"] = "SVIBenchRandomWanLoader"
            node["inputs"] = {"role": role, "size": size, "weight_dtype": weight_dtype, "seed": list(ROLE_OF_FILE.values()).index(role) + 1}
        elif node["class_type"] == "VAELoader":
            node["class_type"] = "SVIBenchRandomVAELoader"
            node["inputs"] = {"size": "tiny" if size == "tiny" else "full", "seed": 3}
        elif node["class_type"] == "CLIPLoader":
            node["class_type"] = "SVIStandInTextEncoderLoader"
            node["inputs"] = {"clip_name": inputs["clip_name"], "type": inputs["type"], "tokens": TEXT_TOKENS}
        elif node["class_type"] == "CLIPVisionLoader":
            node["class_type"] = "SVIStandInClipVisionLoader"
        elif node["class_type"] == "SVILongVideo":
            inputs.update(num_clips=clips, width=width, height=height, length=frames, filename_prefix=prefix, resume=False)
    return prompt


def with_kernel_node(prompt: dict, *, width: int, height: int, frames: int) -> dict:
    """The same graph with SVI Fast Kernels on each model input of SVI Long Video (and the VAE through the first)."""
    prompt = copy.deepcopy(prompt)
    long_video = next(node for node in prompt.values() if node["class_type"] == "SVILongVideo")
    for index, key in enumerate(k for k in ("model", "model_low_noise") if k in long_video["inputs"]):
        node_id = f"kernels_{key}"
        inputs = {"model": long_video["inputs"][key], "attention": True, "attention_backend": "auto", "norms": True,
                  "precompile_width": width, "precompile_height": height, "precompile_length": frames}
        if index == 0:
            inputs["vae"] = long_video["inputs"]["vae"]
            long_video["inputs"]["vae"] = [node_id, 2]
        prompt[node_id] = {"class_type": "SVIKernelAccelerate", "inputs": inputs, "_meta": {"title": f"SVI Fast Kernels ({key})"}}
        long_video["inputs"][key] = [node_id, 0]
    return prompt


class ClipTimeline:
    """Listens to the server's messages like a websocket client: the time of every per-clip message and of every node
    start, with the GPU synchronised first, and the peak GPU memory of each clip."""

    def __init__(self, server, clip_event: str):
        self.server, self.clip_event = server, clip_event
        self.clips: dict[int, dict] = {}
        self.nodes: list[tuple[float, str]] = []
        self._send = server.send_sync
        server.send_sync = self._listen

    def _listen(self, event, data, sid=None):
        if event == self.clip_event or event == "executing":
            synchronize()
            now = time.perf_counter()
            if event == "executing" and data.get("node") is not None:
                self.nodes.append((now, data["node"]))
            elif event == self.clip_event:
                clip = self.clips.setdefault(data["clip"], {"steps": []})
                if data["status"] == "running" and not data.get("step"):
                    clip["start"] = now
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                elif data["status"] == "running":
                    clip["steps"].append(now)
                elif data["status"] == "saving":
                    clip["saving"] = now
                    clip["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
                elif data["status"] == "done" and "start" in clip:
                    clip["done"] = now
        return self._send(event, data, sid)

    def reset(self) -> None:
        self.clips, self.nodes = {}, []


def first_work(timeline: ClipTimeline, prompt: dict) -> float:
    """When the prompt's first node past the loaders started (a path's own time starts there)."""
    return min(t for t, node in timeline.nodes if prompt[node]["class_type"] not in SETUP_NODES)


def summarise(timeline: ClipTimeline, prompt: dict, ended: float) -> dict:
    clips = [timeline.clips[index] for index in sorted(timeline.clips)]
    rows = []
    for index, clip in enumerate(clips):
        times = [clip["start"], *clip["steps"]]
        next_start = clips[index + 1]["start"] if index + 1 < len(clips) else None
        rows.append({"steps_s": [b - a for a, b in zip(times, times[1:])], "condition_and_sample_s": clip["steps"][-1] - clip["start"],
                     "decode_s": clip["saving"] - clip["steps"][-1], "save_s": clip["done"] - clip["saving"],
                     "clip_s": (next_start or clip["saving"]) - clip["start"], "peak_gib": round(clip["peak_gib"], 2)})
    later = rows[1:-1] or rows[1:] or rows  # clips with a clip after them: their time includes the wait for the saver
    started = first_work(timeline, prompt)
    steps = [s for row in rows[1:] or rows for s in row["steps_s"][1:]]  # the first also holds the clip's conditioning
    return {
        "step_s": statistics.median(steps),
        "condition_and_sample_s": statistics.median(r["condition_and_sample_s"] for r in later),
        "decode_s": statistics.median(r["decode_s"] for r in later),
        "save_s (worker thread)": statistics.median(r["save_s"] for r in later),
        "clip_s": statistics.median(r["clip_s"] for r in later),
        "first_clip_on_disk_s": clips[0]["done"] - started,
        "before_first_clip_s": clips[0]["start"] - started,
        "after_last_clip_s": ended - clips[-1]["saving"],
        "video_s": ended - started,
        "peak_gib": [r["peak_gib"] for r in rows],
        "clips": rows,
    }


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(WORKFLOWS), default="wan21")
    parser.add_argument("--res", choices=[r for r in RESOLUTIONS if r != "tiny"], default="480p")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--paths", default="comfy,pack", help="the order the two prompts are queued in")
    parser.add_argument("--weight-dtype", default="default", choices=WEIGHT_DTYPES)
    parser.add_argument("--tiny", action="store_true", help="tiny widths and size: a CPU smoke run of this script")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    args = parser.parse_args()

    from safetensors.torch import load_file
    from svi_infinity.demo.comfy_runtime import InProcessComfyUI, find_comfyui
    from svi_infinity.demo.tiny_models import write_reference_image
    from svi_infinity.demo.workflows import REFERENCE_IMAGE, load_api_workflow
    from svi_infinity.pipeline.long_video import CLIP_EVENT

    runtime = InProcessComfyUI(find_comfyui(), Path(tempfile.mkdtemp()),
                               [ROOT, ROOT / "demo" / "stand_ins", ROOT / "bench" / "real_size_models"],
                               cpu=not torch.cuda.is_available())
    size = "tiny" if args.tiny else "14B"
    width, height = RESOLUTIONS["tiny" if args.tiny else args.res]
    shipped = load_api_workflow(WORKFLOWS[args.model])
    written = time.perf_counter()
    for node in shipped.values():
        for key in ("svi_lora", "speed_lora", "style_lora"):
            name = node["inputs"].get(key)
            if name in LORAS:
                image_branch, rank, fmt = LORAS[name]
                write_random_lora(runtime.models_dir / "loras" / name, image_branch, SIZES[size], rank=rank, seed=len(name), fmt=fmt)
    write_reference_image(runtime.base_dir / "input" / REFERENCE_IMAGE, width=width, height=height)
    print(f"random real-shape LoRA files and the reference written in {time.perf_counter() - written:.1f} s", flush=True)

    import comfy.model_management

    timeline = ClipTimeline(runtime.server, CLIP_EVENT)
    results, run_dirs = {}, {}
    for path in args.paths.split(","):
        prompt = bench_prompt(shipped, size=size, weight_dtype=args.weight_dtype, width=width, height=height,
                              frames=args.frames, clips=args.clips, prefix=f"bench/{path}")
        if path == "pack":
            prompt = with_kernel_node(prompt, width=0 if args.tiny else width, height=height, frames=args.frames)
        comfy.model_management.unload_all_models()  # as ComfyUI's "free model memory": each path moves its own weights
        comfy.model_management.soft_empty_cache()
        timeline.reset()
        monitor = GpuMonitor()
        started = time.perf_counter()
        with monitor:
            run = runtime.run_prompt(prompt, extra_data={"client_id": "svi-graph-bench"})  # node messages go to a client
        synchronize()
        ended = time.perf_counter()
        if not run.success:
            raise RuntimeError(f"{path}: the prompt failed: {run.error}")
        kernel_reports = [line for node in run.outputs.values() for line in node.get("text", []) if "precompiled" in line
                          or "attention" in line.lower()]
        if kernel_reports:
            print(f"{path}: SVI Fast Kernels said:\n  " + "\n  ".join(kernel_reports))
        results[path] = {**summarise(timeline, prompt, ended), **monitor.summary(since=first_work(timeline, prompt)),
                         "prompt_s": ended - started}
        run_dirs[path] = next((runtime.output_dir / "bench").glob(f"{path}_run_*"))
        print(f"{path}: {json.dumps({k: v for k, v in results[path].items() if k != 'clips'})}", flush=True)

    names = list(results)
    print(f"\n{args.model} {'tiny' if args.tiny else args.res} {args.frames} frames, {args.clips} clips, shipped workflow "
          f"{WORKFLOWS[args.model]} through ComfyUI's executor, weights {args.weight_dtype}, "
          f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    print_side_by_side(results, ("step_s", "condition_and_sample_s", "decode_s", "save_s (worker thread)", "clip_s",
                                 "before_first_clip_s", "first_clip_on_disk_s", "after_last_clip_s", "video_s"))
    if len(names) == 2:
        for index in (0, args.clips - 1):
            a, b = (load_file(str(run_dirs[name] / f"clip_{index:05d}.latent.safetensors"))["samples"] for name in names)
            print(f"clip {index + 1} latent: relative L2 {names[1]} vs {names[0]} {relative_l2(a, b):.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
