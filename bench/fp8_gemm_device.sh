#!/usr/bin/env bash
# The fp8 GEMM path on the H200, in phases that each fit one device call (logs under $OUT, every step under a
# `timeout`). Source bench/device_env.sh first, one phase per call:
#   run(carry=[".carry/tl", ".carry/ck", ".carry/c3"], command="source bench/device_env.sh && bash bench/fp8_gemm_device.sh test")
# Each phase first compiles what it needs, 16 processes at once (TileLang's cache in /tmp/tlcache).
#   test   the fp8 GPU tests (row quantisation, the LayerNorm passes with e4m3 output, the scaled GEMM, a tiny Wan
#          sampled through ComfyUI with fp8 GEMMs), then bench/fp8_gemm_bench.py at 480p and 720p
#   tests  the fp8 GPU tests and the tiny Wan forward with the bf16 kernels again, then the VAE decode benchmark with
#          its profile (what a clip's decode spends on convolutions) and bench/vae_conv_bench.py (each convolution alone)
#   e2e    bench/e2e_bench.py, Wan 2.1 I2V 14B at 480p, 3 clips: ComfyUI, the pack in bf16, with fp8 GEMMs, and with
#          fp8 GEMMs and 8-bit attention (send it right after `tests`: the kernels are then still in the cache)
set -u
phase="${1:-test}"
source "$(dirname "${BASH_SOURCE[0]}")/device_steps.sh"
start_phase fp8_ "$phase" test tests e2e
case "$phase" in
  test)
    step precompile 150 python3 bench/kernels_precompile.py --only fp8 --workers 16
    step gpu_tests 150 python3 -m pytest tests/kernels/test_fp8_gemm_gpu.py -q -s -p no:cacheprovider
    grep -h "tiny Wan\|passed\|failed\|Error\|^E " "$OUT/gpu_tests.log" | tail -n 40
    step bench_480p 120 python3 bench/fp8_gemm_bench.py --res 480p --json "$OUT/fp8_gemm_h200_480p.json"
    step bench_720p 120 python3 bench/fp8_gemm_bench.py --res 720p --json "$OUT/fp8_gemm_h200_720p.json"
    cat "$OUT/bench_480p.log" "$OUT/bench_720p.log" | grep -v INFO
    ;;
  tests)
    step precompile 200 bash -c "python3 bench/kernels_precompile.py --only e2e --workers 16 && \
      python3 bench/kernels_precompile.py --only fp8 --workers 16"
    step gpu_tests 150 python3 -m pytest tests/kernels/test_fp8_gemm_gpu.py tests/kernels/test_kernels_gpu.py -q -s \
      -p no:cacheprovider -k "fp8 or tiny_wan_forward"
    grep -h "tiny Wan\|passed\|failed\|^E  " "$OUT/gpu_tests.log" | tail -n 30
    step vae_profile 100 python3 bench/vae_decode_bench.py --res 480p --rounds 2 --profile
    step vae_convs 100 python3 bench/vae_conv_bench.py --res 480p
    grep -hv INFO "$OUT/vae_profile.log" "$OUT/vae_convs.log" | tail -n 80
    ;;
  e2e)
    step precompile 120 bash -c "python3 bench/kernels_precompile.py --only e2e --workers 16 && \
      python3 bench/kernels_precompile.py --only fp8 --workers 16"
    step e2e 440 python3 bench/e2e_bench.py --model wan21 --res 480p --clips 3 --paths comfy,pack,pack_fp8,pack8_fp8 \
      --json "$OUT/e2e_h200_wan21_480p_fp8_gemms.json"
    grep -v INFO "$OUT/e2e.log" | tail -n 40
    ;;
esac
cat "$summary"
