"""Builds every TileLang kernel the GPU tests and the kernel benchmark use into TileLang's disk cache, in parallel.

Run it where nvcc is (a CPU machine works: the target is fixed to sm_90a) with TILELANG_CACHE_DIR set, then carry
that folder to the GPU machine, so its lease is not spent compiling.

  TILELANG_CACHE_DIR=.carry/tlcache python bench/kernels_precompile.py [--workers 2] [--only tests|bench|e2e|attention8|fp8]
"""

import argparse
import importlib.util
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
import torch  # noqa: E402

from svi_infinity.kernels.attention import config_for  # noqa: E402
from svi_infinity.kernels.layernorm import NormPlan  # noqa: E402
from svi_infinity.kernels.model_patch import FP8_BLOCK_PLANS, FUSED_BLOCK_PLANS  # noqa: E402

VAE_NORM_CHANNELS = (96, 192)  # the Wan 2.1 VAE coders' fused-norm widths (their 384-channel norms stay PyTorch's)

TINY_WAN = [  # the tiny Wan of test_tiny_wan_forward_with_and_without_the_node: dim 512, 1200 tokens, 512 text tokens
    ("attention", (1, 4, 1200, 1200, 128, torch.bfloat16, config_for(1200))),
    ("attention", (1, 4, 1200, 512, 128, torch.bfloat16, config_for(512))),
    ("rms_norm", (1200, 512, torch.bfloat16, 1e-6)),
    ("rms_norm", (512, 512, torch.bfloat16, 1e-6)),
    ("rms_norm_rope", (1, 1200, 512, 128, torch.bfloat16, 1e-6)),
    *[("layer_norm", (1, 1200, 512, torch.bfloat16, 1e-6, plan)) for plan in FUSED_BLOCK_PLANS],
    ("gated_residual", (1, 1200, 512, torch.bfloat16)),
]


def test_jobs() -> list[tuple[str, tuple]]:
    spec = importlib.util.spec_from_file_location("kernels_gpu_cases", ROOT / "tests" / "kernels" / "test_kernels_gpu.py")
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    jobs = [("attention", (b, h, sq, skv, d, dtype, config)) for b, h, d, sq, skv, config in cases.ATTENTION_CASES
            for dtype in (torch.bfloat16, torch.float16)]
    jobs.append(("attention", (1, 8, 1037, 1037, 128, torch.bfloat16, config_for(1037))))
    jobs += [("rms_norm", (rows, dim, torch.bfloat16, 1e-6)) for rows, dim in cases.NORM_CASES]
    jobs.append(("rms_norm", (8, 128, torch.bfloat16, 1e-6)))  # dispatch.compile_problem's probe
    jobs += [("rms_norm_rope", (1, seq, dim, d, torch.bfloat16, 1e-6)) for seq, dim, d in cases.ROPE_CASES]
    jobs += [("layer_norm", (batch, seq, dim, dtype, 1e-6, NormPlan(residual, modulate)))
             for batch, seq, dim in cases.LAYER_NORM_CASES for residual, modulate in (("none", True), ("gated", False), ("add", True))
             for dtype in (torch.bfloat16, torch.float16)]
    jobs += [("gated_residual", (batch, seq, dim, dtype)) for batch, seq, dim in cases.LAYER_NORM_CASES
             for dtype in (torch.bfloat16, torch.float16)]
    jobs += [("rms_norm_silu", (channels, dtype)) for channels in VAE_NORM_CHANNELS for dtype in (torch.bfloat16, torch.float16)]
    return jobs + TINY_WAN


