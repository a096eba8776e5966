"""The coherence benchmark's own code path on the CPU at a small size: every row of its table comes out."""


def test_small_run_prints_every_row(run_bench):
    stdout = run_bench("coherence_bench.py", "--res", "small", "--frames", "9", "--repeats", "1")
    assert "9 frames at 192x112" in stdout
    for row in ("drift control, match the reference", "drift control, match the previous clip at the seam",
                "SVI-Dance pose tokens (fp32, dim 5120)"):
        assert row in stdout, stdout
