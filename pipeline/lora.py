"""Applying LoRA files of any format through ComfyUI's own LoRA patcher, on a ModelPatcher clone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..svi.run_store import sha256_file
from ..svi.lora_formats import LoraFormatError, check_block_coverage, normalize_lora, read_lora_source


LORA_ATTACHMENT = "svi_loras"  # what a run manifest records about the model's LoRAs


@dataclass(frozen=True)
class LoraReport:
    name: str
    source_format: str
    modules: int
    tensors_patched: int
    strength: float

    def line(self) -> str:
        return (f"{self.name}: {self.source_format} format, {self.modules} modules, "
                f"{self.tensors_patched} weights patched at strength {self.strength:g}")


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


def apply_lora(model_patcher, path: Path, strength: float, *, name: str | None = None):
    """Returns (patched clone, report). Every tensor of the file must land on the model, or LoraFormatError."""
    import comfy.lora

    tensors, scaling = read_lora_source(Path(path))
    shapes, biases = model_weight_shapes(model_patcher), _module_tensor_shapes(model_patcher, "bias")
    normalized = normalize_lora(tensors, shapes, scaling, model_biases=biases)
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
    report = LoraReport(name or Path(path).name, normalized.source_format, len(normalized.modules), len(applied), strength)
    return patched, report
