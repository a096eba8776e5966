"""Tiny random-weight Wan models and LoRA files in the real checkpoint key formats.

They let the whole pipeline run on a CPU in seconds: ComfyUI's own loaders detect them as
Wan 2.1 I2V 14B, the two Wan 2.2 I2V A14B experts and the Wan 2.1 VAE, and LoRA files use
each naming scheme found in the wild. Their weights are random, so every video they make is
noise; each file says so in its safetensors metadata.

Key names and shapes come from ComfyUI's own Wan modules (instantiated on the meta device,
so nothing is allocated), which mirror the official checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

RANDOM_WEIGHTS_NOTE = "SVI Infinity tiny test model: RANDOM WEIGHTS, output is noise"
WAN_TEXT_DIM = 4096  # fixed by ComfyUI's Wan detection (umt5-xxl width)
WAN_CLIP_VISION_DIM = 1280  # width of the CLIP-vision tokens Wan 2.1 I2V projects

# Modules the SVI LoRAs train in every block (svi-spec.md: PEFT targets).
SVI_LORA_TARGETS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)
LORA_FORMATS = ("peft", "pipe_dit", "diffusion_model", "kohya")

TINY_FILES = {
    "wan21_i2v": "diffusion_models/svi_tiny_wan21_i2v_random.safetensors",
    "wan22_high": "diffusion_models/svi_tiny_wan22_i2v_high_noise_random.safetensors",
    "wan22_low": "diffusion_models/svi_tiny_wan22_i2v_low_noise_random.safetensors",
    "vae": "vae/svi_tiny_wan21_vae_random.safetensors",
    "svi_lora_wan21": "loras/svi_tiny_lora_wan21_peft_random.safetensors",
    "svi_lora_wan22_high": "loras/svi_tiny_lora_wan22_high_peft_random.safetensors",
    "svi_lora_wan22_low": "loras/svi_tiny_lora_wan22_low_peft_random.safetensors",
    "speed_lora_wan21": "loras/svi_tiny_speed_lora_wan21_kohya_random.safetensors",
    "dance_lora_wan21": "loras/svi_tiny_dance_lora_wan21_pipe_dit_random.safetensors",
}


def _random_like(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Draws a value that keeps activations finite: unit-ish norms, scaled weights, small biases."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma" or ("norm" in name and leaf == "weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if "modulation" in name:
        return 0.1 * torch.randn(shape, generator=generator)
    if leaf == "bias" or len(shape) < 2:
        return 0.02 * torch.randn(shape, generator=generator)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def _randomise(template: dict[str, torch.Tensor], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: _random_like(name, tensor.shape, generator).to(dtype if tensor.is_floating_point() else tensor.dtype)
        for name, tensor in template.items()
    }


def wan_dit_state_dict(*, image_branch: bool, dim: int = 128, layers: int = 2, ffn_dim: int = 256,
                       seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A Wan I2V DiT state dict (in_dim 36). `image_branch` adds Wan 2.1's CLIP-vision projection."""
    from comfy.ldm.wan.model import WanModel
    import comfy.ops

    with torch.device("meta"):
        model = WanModel(
            model_type="i2v" if image_branch else "t2v", in_dim=36, out_dim=16, dim=dim, ffn_dim=ffn_dim,
            num_heads=max(1, dim // 128), num_layers=layers, text_dim=WAN_TEXT_DIM,
            operations=comfy.ops.disable_weight_init,
        )
    state = _randomise(model.state_dict(), seed, dtype)
    state["patch_embedding.weight"] = state["patch_embedding.weight"].float()
    return state


def wan21_vae_state_dict(*, dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Wan 2.1 VAE state dict; ComfyUI reads the base width from decoder.head.0.gamma."""
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    return _randomise(vae.state_dict(), seed, torch.float32)


def _save(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"svi_infinity": RANDOM_WEIGHTS_NOTE, **(metadata or {})})
    return path


def write_wan21_i2v(path: Path, *, dim: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """Wan 2.1 I2V 14B layout (with the CLIP-vision image branch), tiny widths."""
    return _save(path, wan_dit_state_dict(image_branch=True, dim=dim, layers=layers, seed=seed))


def write_wan22_i2v_expert(path: Path, *, dim: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """One Wan 2.2 I2V A14B expert (in_dim 36, no image branch), tiny widths."""
    return _save(path, wan_dit_state_dict(image_branch=False, dim=dim, layers=layers, seed=seed))


def write_multihead_wan(path: Path, *, image_branch: bool, heads: int, dim: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Wan whose width is split into `heads` attention heads. ComfyUI takes dim // 128 heads unless the file's
    metadata says otherwise (its `config.transformer`), so a dim-128 model can have the several heads that sequence
    parallelism over heads needs."""
    return _save(path, wan_dit_state_dict(image_branch=image_branch, dim=dim, layers=layers, seed=seed),
                 {"config": json.dumps({"transformer": {"num_heads": heads}})})


def write_wan21_vae(path: Path, *, dim: int = 8, seed: int = 0) -> Path:
    return _save(path, wan21_vae_state_dict(dim=dim, seed=seed))


def lora_target_shapes(dit_state: dict[str, torch.Tensor], targets=SVI_LORA_TARGETS) -> dict[str, torch.Size]:
    """Maps each LoRA target module path (e.g. 'blocks.0.self_attn.q') to its weight shape."""
    shapes = {}
    for key, tensor in dit_state.items():
        if key.startswith("blocks.") and key.endswith(".weight"):
            module = key[: -len(".weight")]
            if module.split(".", 2)[2] in targets:
                shapes[module] = tensor.shape
    return shapes


def random_lora(target_shapes: dict[str, torch.Size], *, rank: int = 4, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (A, B) pairs per module: A is (rank, in), B is (out, rank); never zero."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for module, (out_features, in_features) in sorted(target_shapes.items()):
        down = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
        up = torch.randn(out_features, rank, generator=generator) / math.sqrt(rank)
        pairs[module] = (down, up)
    return pairs


def lora_tensors_in_format(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], fmt: str,
                           alpha: float | None = None) -> dict[str, torch.Tensor]:
    """Names the same LoRA the way each tool in the wild does (svi-spec.md, 'LoRA files in the wild')."""
    out: dict[str, torch.Tensor] = {}
    for module, (down, up) in pairs.items():
        if fmt == "peft":
            out[f"{module}.lora_A.default.weight"] = down
            out[f"{module}.lora_B.default.weight"] = up
        elif fmt == "pipe_dit":
            out[f"pipe.dit.{module}.lora_A.weight"] = down
            out[f"pipe.dit.{module}.lora_B.weight"] = up
        elif fmt == "diffusion_model":
            out[f"diffusion_model.{module}.lora_A.weight"] = down
            out[f"diffusion_model.{module}.lora_B.weight"] = up
            if alpha is not None:
                out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(alpha))
        elif fmt == "kohya":
            stem = "lora_unet_" + module.replace(".", "_")
            out[f"{stem}.lora_down.weight"] = down
            out[f"{stem}.lora_up.weight"] = up
            out[f"{stem}.alpha"] = torch.tensor(float(alpha if alpha is not None else down.shape[0]))
        else:
            raise ValueError(f"unknown LoRA format {fmt!r}; known: {LORA_FORMATS}")
    return out


def write_lora(path: Path, pairs, fmt: str, *, alpha: float | None = None, dtype=torch.bfloat16) -> Path:
    tensors = {k: (v.to(dtype) if v.ndim else v) for k, v in lora_tensors_in_format(pairs, fmt, alpha).items()}
    return _save(path, tensors)


def write_peft_adapter_folder(folder: Path, pairs, *, rank: int, lora_alpha: float, use_rslora: bool = False,
                              rank_pattern: dict | None = None, alpha_pattern: dict | None = None) -> Path:
    """A PEFT adapter folder: adapter_model.safetensors (PEFT keys without '.default.') + adapter_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (down, up) in pairs.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = down
        tensors[f"base_model.model.{module}.lora_B.weight"] = up
    _save(folder / "adapter_model.safetensors", tensors)
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": lora_alpha, "use_rslora": use_rslora,
        "target_modules": sorted({m.split(".", 2)[2] for m in pairs}),
        "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def pose_encoder_tensors(dim: int, *, seed: int = 0, prefix: str = "dwpose_embedding.") -> dict[str, torch.Tensor]:
    """Random SVI-Dance pose-encoder weights named as the Dance LoRA file names them (beside its LoRA pairs)."""
    from ..svi.dance import PoseEncoder

    generator = torch.Generator().manual_seed(seed)
    return {prefix + name: _random_like(name, tensor.shape, generator)
            for name, tensor in PoseEncoder(dim).state_dict().items()}


def write_dance_lora(path: Path, dit_state: dict[str, torch.Tensor], *, rank: int = 4, seed: int = 0) -> Path:
    """An SVI-Dance LoRA: `pipe.dit.` LoRA pairs plus the pose encoder's `dwpose_embedding.*` tensors."""
    pairs = random_lora(lora_target_shapes(dit_state), rank=rank, seed=seed)
    tensors = {k: v.to(torch.bfloat16) for k, v in lora_tensors_in_format(pairs, "pipe_dit").items()}
    tensors.update(pose_encoder_tensors(dit_state["patch_embedding.weight"].shape[0], seed=seed + 1))
    return _save(path, tensors)


def pose_video_frames(count: int, width: int, height: int, *, phase: float = 0.0) -> torch.Tensor:
    """A stick figure dancing on black, IMAGE frames [count, height, width, 3] like a DWPose render (limbs in colours)."""
    y = torch.arange(height, dtype=torch.float32).view(-1, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, -1)
    frames = torch.zeros(count, height, width, 3)
    for f in range(count):
        swing = math.sin(phase + 2 * math.pi * f / 24)
        hip, neck = (0.5 * width, 0.62 * height), (0.5 * width, 0.3 * height)
        limbs = [(neck, hip, (1.0, 1.0, 0.0)),
                 (neck, (0.5 * width + 0.25 * width * swing, 0.2 * height), (1.0, 0.2, 0.2)),
                 (neck, (0.5 * width - 0.25 * width * swing, 0.45 * height), (0.2, 1.0, 0.2)),
                 (hip, (0.5 * width + 0.15 * width * swing, 0.95 * height), (0.2, 0.4, 1.0)),
                 (hip, (0.5 * width - 0.15 * width * swing, 0.95 * height), (1.0, 0.2, 1.0))]
        for (x0, y0), (x1, y1), colour in limbs:
            dx, dy = x1 - x0, y1 - y0
            t = (((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6)).clamp(0, 1)
            near = ((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2) <= (0.03 * width) ** 2
            frames[f][near] = torch.tensor(colour)
    return frames


def write_tiny_model_set(models_dir: Path, *, dim: int = 128, layers: int = 2, lora_rank: int = 4) -> dict[str, str]:
    """Writes every tiny file into ComfyUI's model folders; returns {role: file name as ComfyUI lists it}."""
    models_dir = Path(models_dir)
    wan21 = wan_dit_state_dict(image_branch=True, dim=dim, layers=layers, seed=1)
    high = wan_dit_state_dict(image_branch=False, dim=dim, layers=layers, seed=2)
    low = wan_dit_state_dict(image_branch=False, dim=dim, layers=layers, seed=3)
    _save(models_dir / TINY_FILES["wan21_i2v"], wan21)
    _save(models_dir / TINY_FILES["wan22_high"], high)
    _save(models_dir / TINY_FILES["wan22_low"], low)
    write_wan21_vae(models_dir / TINY_FILES["vae"], seed=4)
    shapes = lora_target_shapes(wan21)
    write_lora(models_dir / TINY_FILES["svi_lora_wan21"], random_lora(shapes, rank=lora_rank, seed=5), "peft")
    write_lora(models_dir / TINY_FILES["svi_lora_wan22_high"], random_lora(lora_target_shapes(high), rank=lora_rank, seed=6), "peft")
    write_lora(models_dir / TINY_FILES["svi_lora_wan22_low"], random_lora(lora_target_shapes(low), rank=lora_rank, seed=7), "peft")
    write_lora(models_dir / TINY_FILES["speed_lora_wan21"], random_lora(shapes, rank=lora_rank, seed=8), "kohya", alpha=lora_rank)
    write_dance_lora(models_dir / TINY_FILES["dance_lora_wan21"], wan21, rank=lora_rank, seed=9)
    return {role: rel.split("/", 1)[1] for role, rel in TINY_FILES.items()}


def write_reference_image(path: Path, *, width: int = 96, height: int = 80, seed: int = 0) -> Path:
    """A random RGB reference image (a smooth gradient plus noise, so resizing is visible)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(-1, 1, 1)
    x = torch.linspace(0, 1, width).view(1, -1, 1)
    colour = torch.rand(1, 1, 3, generator=generator)
    image = (0.6 * (x * colour + y * (1 - colour)) + 0.4 * torch.rand(height, width, 3, generator=generator)).clamp(0, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().to(torch.uint8).numpy()).save(path)
    return path
