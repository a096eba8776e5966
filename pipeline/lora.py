"""Applying LoRA files of any format through ComfyUI's own LoRA patcher, on a ModelPatcher clone."""

from __future__ import annotations

import math
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


def _module_tensor_shapes(model_patcher, leaf: str) -> dict[str, tuple[int, ...]]:
    """'blocks.0.ffn.0' -> the logical shape of its `leaf` tensor, read from the modules themselves.

    Not from state_dict(): ComfyUI-GGUF answers that with meta tensors of the raw byte shape (a Q8_0 256x256
    weight is 256x272 bytes there); its GGMLTensor and ComfyUI's quantized tensors give the logical shape."""
    import torch

    shapes = {}
    for name, module in model_patcher.model.diffusion_model.named_modules():
        tensor = getattr(module, leaf, None)
        if name and isinstance(tensor, torch.Tensor):
            shapes[name] = tuple(tensor.shape)
    return shapes


def model_weight_shapes(model_patcher) -> dict[str, tuple[int, ...]]:
    """The diffusion model's weight-bearing modules ('blocks.0.ffn.0' -> weight shape)."""
    return _module_tensor_shapes(model_patcher, "weight")


def _patched_weight_changes(patcher, key: str, shape: tuple[int, ...]) -> bool:
    """Whether ComfyUI's patch math changes `key` with this LoRA's patch (its last one there).

    comfy.lora.calculate_weight is what ComfyUI's patcher runs at load time and ComfyUI-GGUF at every forward; on a
    patch that does not fit it logs the error and returns the weight as it was. It needs only the weight's shape, so
    it runs here on a zero weight of the model's logical shape on the CPU: no model weight is copied or dequantised.
    A strength of 0 is probed at 1 (the patch itself must still fit)."""
    import comfy.lora
    import torch

    strength, adapter, *rest = patcher.patches[key][-1]
    weight = torch.zeros(shape, dtype=torch.float32)
    patched = comfy.lora.calculate_weight([(strength or 1.0, adapter, *rest)], weight.clone(), key)
    return bool(torch.isfinite(patched).all()) and not torch.equal(patched, weight)


def _check_weights_change(patcher, normalized, shapes: dict[str, tuple[int, ...]], biases, name: str) -> None:
    """Refuses a LoRA of which one probed weight (its smallest module, and its smallest '.diff' target) would not change."""
    probes = []
    if normalized.modules:
        module = min(normalized.modules, key=lambda m: math.prod(shapes[m]))
        probes.append((f"diffusion_model.{module}.weight", shapes[module]))
    if normalized.diff_keys:
        targets = [(f"diffusion_model.{key[:-len('.diff')]}.weight", shapes[key[:-len(".diff")]]) if key.endswith(".diff")
                   else (f"diffusion_model.{key[:-len('.diff_b')]}.bias", biases[key[:-len(".diff_b")]])
                   for key in normalized.diff_keys]
        probes.append(min(targets, key=lambda target: math.prod(target[1])))
    for key, shape in probes:
        if not _patched_weight_changes(patcher, key, shape):
            raise LoraFormatError(f"{name}: ComfyUI's patcher leaves {key[len('diffusion_model.'):]} unchanged (its update does "
                                  "not fit the weight, or is zero or not finite); see ComfyUI's log for its error")


def apply_lora(model_patcher, path: Path, strength: float, *, name: str | None = None, reweightable: bool = False):
    """Returns (patched clone, report). Every tensor of the file must land on the model, or LoraFormatError.

    `reweightable`: the clone also carries the LoRA's patches, so `with_style_strength` can change its strength later
    (SVI Long Video's per-clip style=...)."""
    import comfy.lora

    tensors, scaling = read_lora_source(Path(path))
    shapes, biases = model_weight_shapes(model_patcher), _module_tensor_shapes(model_patcher, "bias")
    normalized = normalize_lora(tensors, shapes, scaling, model_biases=biases)
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
    _check_weights_change(patched, normalized, shapes, biases, name or Path(path).name)
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
