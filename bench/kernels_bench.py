"""Kernel benchmark on the GPU machine: attention and q/k norm variants side by side, interleaved rounds, as ratios.

Attention: SDPA's cuDNN, FLASH and EFFICIENT backends and the TileLang kernel at Wan shapes (ratios against
cuDNN; TFLOP/s with flops = 4 b h Lq Lk d). Norms: F.rms_norm, torch.compile, ComfyUI's own q path (its RMSNorm
module then apply_rope1, comfy-kitchen when installed) and the TileLang kernels, as a fraction of the measured
device copy bandwidth (bytes = read x + write y).

  python3 bench/kernels_bench.py [--rounds 5] [--skip-720p]
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.kernels.attention import attention_reference, flash_attention_kernel  # noqa: E402
from svi_infinity.kernels.rmsnorm import rms_norm_kernel, rms_norm_rope_kernel  # noqa: E402

ATTENTION_SHAPES = {  # name: (heads, Lq, Lk, head_dim)
    "14B 480p self": (40, 32760, 32760, 128),
    "14B 720p self": (40, 75600, 75600, 128),
    "1.3B 480p self": (12, 32760, 32760, 128),
    "5B 720p self": (24, 27280, 27280, 128),
    "14B cross text 512": (40, 32760, 512, 128),
    "14B cross image 257": (40, 32760, 257, 128),
}
NORM_SHAPES = {"14B 480p": (32760, 5120), "14B 720p": (75600, 5120), "1.3B 480p": (32760, 1536)}


def time_ms(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, heads):
        with sdpa_kernel([backend]):
            return attention_reference(q, k, v, heads)

    return run


def interleaved(variants: dict, rounds: int, iters: int) -> dict[str, float]:
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(time_ms(fn, iters))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_attention(rounds: int, skip_720p: bool) -> list[str]:
    from torch.nn.attention import SDPBackend

    rows = ["| shape | " + " | ".join(["cuDNN", "FLASH", "EFFICIENT", "TileLang"]) + " | TileLang / cuDNN throughput |",
            "|---|---|---|---|---|---|"]
    for name, (heads, lq, lk, d) in ATTENTION_SHAPES.items():
        if skip_720p and "720p" in name:
            continue
        q = torch.randn(1, lq, heads * d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, lk, heads * d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        kernel = flash_attention_kernel(1, heads, lq, lk, d, torch.bfloat16)
        variants = {
            "cuDNN": lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v, heads),
            "FLASH": lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v, heads),
            "EFFICIENT": lambda: sdpa(SDPBackend.EFFICIENT_ATTENTION)(q, k, v, heads),
            "TileLang": lambda: kernel(q, k, v),
        }
        times = interleaved(variants, rounds, 3 if lk > 1024 else 20)
        flops = 4 * heads * lq * lk * d
        cells = [f"{t:.3f} ms / {flops / t / 1e9:.0f}" for t in times.values()]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {times['cuDNN'] / times['TileLang']:.3f}x |")
        print(rows[-1], flush=True)
    return rows


def comfy_q_path():
    """ComfyUI's own q/k preparation: its RMSNorm module, then apply_rope1 (comfy-kitchen's CUDA RoPE when installed)."""
    import tempfile

    from svi_infinity.demo.comfy_runtime import ComfyUINotFound, find_comfyui, import_comfy

    try:
        import_comfy(find_comfyui(), Path(tempfile.mkdtemp()), cpu=False)
        import comfy.ops
        from comfy.ldm.flux.math import apply_rope1
    except (ComfyUINotFound, ImportError) as error:
        return None, f"ComfyUI not importable: {error}"
    return (comfy.ops.disable_weight_init.RMSNorm, apply_rope1), ""


def bench_norms(rounds: int, skip_720p: bool) -> list[str]:
    rows = ["| rows x C | copy GB/s | F.rms_norm | torch.compile | TileLang RMSNorm | ComfyUI RMSNorm then RoPE | fused TileLang RMSNorm+RoPE |",
            "|---|---|---|---|---|---|---|"]
    comfy_parts, comfy_reason = comfy_q_path()
    compiled_norm = torch.compile(lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6))
    for name, (rows_n, dim) in NORM_SHAPES.items():
        if skip_720p and "720p" in name:
            continue
        heads, d = dim // 128, 128
        x = torch.randn(rows_n, dim, device="cuda", dtype=torch.bfloat16)
        w = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=torch.bfloat16)
        copy_dst = torch.empty_like(x)
        angles = torch.rand(rows_n, d // 2, device="cuda") * 6.28
        rotation = torch.stack([torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1), ], -2)
        freqs = rotation.view(1, rows_n, 1, d // 2, 2, 2)
        norm_kernel = rms_norm_kernel(rows_n, dim, torch.bfloat16, 1e-6)
        fused_kernel = rms_norm_rope_kernel(1, rows_n, dim, d, torch.bfloat16, 1e-6)
        variants = {
            "copy": lambda: copy_dst.copy_(x),
            "F.rms_norm": lambda: F.rms_norm(x, (dim,), w, 1e-6),
            "torch.compile": lambda: compiled_norm(x, w),
            "TileLang RMSNorm": lambda: norm_kernel(x, w),
            "fused": lambda: fused_kernel(x, w, rotation),
        }
        if comfy_parts is not None:
            norm_class, apply_rope1 = comfy_parts
            module = norm_class(dim, eps=1e-6, elementwise_affine=True, device="cuda", dtype=torch.bfloat16)
            module.weight = torch.nn.Parameter(w, requires_grad=False)
            variants["comfy"] = lambda: apply_rope1(module(x.view(1, rows_n, dim)).view(1, rows_n, heads, d), freqs)
        times = interleaved(variants, rounds, 20)
        moved = 2 * x.numel() * x.element_size()
        copy_gbs = moved / times["copy"] / 1e6

        def cell(key):
            if key not in times:
                return f"n/a ({comfy_reason})"
            return f"{times[key] * 1000:.0f} us ({moved / times[key] / 1e6 / copy_gbs:.0%})"

        rows.append(f"| {rows_n} x {dim} | {copy_gbs:.0f} | {cell('F.rms_norm')} | {cell('torch.compile')} | "
                    f"{cell('TileLang RMSNorm')} | {cell('comfy')} | {cell('fused')} |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-720p", action="store_true")
    parser.add_argument("--only", choices=["attention", "norms"])
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    tables = []
    if args.only != "norms":
        tables.append(bench_attention(args.rounds, args.skip_720p))
    if args.only != "attention":
        tables.append(bench_norms(args.rounds, args.skip_720p))
    print()
    for table in tables:
        print("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
