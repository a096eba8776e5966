"""The end-to-end benchmark's own code path, on tiny models on the CPU: both paths run, the table and the agreement
lines come out, and off Hopper the pack's path computes exactly what ComfyUI's does."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_prints_the_side_by_side_table(comfy_dir, tmp_path):
    env = {**os.environ, "COMFYUI_PATH": str(comfy_dir)}
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "e2e_bench.py"), "--tiny", "--clips", "2", "--frames", "17",
                          "--model", "wan22", "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| metric | comfy | pack | comfy / pack |" in run.stdout and "| clip_s |" in run.stdout
    for key in ("first latent", "first frames", "last latent"):
        assert f"{key}: relative L2 pack vs comfy 0.00e+00" in run.stdout  # CPU: every kernel falls back to ComfyUI's math
    numbers = json.loads(out.read_text())
    for path in ("comfy", "pack"):
        clips = numbers[path]["clips"]
        assert len(clips) == 2 and all(clip["frames"] == 17 and len(clip["steps_s"]) == 4 for clip in clips)
