"""SVI-Dance on ComfyUI's model: the pose tokens added before the first transformer block, on a ModelPatcher clone."""

from __future__ import annotations

import torch

from ..svi.dance import PoseEncoder, check_pose_length, clip_pose_frames, fit_pose_frames
from .clips import SVIInputError
from .lora import POSE_ENCODER_ATTACHMENT

FIRST_BLOCK = ("double_block", 0)  # how ComfyUI's Wan model names its first block in transformer_options' patches_replace


def pose_encoder_of(model_patcher) -> PoseEncoder:
    """The pose encoder the Dance LoRA brought (SVI LoRA Stack attaches it), on the device the model samples on."""
    import comfy.model_management

    weights = model_patcher.get_attachment(POSE_ENCODER_ATTACHMENT)
    if weights is None:
        raise SVIInputError("1.0 Dance needs the SVI-Dance pose encoder: load the SVI-Dance LoRA (svi-dance.safetensors) "
                            "with SVI LoRA Stack, which reads the encoder from it")
    return PoseEncoder.from_weights(weights).to(comfy.model_management.get_torch_device())


def prepare_pose_video(pose: torch.Tensor, width: int, height: int, *, num_clips: int, clip_frames: int,
                       motion_frames: int) -> torch.Tensor:
    """The pose video (IMAGE frames) fitted to the clip size, after checking it covers every clip."""
    if pose.ndim != 4 or pose.shape[-1] < 3:
        raise SVIInputError(f"the pose video must be IMAGE frames [F, H, W, 3], got shape {tuple(pose.shape)}")
    try:
        check_pose_length(pose.shape[0], num_clips, clip_frames, motion_frames)
    except ValueError as error:
        raise SVIInputError(str(error)) from None
    return fit_pose_frames(pose, width, height)


def clip_pose_tokens(encoder: PoseEncoder, pose: torch.Tensor, clip_index: int, clip_frames: int, motion_frames: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """Clip k's pose tokens [1, tokens, dim], computed in float32 as the official code does, kept in `dtype`."""
    return encoder.tokens(clip_pose_frames(pose, clip_index, clip_frames, motion_frames)).to(dtype)


def with_pose_tokens(model_patcher, tokens: torch.Tensor):
    """A clone whose first block sees the patch-embedded input plus the pose tokens, in every pass (cond and uncond)."""

    def add_pose(args: dict, extra: dict) -> dict:
        image = args["img"]
        if image.shape[1] != tokens.shape[1] or image.shape[2] != tokens.shape[2]:
            raise SVIInputError(f"the pose tokens {tuple(tokens.shape[1:])} do not match the model's input tokens "
                                f"{tuple(image.shape[1:])}: the pose video must be fitted to this clip size and length")
        return extra["original_block"]({**args, "img": image + tokens.to(device=image.device, dtype=image.dtype)})

    patched = model_patcher.clone()
    patched.set_model_patch_replace(add_pose, "dit", *FIRST_BLOCK)
    return patched
