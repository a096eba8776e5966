#!/usr/bin/env bash
# Issue 17's end-to-end comparison on the H200, in phases that each fit one device call (logs and JSON under $OUT, every
# step under a `timeout`). Source bench/device_env.sh first, one phase per call:
#   run(carry=[".carry/tl", ".carry/ck", ".carry/c3"], command="source bench/device_env.sh && bash bench/side_by_side_device.sh fp16")
# SageAttention 2 joins as ComfyUI's --use-sage-attention path (comfy_sage) when a wheel of it is installed in
# /tmp/sage2 or carried in .carry/sage2/ (built on the GPU machine from thu-ml/SageAttention's source as
# ../shared/docs/gpu-kernels.md describes; the project holds no recipe that builds fetched code).
#   fresh       a fresh install's first clip against a warm install's, each in a new process running the kernel node's
#               default (the background compile: the norms' gate opens first, attention's when its kernels are in):
#               the first with an empty TileLang cache, the second with the cache the first filled, so both pay the
#               same weight upload and cuDNN algorithm search, and differ only in what the compile costs
#   fp16        Wan 2.1 I2V 14B at 480p, fp16 weights, 3 clips: ComfyUI, ComfyUI + SageAttention 2, the pack bf16, the
#               pack with fp8 GEMMs and 8-bit attention
#   fp8_scaled  the same graph on fp8_scaled weights (ComfyUI's mixed-precision ops): ComfyUI, ComfyUI + SageAttention 2,
#               the pack with fp8 GEMMs, with fp8 GEMMs and 8-bit attention
set -u
phase="${1:-fp16}"
source "$(dirname "${BASH_SOURCE[0]}")/device_steps.sh"
start_phase side_by_side_ "$phase" fresh fp16 fp8_scaled
sage2="$(sage_site 2)"
if [ -n "$sage2" ]; then
  export PYTHONPATH="$sage2:$PYTHONPATH"
  sage2=",comfy_sage"
fi
e2e() {  # NAME SECONDS e2e_bench arguments...
  local name="$1" seconds="$2"
  shift 2
  step "$name" "$seconds" python3 bench/e2e_bench.py --model wan21 --res 480p "$@" --json "$OUT/e2e_h200_wan21_480p_$name.json"
  grep -v INFO "$OUT/$name.log" | grep -v "^active\|^not active" | tail -n 30
}
case "$phase" in
  fresh)
    cache=/tmp/tilelang_first_run
    rm -rf "$cache"
    for install in fresh warm; do
      TILELANG_CACHE_DIR="$cache" e2e "${install}_install" 200 --clips 2 --paths pack_bg
    done
    python3 - "$OUT" <<'RATIO' | tee -a "$summary"
import json, sys
first = {name: json.load(open(f"{sys.argv[1]}/e2e_h200_wan21_480p_{name}_install.json"))["pack_bg"]["first_clip_s"]
         for name in ("fresh", "warm")}
print(f"first clip: fresh install {first['fresh']:.2f} s, warm {first['warm']:.2f} s, "
      f"ratio {first['fresh'] / first['warm']:.2f}x")
RATIO
    ;;
  fp16|fp8_scaled)
    step precompile 150 bash -c "python3 bench/kernels_precompile.py --only e2e --workers 16 && \
      python3 bench/kernels_precompile.py --only fp8 --workers 16"
    if [ "$phase" = fp16 ]; then
      e2e side_by_side_fp16 430 --clips 3 --paths "comfy$sage2,pack,pack8_fp8"
    else
      e2e side_by_side_fp8_scaled 430 --clips 3 --weight-dtype fp8_scaled --paths "comfy$sage2,pack_fp8,pack8_fp8"
    fi
    ;;
esac
cat "$summary"
