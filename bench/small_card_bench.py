"""Wan 2.2 A14B SVI long video on 24 GB and 16 GB cards, emulated on the H200, with the fp8_scaled and GGUF Q8_0 files.

ComfyUI's real server (main.py, with its dynamic VRAM) may use only `--card-gib` of the card, and runs the shipped template (example_workflows/api/svi_wan22_turbo_long_12clips_<format>)
as queued over HTTP: the experts are real-size files with random weights, written in the format users download
(fp8_scaled safetensors as Comfy-Org ships them, or GGUF Q8_0 as QuantStack's files are, read by ComfyUI-GGUF's
UnetLoaderGGUF), and so are the Wan 2.1 VAE and the SVI and lightx2v LoRAs; only the text encoder is a stand-in (umt5-xxl
has no tiny version; it gives 512 tokens like umt5). The low-noise expert is the same file under its own name, so
ComfyUI loads it as a second model, as it does two files. Timings come from SVI Long Video's clip messages, read as
the queuing client over its websocket; memory is the whole card's use read through NVML (every process, ComfyUI's own
allocator and dynamic VRAM included), peak per clip. The speed is the H200's, not a consumer card's; what the run
shows is whether a card of that size gets through clip after clip, and at what peak.

Two ways to limit the card (`--limit`):
  ballast  this process holds all but `--card-gib` of the card's free memory in one allocation while the server runs,
           so nothing in the server (ComfyUI's allocator, dynamic VRAM, cuDNN's workspace trials) can use more: a
           physical limit like a consumer card's; the server's own use is the card's use minus what this process holds
  reserve  ComfyUI's `--reserve-vram <total - card>`: ComfyUI plans for that size, but nothing stops an allocation past it

  python bench/small_card_bench.py --format fp8_scaled --card-gib 24 16 --clips 6 --json out.json --log-dir logs/
  python bench/small_card_bench.py --tiny --format gguf_q8_0 ...   (a CPU-sized smoke run of the same code)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
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
from random_models import WAN_14B, random_tensor, wan_template, write_random_lora  # noqa: E402

TEMPLATES = {"fp8_scaled": "svi_wan22_turbo_long_12clips_fp8_scaled", "gguf_q8_0": "svi_wan22_turbo_long_12clips_gguf_q8_0"}
WAN_GGUF_TINY = {"dim": 256, "layers": 2, "ffn_dim": 512}  # GGUF blocks span 32 values of a row; 256 keeps every width whole
Q8_0_BLOCK = 32
TEXT_TOKENS = 512
CLIENT = "svi-small-card-bench"


def expert_tensors(sizes: dict, device, seed: int):
    """(name, tensor on `device`) of a Wan 2.2 I2V expert with random weights, one tensor at a time."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, template in wan_template(False, sizes).state_dict().items():
        yield name, random_tensor(name, template.shape, torch.float32, generator)


def write_fp8_scaled(path: Path, sizes: dict, device, seed: int) -> None:
    """ComfyUI's fp8_scaled layout (demo/quantized_models.py), quantised on `device` one tensor at a time."""
    from safetensors.torch import save_file
    from svi_infinity.demo.quantized_models import _is_block_linear
    from svi_infinity.demo.tiny_models import RANDOM_WEIGHTS_NOTE

    fp8 = torch.float8_e4m3fn
    out = {"scaled_fp8": torch.tensor([], dtype=fp8)}
    for name, tensor in expert_tensors(sizes, device, seed):
        if _is_block_linear(name, tensor.shape):
            scale = tensor.abs().amax() / torch.finfo(fp8).max
            out[name] = (tensor / scale).to(fp8).cpu()
            out[f"{name[:-len('.weight')]}.scale_weight"] = scale.reshape(()).cpu()
        else:
            out[name] = tensor.to(torch.float32 if name == "patch_embedding.weight" else torch.float16).cpu()
    save_file(out, str(path), metadata={"svi_infinity": RANDOM_WEIGHTS_NOTE})


