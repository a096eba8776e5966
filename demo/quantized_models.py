"""Tiny random-weight Wan files in the quantised formats people run: GGUF and ComfyUI's fp8_scaled.

- GGUF, as city96/ComfyUI-GGUF's UnetLoaderGGUF reads it: architecture "wan", the checkpoint's own
  key names without a prefix, 1-D tensors and the modulation in F32, the 5-D patch embedding in F32
  (as the converter's fix_5d_tensors step adds it back), every other weight in the quantisation.
  `Q8_0` quantises every 2-D weight (head and embeddings too, as some converters do); `Q4_K` quantises
  the blocks' Linear weights and keeps the embeddings and the head in BF16 (as city96's Wan files keep
  them in the source precision; ComfyUI-GGUF treats BF16 as a quantised type too). The `gguf`
  package quantises Q8_0 and BF16 itself but no K-quant, so Q4_K blocks are written by
  `quantize_q4_k` below and checked against gguf's own dequantiser by the tests.
- fp8_scaled, as ComfyUI saves it (and Comfy-Org's repackaged Wan files ship): the blocks' Linear
  weights in float8_e4m3fn with a 0-dim float32 `<layer>.scale_weight` each (weight = fp8 * scale),
  an empty float8_e4m3fn `scaled_fp8` marker tensor, everything else in fp16. ComfyUI v0.33.0
  converts that layout (comfy.utils.convert_old_quants) into its mixed-precision ops. The newer
  layout (`<layer>.weight_scale` and a `_quantization_metadata` JSON in the safetensors metadata)
  is written by `fp8_layout="metadata"`.

Every file says RANDOM WEIGHTS in its metadata, like demo/tiny_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .tiny_models import (RANDOM_WEIGHTS_NOTE, TINY_FILES, _save, lora_target_shapes, random_lora, wan_dit_state_dict,
                          write_lora, write_wan21_vae)

QUANTIZED_FORMATS = ("Q8_0", "Q4_K", "fp8_scaled")
QUANTIZED_DIM = 256  # a K-quant block spans 256 values of a row, so every Linear input width is a multiple of 256
QK_K = 256  # values per K-quant super-block
Q4_K_BLOCK_BYTES = 2 + 2 + 12 + QK_K // 2  # d, dmin (fp16), packed 6-bit scales and mins, 4-bit quants

_FP16_KEPT = (".modulation", "patch_embedding.")


def _is_block_linear(name: str, shape) -> bool:
    return name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2


def quantize_q4_k(rows: np.ndarray) -> np.ndarray:
    """GGML's Q4_K blocks for float rows (row length a multiple of 256): (rows, bytes) uint8.

    A 256-value super-block holds 8 sub-blocks of 32 values; value = d * sc[j] * q - dmin * m[j], with
    q in 0..15 (4 bits) and sc[j], m[j] in 0..63 (6 bits) scaled by the super-block's fp16 d and dmin.
    Here each sub-block's scale and minimum come straight from its range (ggml's own encoder also searches
    for a better fit; the format and its decoder are the same). Byte layout (ggml's block_q4_K): d, dmin,
    scales[12] (bytes 0-3: sc[0..3] in the low 6 bits, sc[4..7] >> 4 in the top 2; bytes 4-7: the same for
    m; bytes 8-11: sc[4..7] & 15 low nibble, m[4..7] & 15 high nibble), then qs[128], where byte
    32 g + l holds q[64 g + l] in its low nibble and q[64 g + 32 + l] in its high nibble.
    """
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] % QK_K:
        raise ValueError(f"Q4_K needs rows whose length is a multiple of {QK_K}, got shape {rows.shape}")
    blocks = rows.reshape(-1, 8, 32)
    low = np.minimum(blocks.min(axis=-1), 0.0)
    high = np.maximum(blocks.max(axis=-1), low)
    sub_scale, sub_min = (high - low) / 15.0, -low
    d = (sub_scale.max(axis=-1) / 63.0).astype(np.float16)
    dmin = (sub_min.max(axis=-1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(sub_scale / d32), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin32 > 0, np.rint(sub_min / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[..., None]
        offset = (dmin32 * m)[..., None]
        q = np.where(step > 0, np.rint((blocks + offset) / step), 0).clip(0, 15).astype(np.uint8)
    scales = np.empty((blocks.shape[0], 12), dtype=np.uint8)
    scales[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, QK_K // 2)
    out = np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), scales, qs], axis=1)
    return out.reshape(rows.shape[0], -1)


def gguf_tensor_type(name: str, shape, quant: str):
    """The GGML type a tensor is stored in for `quant` ('Q8_0' or 'Q4_K'), following the converters' rules."""
    import gguf

    types = gguf.GGMLQuantizationType
    if len(shape) < 2 or any(part in name for part in _FP16_KEPT):
        return types.F32
    if quant == "Q8_0":
        block = gguf.GGML_QUANT_SIZES[types.Q8_0][0]
        return types.Q8_0 if shape[-1] % block == 0 else types.F16
    if quant == "Q4_K":
        if _is_block_linear(name, shape) and shape[-1] % QK_K == 0:
            return types.Q4_K
        return types.BF16
    raise ValueError(f"unknown GGUF quantisation {quant!r}; known: Q8_0, Q4_K")


def _gguf_data(tensor: torch.Tensor, qtype) -> np.ndarray:
    import gguf.quants

    values = tensor.float().numpy()
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(values.reshape(-1, values.shape[-1])).reshape(*values.shape[:-1], -1)
    return gguf.quants.quantize(values, qtype)


def write_wan_gguf(path: Path, state: dict[str, torch.Tensor], quant: str) -> Path:
    """A Wan DiT state dict as a GGUF file; returns the path. Tensor types: `gguf_tensor_type`."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path=None, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_string("svi_infinity", RANDOM_WEIGHTS_NOTE)
    for name, tensor in state.items():
        qtype = gguf_tensor_type(name, tuple(tensor.shape), quant)
        writer.add_tensor(name, _gguf_data(tensor, qtype), raw_dtype=qtype)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def fp8_scaled_state_dict(state: dict[str, torch.Tensor], *, fp8_layout: str = "scaled_fp8"):
    """(tensors, safetensors metadata) of ComfyUI's fp8_scaled layout: per-tensor absmax scales for the blocks' Linears."""
    fp8 = torch.float8_e4m3fn
    out: dict[str, torch.Tensor] = {}
    layers = {}
    for name, tensor in state.items():
        if _is_block_linear(name, tensor.shape):
            layer = name[: -len(".weight")]
            scale = tensor.float().abs().amax() / torch.finfo(fp8).max
            out[name] = (tensor.float() / scale).to(fp8)
            out[f"{layer}.scale_weight" if fp8_layout == "scaled_fp8" else f"{layer}.weight_scale"] = scale.reshape(())
            layers[layer] = {"format": "float8_e4m3fn"}
        else:
            out[name] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
    if fp8_layout == "scaled_fp8":
        out["scaled_fp8"] = torch.tensor([], dtype=fp8)
        return out, {}
    if fp8_layout == "metadata":
        return out, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    raise ValueError(f"unknown fp8 layout {fp8_layout!r}; known: scaled_fp8, metadata")


def write_wan_fp8_scaled(path: Path, state: dict[str, torch.Tensor], *, fp8_layout: str = "scaled_fp8") -> Path:
    tensors, metadata = fp8_scaled_state_dict(state, fp8_layout=fp8_layout)
    return _save(path, tensors, metadata)


def write_quantized_model(path: Path, state: dict[str, torch.Tensor], fmt: str) -> Path:
    """`fmt` is one of QUANTIZED_FORMATS; GGUF files end in .gguf, fp8_scaled in .safetensors."""
    if fmt == "fp8_scaled":
        return write_wan_fp8_scaled(path, state)
    return write_wan_gguf(path, state, fmt)


def quantized_file_name(role: str, fmt: str) -> str:
    """'wan22_high', 'Q8_0' -> 'svi_tiny_wan22_i2v_high_noise_Q8_0_random.gguf' (names as ComfyUI lists them)."""
    stem = Path(TINY_FILES[role]).name.removesuffix("_random.safetensors")
    return f"{stem}_{fmt}_random.{'safetensors' if fmt == 'fp8_scaled' else 'gguf'}"


def write_quantized_model_set(models_dir: Path, fmt: str, *, dim: int = QUANTIZED_DIM, layers: int = 2,
                              lora_rank: int = 4) -> dict[str, str]:
    """The tiny model set of write_tiny_model_set in one quantised format, with LoRAs for its width.

    Returns {role: file name as ComfyUI lists it}; the GGUF models go to diffusion_models/ (UnetLoaderGGUF
    lists .gguf files there), fp8_scaled ones too (for the plain UNETLoader)."""
    models_dir = Path(models_dir)
    names: dict[str, str] = {}
    states = {}
    for role, image_branch, seed in (("wan21_i2v", True, 1), ("wan22_high", False, 2), ("wan22_low", False, 3)):
        states[role] = wan_dit_state_dict(image_branch=image_branch, dim=dim, ffn_dim=2 * dim, layers=layers, seed=seed)
        names[role] = quantized_file_name(role, fmt)
        write_quantized_model(models_dir / "diffusion_models" / names[role], states[role], fmt)
    names["vae"] = Path(TINY_FILES["vae"]).name
    write_wan21_vae(models_dir / TINY_FILES["vae"], seed=4)
    for role, model_role, fmt_name, seed in (("svi_lora_wan21", "wan21_i2v", "peft", 5),
                                             ("svi_lora_wan22_high", "wan22_high", "peft", 6),
                                             ("svi_lora_wan22_low", "wan22_low", "peft", 7),
                                             ("speed_lora_wan21", "wan21_i2v", "kohya", 8)):
        names[role] = f"svi_tiny_{role}_dim{dim}_{fmt_name}_random.safetensors"
        pairs = random_lora(lora_target_shapes(states[model_role]), rank=lora_rank, seed=seed)
        write_lora(models_dir / "loras" / names[role], pairs, fmt_name, alpha=lora_rank if fmt_name == "kohya" else None)
    return names
