"""The executor benchmark's own code path, on tiny models on the CPU: the shipped workflow runs through ComfyUI's
executor with and without the kernel node, the per-clip timeline comes from the nodes' messages, and off Hopper the
pack's graph computes exactly what the shipped graph does."""

import json


def test_tiny_graphs_run_through_the_executor_side_by_side(run_bench, tmp_path):
    out = tmp_path / "graph.json"
    stdout = run_bench("graph_bench.py", "--tiny", "--clips", "3", "--frames", "17", "--model", "wan21", "--json", str(out))
    assert "| metric (s) | comfy | pack | comfy / pack |" in stdout and "| clip_s |" in stdout
    assert "pack: SVI Fast Kernels said:" in stdout and "no CUDA device" in stdout  # the node ran, and fell back
    for clip in (1, 3):
        assert f"clip {clip} latent: relative L2 pack vs comfy 0.00e+00" in stdout
    numbers = json.loads(out.read_text())
    for path in ("comfy", "pack"):
        clips = numbers[path]["clips"]
        assert len(clips) == 3 and all(len(clip["steps_s"]) == 4 for clip in clips)
        assert all(clip["decode_s"] > 0 and clip["save_s"] > 0 for clip in clips)
        assert numbers[path]["first_clip_on_disk_s"] < numbers[path]["video_s"]
