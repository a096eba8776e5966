"""The small-card benchmark's own code path on tiny models on the CPU (the shipped fp8_scaled and GGUF templates
through a real ComfyUI server, clip timings from its websocket), and its GPU-side Q8_0 encoder against gguf's."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("small_card_bench", BENCH / "small_card_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_q8_0_blocks_are_byte_for_byte_ggufs(gguf_package):
    import gguf.quants

    bench = load_bench()
    values = torch.randn(64, 96, generator=torch.Generator().manual_seed(5)) * torch.logspace(-3, 1, 96)
    values[3, :32] = 0  # an all-zero block
    values[5, 7] = 127 * 0.5 / 100  # exact halves round away from zero as gguf's np_roundf does
    expected = gguf.quants.quantize(values.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert (bench.q8_0_bytes(values).numpy() == expected).all()


@pytest.mark.parametrize("fmt", ["fp8_scaled", "gguf_q8_0"])
def test_tiny_templates_run_through_a_real_server(run_bench, comfyui_gguf, gguf_package, tmp_path, fmt):
    out = tmp_path / "small_card.json"
    stdout = run_bench("small_card_bench.py", "--tiny", "--format", fmt, "--card-gib", "24", "--clips", "2",
                       "--work", str(tmp_path / "work"), "--json", str(out), "--log-dir", str(tmp_path / "logs"))
    assert "| 24 GB | success |" in stdout, stdout
    result = json.loads(out.read_text())["results"][0]
    assert [clip["clip"] for clip in result["clips"]] == [0, 1] and all(clip["seconds"] > 0 for clip in result["clips"])
    assert "To see the GUI go to" in (tmp_path / "logs" / f"server_{fmt}_24gib.log").read_text()
    loaders = (tmp_path / "work" / "models_base" / "models" / "diffusion_models").iterdir()
    assert sorted(p.suffix for p in loaders) == ([".gguf"] * 2 if fmt == "gguf_q8_0" else [".safetensors"] * 2)
