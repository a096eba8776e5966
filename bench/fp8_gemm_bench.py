"""fp8 GEMMs at Wan 14B's shapes on the GPU machine: one block's GEMM work in bf16 against the fp8 path, side by side.

Per GEMM shape (M tokens x K -> N): cuBLAS in the activations' dtype (F.linear; the FFN's first with the GELU in its
epilogue, as the bf16 fused block runs it), the row-wise scaled fp8 GEMM alone (inputs quantised beforehand), and the
fp8 GEMM with the row-quantisation pass that feeds it where the fp8 block has one (attention outputs, the GELU'd
hidden). Then one block's eight GEMMs both ways, and the three fused LayerNorm passes with bf16 and with e4m3 output.
Cells: ms and TFLOP/s; error: relative L2 against float64 on the first 1024 rows. Weights random at the real shapes
(speed does not depend on their values).

  python3 bench/fp8_gemm_bench.py [--res 480p|720p] [--dtype fp16|bf16] [--rounds 5] [--json PATH]
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.kernels.fp8_gemm import Fp8Weight, output_dtype, quantize_rows, quantize_weight, scaled_linear  # noqa: E402
from svi_infinity.kernels.layernorm import NormPlan, layer_norm  # noqa: E402
from svi_infinity.kernels.model_patch import FUSED_BLOCK_PLANS  # noqa: E402

spec = importlib.util.spec_from_file_location("kernels_bench", ROOT / "bench" / "kernels_bench.py")
timing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)

DIM, FFN_DIM = 5120, 13824
TOKENS = {"480p": 21 * 30 * 52, "720p": 21 * 45 * 80}
# name: (K, N, count per block, fed by a row-quantisation pass, GELU in that pass / epilogue)
GEMMS = {
    "q / k / v (self)": (DIM, DIM, 3, False, False),
    "o (self)": (DIM, DIM, 1, True, False),
    "q (cross)": (DIM, DIM, 1, False, False),
    "o (cross)": (DIM, DIM, 1, True, False),
    "FFN up (GELU)": (DIM, FFN_DIM, 1, False, True),
    "FFN down": (FFN_DIM, DIM, 1, True, True),
}


def relative_l2(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.double() - reference).norm() / reference.norm()).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", choices=list(TOKENS), default="480p")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="fp16: what ComfyUI picks for Wan 2.1 on Hopper")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    m = TOKENS[args.res]
    device = torch.device("cuda")
    gemm_out = output_dtype(device, dtype)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.res}: M {m}, activations {dtype}, "
          f"row-wise fp8 GEMM writes {gemm_out}" + ("" if gemm_out == dtype else f" (then cast to {dtype})"), flush=True)
    torch.manual_seed(0)
    results, block_bf16, block_fp8 = {}, [], []
    print("| GEMM (x per block) | bf16 cuBLAS | fp8 GEMM only | fp8 incl. its quantisation pass | speed-up incl. quant | "
          "error bf16 / fp8 |")
    print("|---|---|---|---|---|---|")
    for name, (k, n, count, quantised_input, gelu) in GEMMS.items():
        x = torch.randn(m, k, device=device, dtype=dtype)
        if name == "FFN down":  # the GELU'd hidden, as the FFN's second GEMM sees it
            x = F.gelu(x.float(), approximate="tanh").to(dtype)
        weight = torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
        bias = 0.1 * torch.randn(n, device=device, dtype=dtype)
        data, scale = quantize_weight(weight)
        quantized = Fp8Weight(data, scale, bias.to(gemm_out))
        pre_gelu = torch.randn(m, k, device=device, dtype=dtype) if name == "FFN down" else None
        rows, _ = quantize_rows(x)
        if name == "FFN up (GELU)":
            bf16 = lambda: torch._addmm_activation(bias, x, weight.t(), use_gelu=True)  # noqa: E731
        else:
            bf16 = lambda: F.linear(x, weight, bias)  # noqa: E731
        only = lambda: scaled_linear(rows, quantized, dtype)  # noqa: E731
        if quantised_input:
            source, with_gelu = (pre_gelu, True) if name == "FFN down" else (x, False)
            full = lambda: scaled_linear(quantize_rows(source, with_gelu)[0], quantized, dtype)  # noqa: E731
        else:
            full = only  # its input comes from a LayerNorm pass that writes e4m3 itself
        times = timing.interleaved({"bf16": bf16, "only": only, "full": full}, args.rounds, 10)
        flops = 2 * m * k * n
        sample = x[:1024].double()
        reference = F.linear(sample, weight.double(), bias.double())
        if name == "FFN up (GELU)":
            reference = F.gelu(reference, approximate="tanh")
            fp8_out = F.gelu(only()[:1024].float(), approximate="tanh")
        else:
            fp8_out = only()[:1024]
        errors = (relative_l2(bf16()[:1024], reference), relative_l2(fp8_out, reference))
        cells = [f"{times[key]:.3f} ms / {flops / times[key] / 1e9:.0f}" for key in ("bf16", "only", "full")]
        print(f"| {name} (x{count}) | " + " | ".join(cells) + f" | {times['bf16'] / times['full']:.2f}x | "
              f"{errors[0]:.1e} / {errors[1]:.1e} |", flush=True)
        results[name] = {**times, "count": count, "tflop": flops / 1e12, "error_bf16": errors[0], "error_fp8": errors[1]}
        block_bf16.append(count * times["bf16"])
        block_fp8.append(count * times["full"])
        del x, weight, data, quantized, rows, pre_gelu
        torch.cuda.empty_cache()

    x, y = (torch.randn(1, m, DIM, device=device, dtype=dtype) for _ in range(2))
    gate, shift, scale = (0.5 * torch.randn(1, 1, DIM, device=device, dtype=dtype) for _ in range(3))
    weight, bias = 1 + 0.1 * torch.randn(DIM, device=device, dtype=dtype), 0.1 * torch.randn(DIM, device=device, dtype=dtype)
    vectors = dict(y=y, gate=gate, shift=shift, scale=scale, weight=weight, bias=bias)

    def norms(fp8: bool):
        plans = [NormPlan(p.residual, p.modulate, fp8_out=fp8) for p in FUSED_BLOCK_PLANS]
        return lambda: [layer_norm(x, plan, 1e-6, **vectors) for plan in plans]

    norm_times = timing.interleaved({"bf16": norms(False), "fp8": norms(True)}, args.rounds, 10)
    blocks = {"bf16": sum(block_bf16) + norm_times["bf16"], "fp8": sum(block_fp8) + norm_times["fp8"]}
    print(f"\nthree fused LayerNorm passes per block: {norm_times['bf16']:.3f} ms with {dtype} output, "
          f"{norm_times['fp8']:.3f} ms with e4m3 output + scales")
    print(f"one block's eight GEMMs + their quantisation + the three norms: {blocks['bf16']:.2f} ms in {dtype}, "
          f"{blocks['fp8']:.2f} ms in fp8 ({blocks['bf16'] / blocks['fp8']:.2f}x); x40 blocks per forward: "
          f"{40 * blocks['bf16'] / 1e3:.3f} s vs {40 * blocks['fp8'] / 1e3:.3f} s "
          f"(saves {40 * (blocks['bf16'] - blocks['fp8']) / 1e3:.3f} s per step)")
    if args.json:
        args.json.write_text(json.dumps({"res": args.res, "dtype": str(dtype), "tokens": m, "gemm_output": str(gemm_out),
                                         "gemms": results, "norms_ms": norm_times, "block_ms": blocks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
