#!/usr/bin/env bash
# Prints the ComfyUI folder: $COMFYUI_PATH, else the grandparent when the pack sits in
# ComfyUI/custom_nodes/. Exits 1 with a message naming both.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for candidate in "${COMFYUI_PATH:-}" "$(dirname "$(dirname "$root")")"; do
  if [ -n "$candidate" ] && [ -f "$candidate/comfy/model_detection.py" ] && [ -f "$candidate/main.py" ]; then
    echo "$candidate"; exit 0
  fi
done
echo "ComfyUI not found: set COMFYUI_PATH to a ComfyUI v0.33.0 folder, or place this pack in ComfyUI/custom_nodes/ (looked in: '${COMFYUI_PATH:-<unset>}', '$(dirname "$(dirname "$root")")')" >&2
exit 1
