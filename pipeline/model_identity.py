"""What identifies a MODEL for a run's identity (a resumed run must be made with the same weights and LoRAs).

A MODEL does not know its file, so the weights themselves are hashed, as they are stored: the raw bytes of
GGUF blocks (ComfyUI-GGUF's GGMLTensor), the fp8 data and scales of ComfyUI's quantized tensors, plain
tensors as they are. Nothing is dequantised or copied whole, and nothing is read from state_dict(), which
ComfyUI-GGUF answers with meta tensors that hold no data. Weights that a LoRA patched in place are read
from the patcher's backup, so a loaded, patched model has the fingerprint of its base weights (its LoRAs
are listed beside it).
"""

from __future__ import annotations

import hashlib
from itertools import chain

import torch

from .lora import LORA_ATTACHMENT

WHOLE_TENSOR_BYTES = 4 << 20  # tensors up to this size are hashed whole
SAMPLE_CHUNKS = 64  # larger ones: this many evenly spaced chunks of CHUNK_BYTES (the first and last included)
CHUNK_BYTES = 4096


def stored_tensors(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The plain tensors a parameter is stored as ('' for a plain or GGUF tensor; ComfyUI quantized: data + scales)."""
    from comfy.quant_ops import QuantizedTensor

    if isinstance(tensor, QuantizedTensor):
        return dict(sorted(tensor.state_dict().items()))
    return {"": tensor.as_subclass(torch.Tensor).detach()}


def _sample_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's stored bytes, or an evenly spaced sample of them, read with one small device-to-host copy."""
    if tensor.is_meta:
        return b"meta"
    flat = (tensor if tensor.is_contiguous() else tensor.contiguous()).reshape(-1).view(torch.uint8)
    if flat.numel() <= WHOLE_TENSOR_BYTES:
        return flat.cpu().numpy().tobytes()
    last = flat.numel() - CHUNK_BYTES
    starts = [round(i * last / (SAMPLE_CHUNKS - 1)) for i in range(SAMPLE_CHUNKS)]
    return torch.cat([flat[start:start + CHUNK_BYTES] for start in starts]).cpu().numpy().tobytes()


def _describe(name: str, tensor: torch.Tensor) -> bytes:
    storage = getattr(tensor, "tensor_type", None)  # a GGUF quantization type
    return f"{name}|{tuple(tensor.shape)}|{type(tensor).__name__}|{getattr(storage, 'name', storage)}".encode()


def weights_digest(model_patcher) -> str:
    """sha256 over every parameter and buffer of the diffusion model: name, logical shape, storage kind, stored bytes."""
    model = model_patcher.model
    backup = getattr(model_patcher, "backup", {})
    digest = hashlib.sha256()
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if not name.startswith("diffusion_model."):
            continue
        if name in backup:
            tensor = backup[name].weight
        digest.update(_describe(name, tensor))
        for part, stored in stored_tensors(tensor).items():
            digest.update(f"{part}|{stored.dtype}|{tuple(stored.shape)}".encode())
            digest.update(_sample_bytes(stored))
    return digest.hexdigest()


def model_fingerprint(model_patcher) -> dict:
    """Identifies the base model and its LoRAs without file names."""
    if model_patcher is None:
        return {}
    return {"weights_sha256": weights_digest(model_patcher)[:16], "loras": model_patcher.get_attachment(LORA_ATTACHMENT) or []}
