"""8-bit attention benchmark on the GPU machine: every attention path side by side, interleaved rounds, one run.

Per Wan 14B shape: cuDNN SDPA (bf16), the pack's TileLang bf16 kernel, the pack's 8-bit path including its
quantisation passes, the 8-bit kernel alone on inputs quantised beforehand, the quantisation passes alone, and
SageAttention 1.0.6 (Triton) and SageAttention 2 (`sageattn(q, k, v, tensor_layout="NHD")`, its sm90 kernel) when
importable. Cells: ms / TFLOP/s (flops = 4 b h Lq Lk d, the quantisation counted in the time) / cosine to float32
attention on the same inputs. Inputs are Wan-like (tests/kernels/attention_inputs.py: q/k after RMSNorm with 4
outlier channels per head, tokens correlated, V with channel offsets); `--inputs iid` uses N(0, 1) instead.
`--candidates` adds other 8-bit schedules (kernel alone, as a ratio to the shipped one).

  python3 bench/attention_8bit_bench.py [--rounds 5] [--shapes 480p,720p,cross] [--candidates]
      [--sage1 DIR] [--sage2 DIR] [--inputs wan|iid] [--baseline FILE] [--json PATH]

--baseline: an earlier kernels/attention_8bit.py (e.g. `git show REV:kernels/attention_8bit.py > FILE`), timed beside
the current one (its path with quantisation, kernel alone and quantisation alone), compiled in this process.

--sage1 / --sage2: folders holding a `sageattention` package (pip install --target); without them the default path's
`sageattention`, if any, is used for whichever major version it is.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.kernels.attention import attention_cudnn, flash_attention_kernel  # noqa: E402
from svi_infinity.kernels.attention_8bit import (Attention8BitConfig, attention_8bit_kernel, attention_8bit_quantized,  # noqa: E402
                                                 attention_8bit_tilelang, config_for, kernel_jobs, quantize_tilelang)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inputs = _load("attention_inputs", ROOT / "tests" / "kernels" / "attention_inputs.py")
timing = _load("kernels_bench", ROOT / "bench" / "kernels_bench.py")

SHAPES = {  # name: (group, heads, Lq, Lk, head_dim)
    "14B 480p self": ("480p", 40, 32760, 32760, 128),
    "14B 720p self": ("720p", 40, 75600, 75600, 128),
    "14B cross text 512": ("cross", 40, 32760, 512, 128),
    "14B cross image 257": ("cross", 40, 32760, 257, 128),
}
CANDIDATES = {  # other 8-bit schedules timed beside the shipped one (kernel alone)
    "self": [("3 stages", Attention8BitConfig(stages=3)), ("no ping-pong", Attention8BitConfig(pingpong=False))],
    "cross": [("1 Q tile per CTA", Attention8BitConfig(q_tiles_per_cta=1)), ("2 Q tiles per CTA", Attention8BitConfig(q_tiles_per_cta=2))],
}
COLUMNS = ["cuDNN", "TileLang bf16", "8-bit incl. quant", "8-bit kernel only", "8-bit quant only", "SageAttention 1", "SageAttention 2"]


def candidates_for(lk: int) -> list[tuple[str, Attention8BitConfig]]:
    return CANDIDATES["cross" if lk <= 1024 else "self"]


def bench_kernels(candidates: bool) -> list[tuple]:
    """(label, builder, args) of every TileLang kernel this benchmark runs (for kernels_precompile.py)."""
    jobs = []
    for _, heads, lq, lk, d in SHAPES.values():
        jobs.append(("bf16", flash_attention_kernel, (1, heads, lq, lk, d, torch.bfloat16)))
        jobs += kernel_jobs(1, heads, lq, lk, d, torch.bfloat16)
        if candidates:
            jobs += [(label, attention_8bit_kernel, (1, heads, lq, lk, d, torch.bfloat16, config)) for label, config in candidates_for(lk)]
    return jobs


def load_sageattention(folder: str | None, major: int):
    """(version, sageattn) of the `sageattention` in `folder` (or on the default path) if its major version is
    `major`, else (why not, None). Its modules are dropped from sys.modules afterwards, so both versions can load."""
    saved = list(sys.path)
    if folder:
        sys.path.insert(0, folder)
    for name in [name for name in sys.modules if name.split(".")[0] == "sageattention"]:
        del sys.modules[name]
    try:
        import sageattention

        version = next((dist.version for dist in importlib.metadata.distributions(path=sys.path)
                        if dist.metadata["Name"] == "sageattention"), "unknown")
        if not version.startswith(f"{major}."):
            return f"sageattention {version} found, not {major}.x", None
        return version, sageattention.sageattn
    except Exception as error:  # missing package, missing compiled extension, Triton mismatch...
        return f"not importable: {type(error).__name__}: {error}", None
    finally:
        sys.path[:] = saved
        for name in [name for name in sys.modules if name.split(".")[0] == "sageattention"]:
            del sys.modules[name]


def load_baseline(path: str | None):
    """The 8-bit module in `path` as a submodule of the pack's kernels/ (its relative imports resolve there), with its
    compile keys renamed so that its kernels and the current ones do not share in-process cache entries."""
    if not path:
        return None
    source = Path(path).read_text().replace('compiled(("attention_8bit', 'compiled(("baseline attention_8bit')
    name = "svi_infinity.kernels.attention_8bit_baseline"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = "svi_infinity.kernels"
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def sage_call(sageattn, q, k, v, heads):
    b, lq, c = q.shape
    split = lambda t: t.view(b, t.shape[1], heads, c // heads)  # noqa: E731
    return lambda: sageattn(split(q), split(k), split(v), tensor_layout="NHD", is_causal=False).reshape(b, lq, c)


def bench_shape(name: str, rounds: int, candidates: bool, sages: dict, kind: str, baseline=None) -> dict:
    _, heads, lq, lk, d = SHAPES[name]
    make = inputs.wan_like_qkv if kind == "wan" else inputs.iid_qkv
    q, k, v = make(1, lq, lk, heads, d, seed=0, device="cuda")
    reference = inputs.float32_attention(q, k, v, heads)
    out = torch.empty_like(q)
    bf16_kernel = flash_attention_kernel(1, heads, lq, lk, d, torch.bfloat16)
    quantized = quantize_tilelang(q, k, v, heads)
    variants = {
        "cuDNN": lambda: attention_cudnn(q, k, v, heads),
        "TileLang bf16": lambda: bf16_kernel(q, k, v, out) or out,
        "8-bit incl. quant": lambda: attention_8bit_tilelang(q, k, v, heads),
        "8-bit kernel only": lambda: attention_8bit_quantized(quantized, heads, lk, torch.bfloat16),
        "8-bit quant only": lambda: quantize_tilelang(q, k, v, heads),
    }
    for label, sageattn in sages.items():
        if sageattn is not None:
            variants[label] = sage_call(sageattn, q, k, v, heads)
    if baseline is not None:
        baseline_quantized = baseline.quantize_tilelang(q, k, v, heads)
        variants.update({
            "baseline incl. quant": lambda: baseline.attention_8bit_tilelang(q, k, v, heads),
            "baseline kernel only": lambda: baseline.attention_8bit_quantized(baseline_quantized, heads, lk, torch.bfloat16),
            "baseline quant only": lambda: baseline.quantize_tilelang(q, k, v, heads),
        })
    if candidates:
        for label, config in candidates_for(lk):
            variants[f"8-bit {label}"] = (lambda c: lambda: attention_8bit_quantized(quantized, heads, lk, torch.bfloat16, c))(config)
    cosines = {}
    for label, fn in variants.items():
        if not label.endswith("quant only"):
            cosines[label], _ = inputs.cosine_and_relative_l2(fn(), reference)
    _, relative = inputs.cosine_and_relative_l2(attention_8bit_tilelang(q, k, v, heads), reference)
    times = timing.interleaved(variants, rounds, 3 if lk > 1024 else 20)
    flops = 4 * heads * lq * lk * d
    row = {"shape": name, "config": repr(config_for(lk)), "flops": flops, "times_ms": times, "cosine": cosines,
           "tflops": {label: flops / ms / 1e9 for label, ms in times.items()}, "relative_l2_8bit": relative}
    del q, k, v, reference, quantized, variants
    torch.cuda.empty_cache()
    return row


def cell(row: dict, label: str) -> str:
    if label not in row["times_ms"]:
        return "n/a"
    ms = row["times_ms"][label]
    if label.endswith("quant only"):
        return f"{ms:.3f} ms"
    return f"{ms:.3f} / {row['tflops'][label]:.0f} / {row['cosine'][label]:.6f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="480p,720p,cross", help="comma-separated groups: 480p, 720p, cross")
    parser.add_argument("--candidates", action="store_true")
    parser.add_argument("--sage1")
    parser.add_argument("--sage2")
    parser.add_argument("--inputs", choices=["wan", "iid"], default="wan")
    parser.add_argument("--baseline", help="an earlier kernels/attention_8bit.py to time beside the current one")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    sages = {}
    for label, folder, major in (("SageAttention 1", args.sage1, 1), ("SageAttention 2", args.sage2, 2)):
        version, sageattn = load_sageattention(folder, major)
        print(f"{label}: {version}", flush=True)
        sages[label] = sageattn
    baseline = load_baseline(args.baseline)
    groups = set(args.shapes.split(","))
    rows = []
    header = "| shape | " + " | ".join(COLUMNS) + " | 8-bit rel. L2 | 8-bit incl. quant / cuDNN | 8-bit incl. quant / SageAttention 2 |"
    lines = [f"inputs: {args.inputs}; cells: ms / TFLOP/s / cosine to float32", header, "|" + "---|" * (len(COLUMNS) + 4)]
    for name, (group, *_) in SHAPES.items():
        if group not in groups:
            continue
        row = bench_shape(name, args.rounds, args.candidates, sages, args.inputs, baseline)
        rows.append(row)
        times = row["times_ms"]
        versus_sage = f"{times['SageAttention 2'] / times['8-bit incl. quant']:.3f}x" if "SageAttention 2" in times else "n/a"
        lines.append(f"| {name} | " + " | ".join(cell(row, label) for label in COLUMNS) +
                     f" | {row['relative_l2_8bit']:.2e} | {times['cuDNN'] / times['8-bit incl. quant']:.3f}x | {versus_sage} |")
        extra = [f"{label}: {times['8-bit kernel only'] / times[label]:.3f}x ({cell(row, label)})"
                 for label in times if label.startswith("8-bit ") and label not in COLUMNS]
        print(lines[-1] + (f"\n  candidates (shipped kernel time / candidate's): {', '.join(extra)}" if extra else ""), flush=True)
        if baseline is not None:
            print("  baseline time / current time: " + ", ".join(
                f"{part} {times['baseline ' + part] / times['8-bit ' + part]:.3f}x ({cell(row, 'baseline ' + part)})"
                for part in ("incl. quant", "kernel only", "quant only")), flush=True)
    print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
