"""Kernel benchmark on the GPU machine: attention and q/k norm variants side by side, interleaved rounds, as ratios.

Attention: SDPA's cuDNN, FLASH and EFFICIENT backends and the TileLang kernel (shipped config, plus the
schedules in VARIANTS) at Wan shapes; throughput ratios against cuDNN, TFLOP/s with flops = 4 b h Lq Lk d. Norms: F.rms_norm,
torch.compile, ComfyUI's own q/k path (F.rms_norm, which is what comfy.rmsnorm calls, then comfy-kitchen's
apply_rope1, which is what comfy.ldm.flux.math.apply_rope1 calls) and the TileLang kernels, as a fraction of the
device copy bandwidth measured in the same run (bytes = read x + write y; the fused kernel also reads a (cos, sin)
table, 256 bytes per token in fp16, shown in the last column).

  python3 bench/kernels_bench.py [--rounds 5] [--only attention|norms] [--skip-720p]
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
from svi_infinity.kernels.attention import AttentionConfig, attention_reference, config_for, flash_attention_kernel  # noqa: E402
from svi_infinity.kernels.rmsnorm import rms_norm_kernel, rms_norm_rope_kernel, rms_norm_rope_reference, rotation_table  # noqa: E402

ATTENTION_SHAPES = {  # name: (heads, Lq, Lk, head_dim)
    "14B 480p self": (40, 32760, 32760, 128),
    "14B 720p self": (40, 75600, 75600, 128),
    "1.3B 480p self": (12, 32760, 32760, 128),
    "5B 720p self": (24, 27280, 27280, 128),
    "14B cross text 512": (40, 32760, 512, 128),
    "14B cross image 257": (40, 32760, 257, 128),
}
SELF_CANDIDATES = [  # the previous schedule (O staged through shared memory) and the other block sizes measured
    ("160, O staged", AttentionConfig(block_n=160)),
    ("176, O from registers", AttentionConfig(block_n=176, stage_output=False)),
    ("block_n 128", AttentionConfig()),
]
VARIANTS = {  # other schedules timed next to the shipped one: ablations and block-size candidates
    "14B 480p self": [("no ping-pong", AttentionConfig(block_n=192, stage_output=False, pingpong=False)), *SELF_CANDIDATES],
    "14B 720p self": SELF_CANDIDATES,
    "14B cross text 512": [("1 Q tile per CTA", AttentionConfig())],
}
NORM_SHAPES = {"14B 480p": (32760, 5120), "14B 720p": (75600, 5120), "1.3B 480p": (32760, 1536)}


def attention_kernels() -> list[tuple[int, int, int, int, AttentionConfig]]:
    """(heads, Lq, Lk, head_dim, config) of every TileLang kernel this benchmark runs (for kernels_precompile.py)."""
    kernels = []
    for name, (heads, lq, lk, d) in ATTENTION_SHAPES.items():
        kernels.append((heads, lq, lk, d, config_for(lk)))
        kernels += [(heads, lq, lk, d, config) for _, config in VARIANTS.get(name, [])]
    return kernels


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


def interleaved(variants: dict, rounds: int, iters: int) -> dict[str, float]:
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(time_ms(fn, iters))
    return {name: statistics.median(values) for name, values in samples.items()}


def sdpa(backend, q, k, v, heads):
    from torch.nn.attention import sdpa_kernel

    def run():
        with sdpa_kernel([backend]):
            return attention_reference(q, k, v, heads)

    return run


def bench_attention(rounds: int, skip_720p: bool) -> list[str]:
    from torch.nn.attention import SDPBackend

    rows = ["| shape | cuDNN | FLASH | EFFICIENT | TileLang | TileLang / cuDNN | TileLang / FLASH | other TileLang schedules / cuDNN |",
            "|---|---|---|---|---|---|---|---|"]
    for name, (heads, lq, lk, d) in ATTENTION_SHAPES.items():
        if skip_720p and "720p" in name:
            continue
        q = torch.randn(1, lq, heads * d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, lk, heads * d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        out = torch.empty_like(q)
        shipped = flash_attention_kernel(1, heads, lq, lk, d, torch.bfloat16, config_for(lk))
        variants = {
            "cuDNN": sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v, heads),
            "FLASH": sdpa(SDPBackend.FLASH_ATTENTION, q, k, v, heads),
            "EFFICIENT": sdpa(SDPBackend.EFFICIENT_ATTENTION, q, k, v, heads),
            "TileLang": lambda: shipped(q, k, v, out),
        }
        for label, config in VARIANTS.get(name, []):
            variants[label] = (lambda kernel: lambda: kernel(q, k, v, out))(flash_attention_kernel(1, heads, lq, lk, d, torch.bfloat16, config))
        times = interleaved(variants, rounds, 3 if lk > 1024 else 20)
        flops = 4 * heads * lq * lk * d
        cells = [f"{times[key]:.3f} ms / {flops / times[key] / 1e9:.0f}" for key in ("cuDNN", "FLASH", "EFFICIENT", "TileLang")]
        other_cell = ", ".join(f"{label}: {times['cuDNN'] / times[label]:.3f}x" for label, _ in VARIANTS.get(name, []))
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {times['cuDNN'] / times['TileLang']:.3f}x | "
                    f"{times['FLASH'] / times['TileLang']:.3f}x | {other_cell} |")
        print(rows[-1], flush=True)
    return rows


def comfy_q_path():
    """ComfyUI's q/k preparation as its code runs it: F.rms_norm, then comfy-kitchen's apply_rope1."""
    try:
        import comfy_kitchen
    except ImportError as error:
        return None, f"comfy-kitchen not importable: {error}"
    backends = ",".join(name for name, info in comfy_kitchen.list_backends().items() if info.get("available", True))
    return comfy_kitchen.apply_rope1, f"comfy-kitchen {getattr(comfy_kitchen, '__version__', '')} backends: {backends}"


def bench_norms(rounds: int, skip_720p: bool) -> tuple[list[str], str]:
    rows = ["| rows x C | copy GB/s | F.rms_norm | torch.compile RMSNorm | TileLang RMSNorm | ComfyUI q path (RMSNorm, kitchen RoPE) "
            "| torch.compile RMSNorm+RoPE | fused TileLang RMSNorm+RoPE | fused, counting rotation bytes |",
            "|---|---|---|---|---|---|---|---|---|"]
    apply_rope1, comfy_note = comfy_q_path()
    compiled_norm = torch.compile(lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6))
    compiled_norm_rope = torch.compile(lambda x, w, f, heads: rms_norm_rope_reference(x, w, 1e-6, f, heads))
    for name, (rows_n, dim) in NORM_SHAPES.items():
        if skip_720p and "720p" in name:
            continue
        heads, d = dim // 128, 128
        x = torch.randn(rows_n, dim, device="cuda", dtype=torch.bfloat16)
        w = 1 + 0.1 * torch.randn(dim, device="cuda", dtype=torch.bfloat16)
        out, copy_dst = torch.empty_like(x), torch.empty_like(x)
        angles = torch.rand(rows_n, d // 2, device="cuda") * 6.28
        rotation = torch.stack([torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -2)
        freqs = rotation.view(1, rows_n, 1, d // 2, 2, 2)
        norm_kernel = rms_norm_kernel(rows_n, dim, torch.bfloat16, 1e-6)
        fused_kernel = rms_norm_rope_kernel(1, rows_n, dim, d, torch.bfloat16, 1e-6)
        table = rotation_table(freqs, rows_n, d // 2)
        variants = {
            "copy": lambda: copy_dst.copy_(x),
            "F.rms_norm": lambda: F.rms_norm(x, (dim,), w, 1e-6),
            "torch.compile": lambda: compiled_norm(x, w),
            "TileLang RMSNorm": lambda: norm_kernel(x, w, out),
            "compiled norm+rope": lambda: compiled_norm_rope(x.view(1, rows_n, dim), w, freqs, heads),
            "fused": lambda: fused_kernel(x, w, table, out),
        }
        if apply_rope1 is not None:
            variants["comfy"] = lambda: apply_rope1(F.rms_norm(x, (dim,), w, 1e-6).view(1, rows_n, heads, d), freqs)
        times = interleaved(variants, rounds, 20)
        moved = 2 * x.numel() * x.element_size()
        copy_gbs = moved / times["copy"] / 1e6

        def cell(key, extra_bytes=0):
            if key not in times:
                return "n/a"
            return f"{times[key] * 1000:.0f} us ({(moved + extra_bytes) / times[key] / 1e6 / copy_gbs:.0%})"

        rows.append(f"| {rows_n} x {dim} | {copy_gbs:.0f} | {cell('F.rms_norm')} | {cell('torch.compile')} | "
                    f"{cell('TileLang RMSNorm')} | {cell('comfy')} | {cell('compiled norm+rope')} | {cell('fused')} | "
                    f"{cell('fused', table.numel() * table.element_size())} |")
        print(rows[-1], flush=True)
    return rows, comfy_note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-720p", action="store_true")
    parser.add_argument("--only", choices=["attention", "norms"])
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    tables = []
    if args.only != "norms":
        tables.append(bench_attention(args.rounds, args.skip_720p))
    if args.only != "attention":
        norm_rows, comfy_note = bench_norms(args.rounds, args.skip_720p)
        tables.append(norm_rows + ["", f"ComfyUI q path: {comfy_note}"])
    print()
    for table in tables:
        print("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
