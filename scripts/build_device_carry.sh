#!/usr/bin/env bash
# Builds the git-ignored .carry/ folders that the GPU machine needs (it has no internet and lacks these packages),
# from the package registries and the local ComfyUI checkout; bench/device_env.sh unpacks them there.
#   .carry/tl   TileLang 0.1.15 + apache-tvm-ffi + z3 (its libraries only), unpacked and xz-packed   (~38 MB)
#   .carry/ck   comfy-kitchen 0.2.31 without its ROCm-only library                                     (~15 MB)
#   .carry/c3   a slim ComfyUI v0.33.0 (no tests, no blueprints), the small wheels it imports, and yunchang
#               (the Ulysses all-to-all of bench/parallel_bench.py)
#   .carry/rt   what ComfyUI's server, executor and comfy_api need beyond that (PyAV, SQLAlchemy, pydantic...):
#               only for the benchmark that runs the nodes through ComfyUI's executor; over the 64 MiB of one
#               call together with the rest, so it travels in a call of its own (bench/device_env.sh --runtime)
#   .carry/tlc  TileLang's kernel cache, compiled here for sm_90a by bench/kernels_precompile.py
# Usage: bash scripts/build_device_carry.sh [--no-cache]   (the cache takes ~15 min on 2 cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ -z "${COMFYUI_PATH:-}" ] && [ -f /opt/ComfyUI/main.py ]; then export COMFYUI_PATH=/opt/ComfyUI; fi
comfy="$(bash scripts/find_comfyui.sh)"
python="$root/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

download() {  # wheels for the device's CPython 3.12 on x86-64 Linux
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$1" "${@:2}"
}

pack_site() {  # unzips wheels into one site folder and xz-packs it
  local wheels="$1" out="$2" site="$work/site-$(basename "$2")"
  mkdir -p "$site" "$(dirname "$out")"
  for wheel in "$wheels"/*.whl; do "$python" -m zipfile -e "$wheel" "$site"; done
  rm -rf "$site"/z3_solver-*.data "$site"/comfy_kitchen/backends/hip/_C.abi3.so
  tar -C "$site" -cf - . | xz -9 -T2 > "$out"
}

mkdir -p .carry/tl .carry/ck .carry/c3 .carry/rt
download "$work/tl" tilelang==0.1.15 apache-tvm-ffi==0.1.12 z3-solver==4.15.4.0
pack_site "$work/tl" .carry/tl/tl_site.tar.xz
download "$work/ck" comfy-kitchen==0.2.31
pack_site "$work/ck" .carry/ck/ck_site.tar.xz
rm -f .carry/c3/*.whl
download .carry/c3 comfy-aimdo==0.4.13 torchsde==0.2.6 trampoline==0.1.2 yunchang==0.6.4
tar -C "$(dirname "$comfy")" --exclude=tests --exclude=tests-unit --exclude=blueprints --exclude=__pycache__ \
  --transform "s,^$(basename "$comfy"),ComfyUI," -cf - "$(basename "$comfy")" | xz -9 -T2 > .carry/c3/comfyui_slim.tar.xz
download "$work/rt" av==18.1.0 SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 greenlet==3.5.6 blake3==1.0.11 \
  simpleeval==1.0.8 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 \
  typing-inspection==0.4.5 python-dotenv==1.2.4
pack_site "$work/rt" .carry/rt/rt_site.tar.xz
if [ "${1:-}" != "--no-cache" ]; then
  mkdir -p .carry/tlcache .carry/tlc
  TILELANG_CACHE_DIR="$root/.carry/tlcache" "$python" bench/kernels_precompile.py --workers 2
  tar -C .carry/tlcache -cf - . | xz -9 -T2 > .carry/tlc/tlcache.tar.xz
fi
du -sh .carry/tl .carry/ck .carry/c3 .carry/rt .carry/tlc 2>/dev/null || true
