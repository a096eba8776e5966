#!/usr/bin/env bash
# Creates .venv with everything the pack, its demo and its tests need on a CPU machine.
# torch comes from the local wheel store (a build that runs on the CPU); ComfyUI's own
# requirements come from PyPI minus its three web-UI packages, which only serve the page.
#
# --without-hopper: a second environment, .venv-without-hopper, with only what a user without the Hopper kernels
# installs (ComfyUI's requirements and this pack's requirements.txt, no TileLang) plus the test runner, for the
# tests that prove the pack installs and runs without TileLang (tests/test_without_tilelang.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = "--without-hopper" ]; then
  venv="${SVI_VENV:-$root/.venv-without-hopper}"
  pack_requirements=(-r "$root/requirements.txt")
  read -r -a test_runner <<< "$(grep -E '^pytest' "$root/requirements-dev.txt" | tr '\n' ' ')"
  inputs=("$root/requirements.txt" "$root/requirements-dev.txt")
else
  venv="${SVI_VENV:-$root/.venv}"
  pack_requirements=(-r "$root/requirements.txt" -r "$root/requirements-dev.txt")
  test_runner=()
  inputs=("$root/requirements.txt" "$root/requirements-dev.txt" "$root/requirements-hopper.txt")
fi
comfy="$(bash "$root/scripts/find_comfyui.sh")"

stale=0
for input in "${inputs[@]}" "$root/scripts/setup_env.sh"; do
  if [ ! -f "$venv/.complete" ] || [ "$input" -nt "$venv/.complete" ]; then stale=1; fi
done
if [ "$stale" -eq 0 ]; then
  exit 0
fi
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q torch==2.14.1 torchvision==0.29.1
constraints="$(mktemp)"
echo "torch==2.14.1" > "$constraints"
grep -v -E '^(torch|torchvision|torchaudio|comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)([=<> ]|$)' \
  "$comfy/requirements.txt" | grep -v -E '^\s*(#|$)' > "$venv/comfyui-requirements.txt"
$pip install -q -c "$constraints" -r "$venv/comfyui-requirements.txt"
$pip install -q --no-deps torchaudio==2.11.0
$pip install -q -c "$constraints" "${pack_requirements[@]}" "${test_runner[@]}"
rm -f "$constraints"
touch "$venv/.complete"