def bench_jobs() -> list[tuple[str, tuple]]:
    spec = importlib.util.spec_from_file_location("kernels_bench", ROOT / "bench" / "kernels_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    jobs = [("attention", (1, h, lq, lk, d, torch.bfloat16, config)) for h, lq, lk, d, config in bench.attention_kernels()]
    for rows, dim in bench.NORM_SHAPES.values():
        jobs += [("rms_norm", (rows, dim, torch.bfloat16, 1e-6)), ("rms_norm_rope", (1, rows, dim, 128, torch.bfloat16, 1e-6))]
    return jobs


def e2e_jobs() -> list[tuple[str, tuple]]:
    """What bench/e2e_bench.py's pack paths call: Wan 14B at 480p and 720p, batch 1 (CFG 1), in the dtypes ComfyUI picks
    (fp16 weights compute in fp16; fp8_scaled ones in the dtype ComfyUI casts them to), 8-bit attention included."""
    heads, dim, head_dim, eps = 40, 5120, 128, 1e-6
    jobs = []
    for frames, height, width, dtypes in ((81, 480, 832, (torch.float16, torch.bfloat16)), (81, 720, 1280, (torch.float16,))):
        tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
        for dtype in dtypes:
            jobs.append(("rms_norm_rope", (1, tokens, dim, head_dim, dtype, eps)))
            jobs += [("layer_norm", (1, tokens, dim, dtype, eps, plan)) for plan in FUSED_BLOCK_PLANS]
            jobs.append(("gated_residual", (1, tokens, dim, dtype)))
            for rows in (tokens, 512, 257):
                jobs.append(("rms_norm", (rows, dim, dtype, eps)))
                jobs.append(("attention", (1, heads, tokens, rows, head_dim, dtype, config_for(rows))))
    jobs += [("rms_norm_silu", (channels, dtype)) for channels in VAE_NORM_CHANNELS for dtype in (torch.bfloat16, torch.float16)]
    from svi_infinity.kernels.attention_8bit import kernel_jobs  # the pack8 paths' self-attention

    for tokens, dtypes in ((21 * 30 * 52, (torch.float16, torch.bfloat16)), (21 * 45 * 80, (torch.float16,))):
        jobs += [(builder.__name__, args) for dtype in dtypes
                 for _, builder, args in kernel_jobs(1, heads, tokens, tokens, head_dim, dtype)]
    return jobs


def attention8_jobs() -> list[tuple[str, tuple]]:
    """The 8-bit attention's kernels for its GPU tests (both dtypes), its benchmark (with the candidate schedules) and
    the tiny Wan forward with the 8-bit switch."""
    from svi_infinity.kernels.attention_8bit import kernel_jobs

    spec = importlib.util.spec_from_file_location("attention_8bit_gpu_cases", ROOT / "tests" / "kernels" / "test_attention_8bit_gpu.py")
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    spec = importlib.util.spec_from_file_location("attention_8bit_bench", ROOT / "bench" / "attention_8bit_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    jobs = [job for b, h, d, sq, skv in cases.CASES for dtype in cases.DTYPES for job in kernel_jobs(b, h, sq, skv, d, dtype)]
    jobs += [job for kv in (1200, 512) for job in kernel_jobs(1, 4, 1200, kv, 128, torch.bfloat16)]  # the tiny Wan
    jobs += [job for job in bench.bench_kernels(candidates=True) if job[0] != "bf16"]
    return [(builder.__name__, args) for _, builder, args in jobs]


def fp8_jobs() -> list[tuple[str, tuple]]:
    """The fp8 GEMM path's kernels: its GPU tests (both dtypes), the tiny Wan sampled with it, bench/fp8_gemm_bench.py
    and the e2e benchmark's pack_fp8 paths (Wan 14B at 480p and 720p)."""
    spec = importlib.util.spec_from_file_location("fp8_gemm_gpu_cases", ROOT / "tests" / "kernels" / "test_fp8_gemm_gpu.py")
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    dtypes = (torch.bfloat16, torch.float16)
    jobs = [("row_quant", (rows, dim, dtype, gelu)) for rows, dim, gelu in cases.ROW_QUANT_CASES for dtype in dtypes]
    jobs += [("layer_norm", (batch, seq, dim, dtype, 1e-6, NormPlan(residual, modulate, fp8_out)))
             for batch, seq, dim in cases.LAYER_NORM_CASES for residual, modulate in (("none", True), ("gated", False), ("add", True))
             for dtype in dtypes for fp8_out in (False, True)]
    jobs += [("layer_norm", (1, 1200, 512, torch.bfloat16, 1e-6, plan)) for plan in FP8_BLOCK_PLANS]  # the tiny Wan
    jobs += [("row_quant", (1200, 512, torch.bfloat16, False)), ("row_quant", (1200, 256, torch.bfloat16, True))]
    for tokens, dtypes_here in ((21 * 30 * 52, dtypes), (21 * 45 * 80, (torch.float16,))):
        for dtype in dtypes_here:
            jobs += [("layer_norm", (1, tokens, 5120, dtype, 1e-6, plan)) for plan in FP8_BLOCK_PLANS + FUSED_BLOCK_PLANS]
            jobs += [("row_quant", (tokens, 5120, dtype, False)), ("row_quant", (tokens, 13824, dtype, True))]
    return jobs


def builders() -> dict:
    """Job name -> kernel function."""
    from svi_infinity.kernels import attention_8bit
    from svi_infinity.kernels.attention import flash_attention_kernel
    from svi_infinity.kernels.fp8_gemm import row_quant_kernel
    from svi_infinity.kernels.layernorm import gated_residual_kernel, layer_norm_kernel
    from svi_infinity.kernels.rmsnorm import rms_norm_kernel, rms_norm_rope_kernel
    from svi_infinity.kernels.vae_norm import rms_norm_silu_kernel

    return {"attention": flash_attention_kernel, "rms_norm": rms_norm_kernel, "rms_norm_rope": rms_norm_rope_kernel,
            "rms_norm_silu": rms_norm_silu_kernel, "layer_norm": layer_norm_kernel, "gated_residual": gated_residual_kernel,
            "row_quant": row_quant_kernel,
            **{name: getattr(attention_8bit, name) for name in
               ("channel_stats_kernel", "finish_stats_kernel", "quantize_kernel", "attention_8bit_kernel")}}


def build(job: tuple[str, tuple]) -> tuple[str, float]:
    start = time.time()
    builders()[job[0]](*job[1])
    return f"{job[0]}{job[1]}", time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["tests", "bench", "e2e", "attention8", "fp8"])
    args = parser.parse_args()
    groups = {"tests": test_jobs, "bench": bench_jobs, "e2e": e2e_jobs, "attention8": attention8_jobs, "fp8": fp8_jobs}
    jobs = [job for name, make in groups.items() if args.only in (None, name) for job in make()]
    jobs = list(dict.fromkeys(jobs))
    with ProcessPoolExecutor(args.workers) as pool:
        for index, (name, seconds) in enumerate(pool.map(build, jobs)):
            print(f"[{index + 1}/{len(jobs)}] {seconds:5.1f} s {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
