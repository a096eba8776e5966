import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def run_bench(comfy_dir):
    """Runs one of bench/'s scripts as a user would (its own process, the real ComfyUI); returns its stdout."""

    def run(script: str, *args: str) -> str:
        env = {**os.environ, "COMFYUI_PATH": str(comfy_dir)}
        done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    return run
