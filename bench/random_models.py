"""Real-size Wan models with random weights, built in memory and loaded through ComfyUI's own loaders.

Speed does not depend on the weight values (never zeros, though: the draws keep activations finite), and writing
tens of GB of checkpoints to time them would only measure the disk. Shared by bench/e2e_bench.py (pipeline functions)
and the bench-only loader nodes of bench/real_size_models (bench/graph_bench.py, the nodes through ComfyUI's executor).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

WAN_14B = {"dim": 5120, "layers": 40, "ffn_dim": 13824}
WAN_TINY = {"dim": 128, "layers": 2, "ffn_dim": 256}
SIZES = {"14B": WAN_14B, "tiny": WAN_TINY}
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_scaled")  # the last: the checkpoint is fp8_scaled


def random_tensor(name: str, shape, dtype, generator: torch.Generator) -> torch.Tensor:
    """Random weights drawn on the generator's device: unit-ish norms, 1/sqrt(fan_in) matrices, small biases."""
    leaf = name.rsplit(".", 1)[-1]
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    if leaf == "gamma" or ("norm" in name and leaf == "weight"):
        value = 1.0 + 0.1 * noise
    elif "modulation" in name:
        value = 0.1 * noise
    elif leaf == "bias" or len(shape) < 2:
        value = 0.02 * noise
    else:
        value = noise / math.sqrt(math.prod(shape[1:]))
    return value.to(dtype)


def wan_template(image_branch: bool, sizes: dict):
    """ComfyUI's own Wan module on the meta device: the checkpoint's keys and shapes, nothing allocated."""
    from comfy.ldm.wan.model import WanModel
    import comfy.ops

    with torch.device("meta"):
        return WanModel(model_type="i2v" if image_branch else "t2v", in_dim=36, out_dim=16, dim=sizes["dim"],
                        ffn_dim=sizes["ffn_dim"], num_heads=sizes["dim"] // 128, num_layers=sizes["layers"],
                        operations=comfy.ops.disable_weight_init)


def random_wan_state_dict(image_branch: bool, sizes: dict, device, seed: int, dtype=torch.bfloat16,
                          fp8_scaled: bool = False) -> dict:
    """Checkpoint keys and shapes of ComfyUI's Wan module, filled on `device`; `fp8_scaled`: in the layout of
    ComfyUI's (and Comfy-Org's repackaged) fp8_scaled Wan files, the blocks' Linears e4m3 with a scale each."""
    from svi_infinity.demo.quantized_models import fp8_scaled_state_dict

    template = wan_template(image_branch, sizes)
    generator = torch.Generator(device=device).manual_seed(seed)
    # Drawn on the GPU (fast), kept on the CPU like weights read from a file, so ComfyUI does the loading.
    state = {}
    for name, t in template.state_dict().items():
        tensor = random_tensor(name, t.shape, torch.float32 if name == "patch_embedding.weight" else dtype, generator)
        if fp8_scaled:  # one tensor at a time, on the device
            state.update((key, value.cpu()) for key, value in fp8_scaled_state_dict({name: tensor})[0].items())
        else:
            state[name] = tensor.cpu()
    return state


def load_wan(image_branch: bool, sizes: dict, device, seed: int, weight_dtype: str, heads: int | None = None):
    """A ModelPatcher from ComfyUI's own state-dict loader (dtype choice, manual cast, fp8 handling), as UNETLoader
    makes one with the same weight_dtype. `heads`: an attention head count other than dim // 128, declared the way a
    checkpoint's metadata does (sequence parallelism on tiny models needs several heads)."""
    import json

    import comfy.sd

    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r}; known: {WEIGHT_DTYPES}")
    state = random_wan_state_dict(image_branch, sizes, device, seed, fp8_scaled=weight_dtype == "fp8_scaled")
    options = {}
    if weight_dtype == "fp8_e4m3fn":
        options["dtype"] = torch.float8_e4m3fn
    elif weight_dtype == "fp8_e4m3fn_fast":
        options.update(dtype=torch.float8_e4m3fn, fp8_optimizations=True)
    metadata = {"config": json.dumps({"transformer": {"num_heads": heads}})} if heads else None
    patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options=options, metadata=metadata)
    del state
    return patcher


def load_vae(tiny: bool, seed: int):
    """The Wan 2.1 VAE (full size: dim 96) with random weights, through ComfyUI's VAE class."""
    import comfy.sd
    from svi_infinity.demo.tiny_models import wan21_vae_state_dict

    return comfy.sd.VAE(sd=wan21_vae_state_dict(dim=8 if tiny else 96, seed=seed))


def write_random_lora(path: Path, image_branch: bool, sizes: dict, *, rank: int, seed: int, fmt: str) -> Path:
    """A random LoRA at the model's real shapes, in one of the formats found in the wild (an SVI LoRA is rank 128 in
    PEFT format, a lightx2v speed LoRA rank 64 in kohya format)."""
    from svi_infinity.demo.tiny_models import lora_target_shapes, random_lora, write_lora

    shapes = lora_target_shapes(wan_template(image_branch, sizes).state_dict())
    return write_lora(Path(path), random_lora(shapes, rank=rank, seed=seed), fmt, alpha=rank if fmt == "kohya" else None,
                      dtype=torch.float16)