def q8_0_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """GGML's Q8_0 blocks of a [rows, cols] tensor as uint8 [rows, cols / 32 * 34], on the tensor's device: per 32
    values the scale d = amax / 127 as fp16, then round(x / d) as int8 (halves away from zero), byte for byte what
    gguf.quants.quantize writes (tests/bench/test_small_card_bench.py checks it)."""
    blocks = tensor.float().reshape(-1, Q8_0_BLOCK)
    scale = blocks.abs().amax(1, keepdim=True) / 127
    scaled = blocks * torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)
    values = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).to(torch.int8)
    packed = torch.cat([scale.to(torch.float16).view(torch.uint8), values.view(torch.uint8)], dim=1)
    return packed.reshape(tensor.shape[0], -1)


def write_gguf_q8_0(path: Path, sizes: dict, device, seed: int) -> None:
    """A GGUF file as QuantStack's Wan 2.2 Q8_0 experts are laid out (demo/quantized_models.py's rules), blocks
    quantised on `device`."""
    import gguf
    from svi_infinity.demo.quantized_models import gguf_tensor_type
    from svi_infinity.demo.tiny_models import RANDOM_WEIGHTS_NOTE

    writer = gguf.GGUFWriter(path=None, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_string("svi_infinity", RANDOM_WEIGHTS_NOTE)
    for name, tensor in expert_tensors(sizes, device, seed):
        qtype = gguf_tensor_type(name, tuple(tensor.shape), "Q8_0")
        if qtype == gguf.GGMLQuantizationType.Q8_0:
            data = q8_0_bytes(tensor.reshape(-1, tensor.shape[-1])).reshape(*tensor.shape[:-1], -1).cpu().numpy()
        else:
            data = tensor.to(torch.float16 if qtype == gguf.GGMLQuantizationType.F16 else torch.float32).cpu().numpy()
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model_files(base: Path, prompt: dict, fmt: str, sizes: dict, device) -> None:
    """Every file the template names, where ComfyUI looks for it: experts, VAE, LoRAs, the reference image."""
    from svi_infinity.demo.tiny_models import wan21_vae_state_dict, write_reference_image, _save

    models = base / "models"
    for folder in ("diffusion_models", "vae", "loras"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    loaders = [node["inputs"]["unet_name"] for node in prompt.values() if node["class_type"] in ("UNETLoader", "UnetLoaderGGUF")]
    first = models / "diffusion_models" / loaders[0]
    started = time.perf_counter()
    (write_fp8_scaled if fmt == "fp8_scaled" else write_gguf_q8_0)(first, sizes, device, seed=1)
    for other in loaders[1:]:  # the other expert: the same bytes under its own name, loaded as a model of its own
        (models / "diffusion_models" / other).symlink_to(first)
    print(f"wrote {first.name} ({first.stat().st_size / 2**30:.1f} GiB) in {time.perf_counter() - started:.0f} s", flush=True)
    vae = next(node["inputs"]["vae_name"] for node in prompt.values() if node["class_type"] == "VAELoader")
    _save(models / "vae" / vae, wan21_vae_state_dict(dim=8 if sizes["dim"] < 1024 else 96, seed=3))
    for node in prompt.values():
        if node["class_type"] == "SVILoraStack":
            for role, rank, lora_format in (("svi_lora", 128, "peft"), ("speed_lora", 64, "kohya")):
                name = node["inputs"][role]
                if name != "None" and not (models / "loras" / name).exists():
                    write_random_lora(models / "loras" / name, False, sizes, rank=min(rank, sizes["dim"] // 4),
                                      seed=len(name), fmt=lora_format)
    write_reference_image(base / "input" / "svi_reference.png", width=1024, height=576)


def bench_prompt(template: str, *, clips: int, width: int, height: int, frames: int, prefix: str) -> dict:
    """The shipped template as users queue it; only the text encoder is the stand-in (512 tokens like umt5-xxl)."""
    from svi_infinity.demo.workflows import load_api_workflow

    prompt = load_api_workflow(template)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = "SVIStandInTextEncoderLoader"
            node["inputs"] = {"clip_name": inputs["clip_name"], "type": inputs["type"], "tokens": TEXT_TOKENS}
        elif node["class_type"] == "LoadImage":
            inputs["image"] = "svi_reference.png"
        elif node["class_type"] == "SVILongVideo":
            inputs.update(num_clips=clips, width=width, height=height, length=frames, filename_prefix=prefix, resume=False)
    return prompt


class CardMemory:
    """The card's used memory (NVML: every process, ComfyUI's allocator and dynamic VRAM alike) sampled every 20 ms;
    a no-op without NVML or CUDA."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._read = lambda handle=pynvml.nvmlDeviceGetHandleByIndex(0): pynvml.nvmlDeviceGetMemoryInfo(handle).used
        except Exception:  # no NVML (the CPU smoke run)
            self._read = None
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._read()))
            time.sleep(0.02)

    def __enter__(self):
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    def used(self) -> int:
        """The card's used bytes now (0 without NVML)."""
        return self._read() if self._read is not None else 0

    def peak_gib(self, start: float, end: float, less: int = 0) -> float:
        """The highest use between `start` and `end`, less `less` bytes (what another process holds)."""
        inside = [used for moment, used in self.samples if start <= moment <= end]
        return round((max(inside) - less) / 2**30, 2) if inside else math.nan


class Ballast:
    """All but `card_gib` of the card's free memory, held by this process in one allocation: the server it starts next
    finds a card of that size (a no-op off CUDA). `held` is this process's whole use, its CUDA context included."""

    def __init__(self, card_gib: float, memory: CardMemory):
        self.card_gib, self.memory, self.held, self._block = card_gib, memory, 0, None

    def __enter__(self):
        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            spare = free - int(self.card_gib * 2**30)
            if spare <= 0:
                raise RuntimeError(f"the card has only {free / 2**30:.1f} GiB free, less than the {self.card_gib:g} GiB asked for")
            self._block = torch.empty(spare, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
            self.held = self.memory.used()  # before the server starts: this process's context and the ballast
        return self

    def __exit__(self, *exc):
        self._block = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_card(args, base: Path, prompt: dict, card_gib: float, total_gib: float) -> dict:
    """One fresh server that may use `card_gib` of the card; the template queued once; per-clip seconds and peaks (of the
    server alone under the ballast, of the whole card under --reserve-vram)."""
    from svi_infinity.demo.comfy_runtime import ComfyUIServer, WebsocketClient, find_comfyui, find_comfyui_gguf
    from svi_infinity.pipeline.long_video import CLIP_EVENT

    packs = [ROOT, ROOT / "demo" / "stand_ins"] + ([find_comfyui_gguf()] if find_comfyui_gguf() else [])
    reserve = ["--reserve-vram", f"{total_gib - card_gib:.2f}"] if args.limit == "reserve" and not args.tiny else []
    memory = CardMemory()
    ballast = Ballast(card_gib, memory) if args.limit == "ballast" and not args.tiny else contextlib.nullcontext()
    with ballast:
        held = getattr(ballast, "held", 0)
        server = ComfyUIServer(find_comfyui(), base, packs, cpu=args.tiny, extra_args=tuple(reserve))
        try:
            server.wait_ready(timeout_s=300)
            listener = WebsocketClient(server, CLIENT)
            with memory:
                queued = time.perf_counter()
                status, answer = server.queue_prompt(prompt, client_id=CLIENT)
                if status != 200:
                    raise RuntimeError(f"the server refused the prompt: {answer}")
                entry = server.wait_for_history(answer["prompt_id"], timeout_s=args.timeout)
                finished = time.perf_counter()
                time.sleep(0.5)
            messages = list(zip(listener.arrived, listener.messages))
            listener.close()
        finally:
            server.stop()
            if args.log_dir:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log_path, args.log_dir / f"server_{args.format}_{card_gib:g}gib.log")
    log = server.log_path.read_text(errors="replace")
    events = [(moment, m["data"]) for moment, m in messages if m["type"] == CLIP_EVENT]
    starts = {e["clip"]: t for t, e in events if e["status"] == "running" and e.get("step") == 0}
    decoded = {e["clip"]: t for t, e in events if e["status"] == "saving"}
    clips = []
    for clip in sorted(starts):
        end = decoded.get(clip, finished)
        clips.append({"clip": clip, "seconds": round(end - starts[clip], 2), "peak_gib": memory.peak_gib(starts[clip], end, held)})
    return {"card_gib": card_gib, "limit": args.limit, "held_by_bench_gib": round(held / 2**30, 2),
            "status": entry["status"]["status_str"], "clips": clips,
            "queued_to_done_s": round(finished - queued, 1), "first_clip_start_s": round(min(starts.values(), default=finished) - queued, 1),
            "peak_gib_whole_run": memory.peak_gib(queued, finished, held),
            "dynamic_vram": "DynamicVRAM support detected and enabled" in log,
            "errors": [line for line in log.splitlines() if "Error" in line or "out of memory" in line][-5:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=list(TEMPLATES), required=True)
    parser.add_argument("--card-gib", type=float, nargs="+", default=[24.0, 16.0])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one card size may take")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke run of this script")
    parser.add_argument("--work", type=Path, help="where the model files go (default: a temporary folder)")
    parser.add_argument("--limit", choices=("ballast", "reserve"), default="ballast",
                        help="ballast: hold the rest of the card (a physical limit); reserve: ComfyUI's --reserve-vram")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log-dir", type=Path, help="where each server's log is copied")
    args = parser.parse_args()

    from svi_infinity.demo.comfy_runtime import find_comfyui, import_comfy

    work = args.work or Path(tempfile.mkdtemp(prefix="svi_small_card_"))
    import_comfy(find_comfyui(), work / "import_base", cpu=args.tiny)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    sizes = WAN_GGUF_TINY if args.tiny else WAN_14B
    width, height, frames = (32, 32, 9) if args.tiny else (832, 480, 81)
    total_gib = 0.0 if args.tiny else torch.cuda.get_device_properties(0).total_memory / 2**30
    models_base = work / "models_base"
    prompt = bench_prompt(TEMPLATES[args.format], clips=args.clips, width=width, height=height, frames=frames,
                          prefix=f"small_card/{args.format}")
    write_model_files(models_base, prompt, args.format, sizes, device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the weights were drawn there; the server process gets the card
    results = []
    for card in args.card_gib:
        base = work / f"server_{card:g}gib"
        base.mkdir(parents=True, exist_ok=True)
        for folder in ("models", "input"):
            if not (base / folder).exists():
                (base / folder).symlink_to(models_base / folder, target_is_directory=True)
        result = run_card(args, base, prompt, card, total_gib)
        results.append(result)
        print(json.dumps(result), flush=True)
        shutil.rmtree(base / "output", ignore_errors=True)
    print(f"\nWan 2.2 A14B {args.format}, {width}x{height}, {frames} frames, {args.clips} clips, card "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} limited by "
          + ("a ballast allocation (peaks: the server's own use)" if args.limit == "ballast" else "--reserve-vram (peaks: the whole card)"))
    print("| card | status | seconds per clip | peak GiB per clip (NVML) | peak GiB, whole run | queued to done (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['card_gib']:g} GB | {r['status']} | {', '.join(str(c['seconds']) for c in r['clips'])} | "
              f"{', '.join(str(c['peak_gib']) for c in r['clips'])} | {r['peak_gib_whole_run']} | {r['queued_to_done_s']} |")
    if args.json:
        args.json.write_text(json.dumps({"format": args.format, "clips": args.clips, "size": [width, height, frames],
                                         "device_total_gib": round(total_gib, 2), "results": results}, indent=2))
    return 0 if all(r["status"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
