#!/usr/bin/env bash
# The 8-bit attention on the H200, in phases that each fit one device call (logs under $OUT as they go, every step
# under a `timeout` so a hung kernel costs its step only; the limits of one phase add up to under 600 s). Source
# bench/device_env.sh first, one phase per device call, e.g.
#   run(carry=[".carry/tl", ".carry/ck", ".carry/c3", ".carry/sage1"], command="source bench/device_env.sh && bash bench/attention_8bit_device.sh test")
# Every phase first compiles, 16 processes at once, every kernel the tests and the benchmark use (seconds when the
# machine is still warm: TileLang's cache in /tmp/tlcache).
#   test         a one-case smoke test of the attention kernel, then the GPU tests at small shapes and the tiny Wan
#                forward with the 8-bit switch (only the quantisation tests if the smoke test fails or hangs)
#   test-wan     the GPU tests at Wan 14B 480p's real shapes (self, cross text, cross image)
#   bench        the side-by-side benchmark on Wan-like inputs (shipped schedules), with SageAttention 1 / 2 if carried;
#                arguments after the phase go to bench/attention_8bit_bench.py (e.g. --shapes 480p,720p --baseline FILE)
#   bench2       the candidate 8-bit schedules, and the benchmark on iid N(0, 1) inputs
#   compile      first-run compile time of one 480p clip's kernels (bf16 path) from an empty cache: one after another,
#                then in 16 worker processes (the kernel node's precompile); then a fresh install's first clip: an empty
#                TileLang cache, the kernels compiled in the background while the first steps run on ComfyUI's ops
#                (pack_bg), beside the warm pack's first clip in the same process
# Optional carries: .carry/sage1/sageattention-1.0.6-py3-none-any.whl (pip download sageattention==1.0.6) and
# .carry/sage2/*.whl, a SageAttention 2 wheel built on the GPU machine from thu-ml/SageAttention's source as
# ../shared/docs/gpu-kernels.md describes (the project holds no recipe that builds fetched code).
set -u
phase="${1:-test}"
shift || true
source "$(dirname "${BASH_SOURCE[0]}")/device_steps.sh"
start_phase "" "$phase" test test-wan bench bench2 compile
tests="tests/kernels/test_attention_8bit_gpu.py"
if [ "$phase" != compile ]; then
  step precompile 200 python3 bench/kernels_precompile.py --only attention8 --workers 16
fi
case "$phase" in
  test)
    if step smoke 60 python3 -m pytest "$tests" -q -s -p no:cacheprovider \
         -k "test_attention_kernel_matches_the_emulation and 1x4x128x300x257 and bf16"; then
      step gpu_tests_small 300 python3 -m pytest "$tests" -q -s -p no:cacheprovider -k "not x32760"
    else
      echo "smoke test failed or hung: only the quantisation kernels are tested" | tee -a "$summary"
      step gpu_tests_quantize 300 python3 -m pytest "$tests" -q -s -p no:cacheprovider -k "test_quantisation_kernels_match"
    fi
    grep -h "cosine\|passed\|failed\|Error" "$OUT"/smoke.log "$OUT"/gpu_tests_small.log "$OUT"/gpu_tests_quantize.log 2>/dev/null | tail -n 80
    ;;
  test-wan)
    step gpu_tests_wan 380 python3 -m pytest "$tests" -q -s -p no:cacheprovider -k "x32760"
    grep -h "cosine\|passed\|failed\|Error" "$OUT/gpu_tests_wan.log" | tail -n 60
    ;;
  bench)
    sage1="$(sage_site 1)"
    sage2="$(sage_site 2)"
    step bench 380 python3 bench/attention_8bit_bench.py --rounds 5 ${sage1:+--sage1 "$sage1"} ${sage2:+--sage2 "$sage2"} \
      --json "$OUT/attention_8bit_bench.json" "$@"
    sed -n '/^inputs:/,$p' "$OUT/bench.log"
    ;;
  bench2)
    sage2="$(sage_site 2)"
    step bench_candidates 190 python3 bench/attention_8bit_bench.py --rounds 3 --shapes 480p,cross --candidates
    step bench_iid 190 python3 bench/attention_8bit_bench.py --rounds 3 --shapes 480p,cross --inputs iid ${sage2:+--sage2 "$sage2"}
    for log in bench_candidates bench_iid; do echo "== $log"; grep "candidates" "$OUT/$log.log"; sed -n '/^inputs:/,$p' "$OUT/$log.log"; done
    ;;
  compile)
    step compile_bf16 200 python3 bench/parallel_compile_bench.py --workers 16
    grep -h "RESULT" "$OUT"/compile_*.log
    step fresh_e2e 330 python3 bench/e2e_bench.py --model wan21 --res 480p --clips 2 --fresh-cache --paths pack_bg,pack \
      --json "$OUT/e2e_h200_wan21_480p_fresh_install.json"
    grep -v INFO "$OUT/fresh_e2e.log" | grep -v "^active\|^not active" | tail -n 30
    ;;
esac
cat "$summary"
