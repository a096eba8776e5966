"""The multi-GPU benchmark's own code path on tiny 4-head models with gloo processes on the CPU: both degrees run
through the pack's launcher, the table comes out, and two ranks compute one rank's latent."""

import json


def test_tiny_run_prints_the_degree_table(run_bench, tmp_path):
    out = tmp_path / "parallel.json"
    stdout = run_bench("parallel_bench.py", "--tiny", "--degrees", "1,2", "--clips", "1", "--frames", "5", "--json", str(out))
    assert "| degree | s/step | sampling s | decode s |" in stdout
    row = next(line for line in stdout.splitlines() if line.startswith("| 2 |"))
    assert row.split(" | ")[-2] == "0.00e+00"  # latent of 2 ranks vs 1: the same clip
    assert "rank 1: worker pid" in stdout
    numbers = json.loads(out.read_text())
    assert [r["degree"] for r in numbers] == [1, 2] and numbers[1]["group_start_s"] > 0 and len(numbers[1]["peak_gib"]) == 2
