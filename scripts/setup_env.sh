#!/usr/bin/env bash
# Creates .venv with everything the pack, its demo and its tests need on a CPU machine.
# torch comes from the local wheel store (a build that runs on the CPU); ComfyUI's own
# requirements come from PyPI minus its three web-UI packages, which only serve the page.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SVI_VENV:-$root/.venv}"
comfy="$(bash "$root/scripts/find_comfyui.sh")"

if [ -f "$venv/.complete" ] && [ "$venv/.complete" -nt "$root/requirements.txt" ] && [ "$venv/.complete" -nt "$root/scripts/setup_env.sh" ]; then
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
$pip install -q -c "$constraints" -r "$root/requirements.txt" -r "$root/requirements-dev.txt"
rm -f "$constraints"
touch "$venv/.complete"
