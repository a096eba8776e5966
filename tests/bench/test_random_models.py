"""The benchmarks' random real-format checkpoints: what ComfyUI's loader makes of them."""

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_an_fp8_scaled_checkpoint_loads_as_comfyuis_quantized_layers(comfy_runtime):
    """--weight-dtype fp8_scaled: ComfyUI detects the layout (its mixed-precision ops hold the blocks' Linears as
    quantised e4m3 tensors) and each weight dequantises to the same draw as the fp16 checkpoint's, within e4m3's error."""
    sys.path.insert(0, str(BENCH))
    from random_models import WAN_TINY, load_wan

    scaled = load_wan(True, WAN_TINY, "cpu", 7, "fp8_scaled").model.diffusion_model
    plain = load_wan(True, WAN_TINY, "cpu", 7, "default").model.diffusion_model
    for name in ("self_attn.q", "cross_attn.k_img", "ffn.0"):
        weight = scaled.blocks[1].get_submodule(name).weight
        reference = plain.blocks[1].get_submodule(name).weight.float()
        assert type(weight).__name__ == "QuantizedTensor", name
        assert weight._qdata.dtype == torch.float8_e4m3fn, name
        error = (weight.dequantize().float() - reference).norm() / reference.norm()
        assert 1e-3 < error < 5e-2, (name, error)  # quantised (not a copy of the fp16 draw), at e4m3's precision
    assert type(scaled.head.head.weight).__name__ != "QuantizedTensor"  # outside the blocks: as stored, fp16
