"""First-run compile time of the kernels one Wan 14B 480p clip needs (fp16 weights: norms, attention, VAE norms), from an
empty TileLang cache: in this process one after another, and in worker processes (kernels/parallel_compile.py, what
the kernel node's precompile does). Each mode runs in a fresh process with its own empty cache.

  python3 bench/parallel_compile_bench.py [--workers 16] [--eight-bit]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clip_jobs(eight_bit: bool) -> list[tuple]:
    import importlib.util

    import torch

    sys.path.insert(0, str(ROOT / "demo"))
    import pack_alias

    pack_alias.import_pack()
    from svi_infinity.kernels import attention_8bit

    spec = importlib.util.spec_from_file_location("kernels_precompile", ROOT / "bench" / "kernels_precompile.py")
    precompile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precompile)
    tokens = 21 * 30 * 52
    jobs = [(name, args) for name, args in dict.fromkeys(precompile.e2e_jobs())
            if torch.float16 in args and 75600 not in args and (not eight_bit or name != "attention")]
    builders = precompile.builders()
    listed = [(f"{name}{args}", builders[name], args) for name, args in jobs]
    if eight_bit:
        listed += [job for kv in (tokens, 512, 257) for job in attention_8bit.kernel_jobs(1, 40, tokens, kv, 128, torch.float16)]
    return list({(builder, args): (label, builder, args) for label, builder, args in listed}.values())


def run_mode(workers: int, eight_bit: bool) -> None:
    jobs = clip_jobs(eight_bit)
    from svi_infinity.kernels.parallel_compile import compile_all

    start = time.perf_counter()
    built = compile_all(jobs, progress=lambda done, total: print(f"  [{done}/{total}] {time.perf_counter() - start:5.1f} s",
                                                                    flush=True), workers=workers)
    in_workers = sum(b.worker is not None for b in built)
    print(f"RESULT workers={workers} kernels={len(built)} built_in_workers={in_workers} wall={time.perf_counter() - start:.1f}s",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--eight-bit", action="store_true", help="the 8-bit attention's kernels instead of the bf16 one")
    parser.add_argument("--mode", type=int, help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = parser.parse_args()
    if args.mode is not None:
        run_mode(args.mode, args.eight_bit)
        return 0
    for workers in (1, args.workers):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TILELANG_CACHE_DIR=cache)
            command = [sys.executable, __file__, "--mode", str(workers)] + (["--eight-bit"] if args.eight_bit else [])
            subprocess.run(command, env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
