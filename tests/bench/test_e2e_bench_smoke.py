"""The end-to-end benchmark's own code path, on tiny models on the CPU: both paths run, the table and the agreement
lines come out, and off Hopper the pack's path computes exactly what ComfyUI's does."""

import json


def test_tiny_run_prints_the_side_by_side_table(run_bench, tmp_path):
    out = tmp_path / "bench.json"
    stdout = run_bench("e2e_bench.py", "--tiny", "--clips", "2", "--frames", "17", "--model", "wan22", "--json", str(out))
    assert "| metric (s) | comfy | pack | comfy / pack |" in stdout and "| clip_s |" in stdout
    for key in ("first latent", "first frames", "last latent"):
        assert f"{key}: relative L2 pack vs comfy 0.00e+00" in stdout  # CPU: every kernel falls back to ComfyUI's math
    numbers = json.loads(out.read_text())
    for path in ("comfy", "pack"):
        clips = numbers[path]["clips"]
        assert len(clips) == 2 and all(clip["frames"] == 17 and len(clip["steps_s"]) == 4 for clip in clips)
