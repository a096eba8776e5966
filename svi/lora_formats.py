"""Reading LoRA files in every naming scheme SVI LoRAs ship in, into ComfyUI's canonical keys.

Plain ComfyUI drops the official SVI files' PEFT keys (`blocks.0.self_attn.q.lora_A.default.weight`,
no model prefix) with a "lora key not loaded" warning and users get noise. Here every format is
renamed to `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` / `.alpha` (the names
ComfyUI's own LoRA patcher maps), and anything that cannot be placed is reported, never skipped.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .dance import POSE_ENCODER_KEY, PoseEncoder

MODULE_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "pipe.dit.", "dit.")
KOHYA_PREFIX = "lora_unet_"
_PAIR_SUFFIXES = {
    ".lora_A.default.weight": "A", ".lora_B.default.weight": "B",
    ".lora_A.weight": "A", ".lora_B.weight": "B",
    ".lora_down.weight": "A", ".lora_up.weight": "B",
}
_DIFF_SUFFIXES = (".diff_b", ".diff")  # full-weight deltas that speed LoRAs (lightx2v) carry beside the pairs


class LoraFormatError(ValueError):
    """A LoRA file that cannot be applied as a whole; the message names what did not match."""


@dataclass
class NormalizedLora:
    tensors: dict[str, torch.Tensor]  # ComfyUI canonical keys
    modules: list[str]  # module paths with a LoRA pair, e.g. 'blocks.0.self_attn.q'
    source_format: str
    diff_keys: list[str] = field(default_factory=list)
    pose_encoder: dict[str, torch.Tensor] = field(default_factory=dict)  # SVI-Dance's pose encoder ('0.weight', ...)


@dataclass(frozen=True)
class PeftScaling:
    """PEFT's scale per module: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, with per-module patterns."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    @classmethod
    def from_adapter_folder(cls, folder: Path) -> "PeftScaling":
        from peft import LoraConfig

        config = LoraConfig.from_pretrained(str(folder))
        return cls(int(config.r), float(config.lora_alpha), bool(config.use_rslora),
                   dict(config.rank_pattern or {}), dict(config.alpha_pattern or {}))

    def scale(self, module: str) -> float:
        from peft.utils.other import get_pattern_key

        rank = self.rank_pattern.get(get_pattern_key(self.rank_pattern.keys(), module), self.r)
        alpha = self.alpha_pattern.get(get_pattern_key(self.alpha_pattern.keys(), module), self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _strip_prefix(key: str) -> str:
    for prefix in MODULE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _module_of(stem: str, underscored_to_module: dict[str, str]) -> str:
    """The module path a key stem names; kohya's underscores are resolved against the model's modules."""
    if stem.startswith(KOHYA_PREFIX):
        return underscored_to_module.get(stem[len(KOHYA_PREFIX):], stem)
    return _strip_prefix(stem)


def detect_format(keys) -> str:
    keys = list(keys)
    if any(k.startswith(KOHYA_PREFIX) for k in keys):
        return "kohya"
    if any(".default.weight" in k for k in keys):
        return "peft"
    if any(k.startswith("pipe.dit.") for k in keys):
        return "pipe.dit"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft adapter"
    if any(k.startswith("diffusion_model.") for k in keys):
        return "diffusion_model"
    return "unprefixed"


def _shape_text(shape) -> str:
    return "x".join(str(int(size)) for size in shape)


def pair_problem(down: torch.Tensor, up: torch.Tensor, weight_shape: tuple[int, ...]) -> str | None:
    """Why ComfyUI's LoRA patch, reshape(up.flatten(1) @ down.flatten(1), weight shape), would not fit the weight.

    ComfyUI does not refuse such a pair: it logs the error and leaves the weight as it was. A fitting pair has
    down = (rank, *fan-in of the weight) (or (rank, product of the fan-in) for a convolution) and
    up = (out features, rank, 1, ...)."""
    if len(weight_shape) < 2:
        return (f"the model's weight is 1-D ({_shape_text(weight_shape)}, a norm or a bias): a LoRA pair cannot patch it "
                "(a LoRA carries a '.diff' for such a weight)")
    if down.ndim < 2 or up.ndim < 2:
        return f"lora_A ({_shape_text(down.shape)}) and lora_B ({_shape_text(up.shape)}) must both be at least 2-D"
    rank = down.shape[0]
    if up.shape[1] != rank or math.prod(up.shape[2:]) != 1:
        return f"lora_A rank {rank} does not match lora_B rank {up.shape[1]} (lora_B is {_shape_text(up.shape)})"
    fan_in = tuple(weight_shape[1:])
    down_fan_in = tuple(down.shape[1:])
    if up.shape[0] != weight_shape[0] or (down_fan_in != fan_in and down_fan_in != (math.prod(fan_in),)):
        return (f"the LoRA makes a {up.shape[0]}x{_shape_text(down_fan_in)} update but the model's weight is "
                f"{_shape_text(weight_shape)}: the LoRA is for another model size (e.g. 1.3B vs 14B)")
    return None


def normalize_lora(tensors: dict[str, torch.Tensor], model_modules: dict[str, tuple[int, ...]],
                   scaling: PeftScaling | None = None, *,
                   model_biases: dict[str, tuple[int, ...]] | None = None) -> NormalizedLora:
    """Renames a LoRA's tensors onto the model's module paths, refusing any that would not patch its weight.

    `model_modules` maps the model's weight-bearing module paths without 'diffusion_model.'
    (e.g. 'blocks.0.ffn.0') to their weights' logical shapes; kohya's underscored names are resolved
    against it. `model_biases` maps modules to their bias shapes, against which '.diff_b' deltas are
    checked (unchecked without it). Raises LoraFormatError naming every tensor that is not a LoRA
    weight or names no module of the model, and the first module whose tensors do not fit its weight.
    """
    underscored = {m.replace(".", "_"): m for m in model_modules}
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    alphas: dict[str, torch.Tensor] = {}
    diffs: dict[str, torch.Tensor] = {}
    pose_encoder: dict[str, torch.Tensor] = {}
    unsupported: list[str] = []
    for key, tensor in tensors.items():
        part = next((s for s in _PAIR_SUFFIXES if key.endswith(s)), None)
        if POSE_ENCODER_KEY in key:
            pose_encoder[key.split(POSE_ENCODER_KEY, 1)[1]] = tensor
        elif part is not None:
            pairs[_module_of(key[: -len(part)], underscored)][_PAIR_SUFFIXES[part]] = tensor
        elif key.endswith(".alpha"):
            alphas[_module_of(key[: -len(".alpha")], underscored)] = tensor
        elif key.endswith(_DIFF_SUFFIXES):
            suffix = next(s for s in _DIFF_SUFFIXES if key.endswith(s))
            diffs[_module_of(key[: -len(suffix)], underscored) + suffix] = tensor
        else:
            unsupported.append(key)
    if unsupported:
        raise LoraFormatError(
            f"{len(unsupported)} tensors are not LoRA weights and are not supported by this loader "
            f"(e.g. {sorted(unsupported)[:5]}); of the extra branches SVI LoRAs carry, only SVI-Dance's pose encoder "
            f"({POSE_ENCODER_KEY}*) is supported")
    if pose_encoder:
        try:
            PoseEncoder.from_weights(pose_encoder)
        except ValueError as error:
            raise LoraFormatError(str(error)) from None
    incomplete = sorted({m for m, p in pairs.items() if set(p) != {"A", "B"}} | (set(alphas) - set(pairs)))
    if incomplete:
        raise LoraFormatError(f"{len(incomplete)} modules have only half of a LoRA pair (A without B, B without A, or an "
                              f"alpha without its pair): {incomplete[:5]}")
    bad_alphas = sorted(m for m, alpha in alphas.items() if alpha.numel() != 1)
    if bad_alphas:
        raise LoraFormatError(f"{bad_alphas[0]}: alpha must be one number, got a tensor of shape {tuple(alphas[bad_alphas[0]].shape)}")
    if not pairs and not diffs:
        raise LoraFormatError("the file holds no LoRA weights at all")
    unknown = sorted({m for m in pairs if m not in model_modules} |
                     {k.rsplit(".", 1)[0] for k in diffs if k.rsplit(".", 1)[0] not in model_modules})
    if unknown:
        raise LoraFormatError(
            f"{len(unknown)} of {len(pairs)} LoRA modules name no module of this model (e.g. {unknown[:5]}): "
            "the LoRA is for another model or architecture")

    out: dict[str, torch.Tensor] = {}
    for module, pair in sorted(pairs.items()):
        down, up = pair["A"], pair["B"]
        problem = pair_problem(down, up, tuple(model_modules[module]))
        if problem:
            raise LoraFormatError(f"{module}: {problem}")
        out[f"diffusion_model.{module}.lora_A.weight"] = down
        out[f"diffusion_model.{module}.lora_B.weight"] = up
        rank = down.shape[0]
        if scaling is not None:
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(scaling.scale(module) * rank)
        elif module in alphas:
            out[f"diffusion_model.{module}.alpha"] = alphas[module].float()
    for key, tensor in sorted(diffs.items()):
        module, kind = key.rsplit(".", 1)
        target = tuple(model_modules[module]) if kind == "diff" else (model_biases or {}).get(module, "no bias")
        if kind == "diff" or model_biases is not None:
            if tuple(tensor.shape) != target:
                what = "weight" if kind == "diff" else "bias"
                raise LoraFormatError(f"{module}: the LoRA's '.{kind}' is {_shape_text(tensor.shape)} but the model's {what} is "
                                      f"{target if isinstance(target, str) else _shape_text(target)}: it would not be added")
        out[f"diffusion_model.{key}"] = tensor
    return NormalizedLora(out, sorted(pairs), detect_format(tensors), sorted(diffs), pose_encoder)


def check_block_coverage(modules: list[str]) -> None:
    """Refuses a LoRA where some block has fewer of the trained modules than the others: a partial match."""
    per_block: dict[str, set[str]] = defaultdict(set)
    for module in modules:
        match = re.match(r"blocks\.(\d+)\.(.+)$", module)
        if match:
            per_block[match.group(1)].add(match.group(2))
    if not per_block:
        return
    expected = set().union(*per_block.values())
    partial = {block: sorted(expected - found) for block, found in per_block.items() if found != expected}
    if partial:
        block, missing = sorted(partial.items(), key=lambda kv: int(kv[0]))[0]
        raise LoraFormatError(
            f"{len(partial)} blocks are only partly covered (block {block} lacks {missing}): "
            "the file matched only part of the model")


def read_lora_source(path: Path) -> tuple[dict[str, torch.Tensor], PeftScaling | None]:
    """A .safetensors file, or a PEFT adapter folder (adapter_model.safetensors + adapter_config.json)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.name == "adapter_model.safetensors":  # a PEFT adapter picked by its weights file in ComfyUI's loras list
        if not (path.parent / "adapter_config.json").is_file():
            raise LoraFormatError(
                f"{path.name} is a PEFT adapter's weights, but its adapter_config.json is not beside it in {path.parent}: "
                "the adapter's scale (lora_alpha / r) is in that file; copy it next to the weights")
        path = path.parent
    if path.is_dir():
        config = path / "adapter_config.json"
        weights = path / "adapter_model.safetensors"
        if not config.is_file() or not weights.is_file():
            raise LoraFormatError(f"{path} is a folder but not a PEFT adapter (needs adapter_config.json and adapter_model.safetensors)")
        try:
            json.loads(config.read_text())
            scaling = PeftScaling.from_adapter_folder(path)
        except (ValueError, TypeError) as error:
            raise LoraFormatError(f"{config} is not a readable PEFT adapter config: {error}") from error
        return load_file(str(weights)), scaling
    if path.suffix != ".safetensors":
        raise LoraFormatError(f"only .safetensors LoRA files are loaded (no pickled checkpoints): {path.name}")
    return load_file(str(path)), None
