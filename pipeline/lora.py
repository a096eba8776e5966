"""Applying LoRA files of any format through ComfyUI's own LoRA patcher, on a ModelPatcher clone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..svi.dance import PoseEncoder
from ..svi.run_store import sha256_file
from ..svi.lora_formats import LoraFormatError, check_block_coverage, normalize_lora, read_lora_source


LORA_ATTACHMENT = "svi_loras"  # what a run manifest records about the model's LoRAs
POSE_ENCODER_ATTACHMENT = "svi_pose_encoder"  # SVI-Dance's pose encoder weights, read from the Dance LoRA file
STYLE_LORA_ATTACHMENT = "svi_style_lora"  # the style LoRA's patches and strength, so SVI Long Video can re-weight it per clip


@dataclass(frozen=True)
class LoraReport:
    name: str
    source_format: str
    modules: int
    tensors_patched: int
    strength: float
    pose_encoder_tensors: int = 0

    def line(self) -> str:
        pose = f"; SVI-Dance pose encoder ({self.pose_encoder_tensors} tensors) for mode 1.0 Dance" if self.pose_encoder_tensors else ""
        return (f"{self.name}: {self.source_format} format, {self.modules} modules, "
                f"{self.tensors_patched} weights patched at strength {self.strength:g}{pose}")


def model_weight_shapes(model_patcher) -> dict[str, tuple[int, ...]]:
    """The diffusion model's weight-bearing modules ('blocks.0.ffn.0' -> weight shape)."""
    prefix = "diffusion_model."
    return {
        key[len(prefix): -len(".weight")]: tuple(tensor.shape)
        for key, tensor in model_patcher.model.state_dict().items()
        if key.startswith(prefix) and key.endswith(".weight")
    }


def apply_lora(model_patcher, path: Path, strength: float, *, name: str | None = None, reweightable: bool = False):
    """Returns (patched clone, report). Every tensor of the file must land on the model, or LoraFormatError.

    `reweightable`: the clone also carries the LoRA's patches, so `with_style_strength` can change its strength later
    (SVI Long Video's per-clip style=...)."""
    import comfy.lora

    tensors, scaling = read_lora_source(Path(path))
    shapes = model_weight_shapes(model_patcher)
    normalized = normalize_lora(tensors, shapes, scaling)
    if normalized.pose_encoder:
        model_dim = shapes["patch_embedding"][0]
        encoder_dim = PoseEncoder.from_weights(normalized.pose_encoder).dim
        if encoder_dim != model_dim:
            raise LoraFormatError(f"{Path(path).name}: its pose encoder makes {encoder_dim}-wide tokens but the model's are "
                                  f"{model_dim} wide: the Dance LoRA is for another model size")
    check_block_coverage(normalized.modules)
    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    patches = comfy.lora.load_lora(normalized.tensors, key_map, log_missing=False)
    expected = len(normalized.modules) + len(normalized.diff_keys)
    if len(patches) != expected:
        raise LoraFormatError(f"ComfyUI's patcher accepted {len(patches)} of {expected} LoRA modules of {Path(path).name}")
    patched = model_patcher.clone()
    applied = patched.add_patches(patches, strength)
    missing = sorted(set(patches) - set(applied))
    if missing:
        raise LoraFormatError(f"{len(missing)} LoRA weights found no weight in the model: {missing[:5]}")
    applied_loras = list(model_patcher.get_attachment(LORA_ATTACHMENT) or [])
    source = Path(path)
    applied_loras.append({"name": name or source.name, "strength": strength,
                          "sha256": sha256_file(source if source.is_file() else source / "adapter_model.safetensors")})
    patched.set_attachments(LORA_ATTACHMENT, applied_loras)
    if normalized.pose_encoder:
        patched.set_attachments(POSE_ENCODER_ATTACHMENT, normalized.pose_encoder)
    if reweightable:
        patched.set_attachments(STYLE_LORA_ATTACHMENT, {"name": name or source.name, "strength": strength, "patches": patches})
    report = LoraReport(name or Path(path).name, normalized.source_format, len(normalized.modules), len(applied), strength,
                        len(normalized.pose_encoder))
    return patched, report


def has_style_lora(model_patcher) -> bool:
    return model_patcher.get_attachment(STYLE_LORA_ATTACHMENT) is not None


def with_style_strength(model_patcher, strength: float):
    """A clone whose style LoRA (attached by SVI LoRA Stack) acts at `strength` instead of the stack's strength.

    ComfyUI's LoRA patches add up, so the same patches are added once more at the difference; the clone's other
    patches (SVI, speed LoRAs) are untouched, and the model given is not changed.
    """
    style = model_patcher.get_attachment(STYLE_LORA_ATTACHMENT)
    if style is None:
        raise LoraFormatError("this model has no style LoRA to re-weight: choose one in SVI LoRA Stack's style_lora")
    patched = model_patcher.clone()
    if strength != style["strength"]:
        patched.add_patches(style["patches"], strength - style["strength"])
    return patched
