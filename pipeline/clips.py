"""One SVI clip on ComfyUI objects: anchor encoding, conditioning, few-step sampling, decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..svi.conditioning import (SVIMode, anchor_only_mask, latent_frames_for, pixel_mode_frames,
                                pro_latent_conditioning)
from ..svi.plan import split_at_boundary
from ..svi.validation import MAX_SIDE, clip_side, raise_if_any
from .fast_vae import decode_frames

WAN_LATENT_CHANNELS = 16


class SVIInputError(ValueError):
    """Bad input a user can fix; the message says how."""


def check_clip_size(width: int, height: int) -> None:
    raise_if_any(clip_side("width", width, MAX_SIDE) + clip_side("height", height, MAX_SIDE))


def wan_latent_format(vae):
    """Wan 2.1 / 2.2 A14B latents (16 channels); anything else is another model family."""
    import comfy.latent_formats

    channels = getattr(vae, "latent_channels", None)
    if channels != WAN_LATENT_CHANNELS or getattr(vae, "latent_dim", None) != 3:
        raise SVIInputError(f"this VAE makes {channels}-channel latents; SVI needs the Wan 2.1 VAE (16-channel video latents), "
                            "which Wan 2.1 I2V 14B and Wan 2.2 I2V A14B both use")
    return comfy.latent_formats.Wan21()


def zero_latent(latent_format) -> torch.Tensor:
    """The VAE-space value per channel that the model's latent normalisation maps to exactly 0."""
    channels = latent_format.latent_channels
    return latent_format.process_out(torch.zeros(1, channels, 1, 1, 1)).flatten()


def resize_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale and centre-crop like Wan's own image-to-video node."""
    import comfy.utils

    return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)[..., :3]


def encode_anchor(vae, image: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor latent [1, 16, 1, h, w], the resized reference frame [1, H, W, 3])."""
    check_clip_size(width, height)
    wan_latent_format(vae)
    if image.ndim != 4 or image.shape[0] < 1:
        raise SVIInputError(f"the reference must be an IMAGE batch [B, H, W, C], got shape {tuple(image.shape)}")
    reference = resize_image(image[:1], width, height)
    return vae.encode(reference), reference


@dataclass(frozen=True)
class ClipInputs:
    concat_latent_image: torch.Tensor
    concat_mask: torch.Tensor
    empty_latent: torch.Tensor


def build_clip_inputs(vae, mode: SVIMode, clip_frames: int, *, anchor: torch.Tensor | None = None,
                      motion: torch.Tensor | None = None, reference: torch.Tensor | None = None,
                      motion_frames: torch.Tensor | None = None) -> ClipInputs:
    """The concat latent, mask and empty latent of one clip, for any SVI mode."""
    latent_format = wan_latent_format(vae)
    try:
        latent_frames = latent_frames_for(clip_frames)
    except ValueError as error:
        raise SVIInputError(str(error)) from error
    if mode.uses_latent_motion:
        if anchor is None:
            raise SVIInputError(f"{mode.value} needs the anchor latent from 'SVI Encode Anchor'")
        if anchor.shape[1] != WAN_LATENT_CHANNELS:
            raise SVIInputError(f"the anchor has {anchor.shape[1]} channels; it must come from the Wan 2.1 VAE (16)")
        try:
            inputs = pro_latent_conditioning(anchor, motion, latent_frames, zero_latent(latent_format))
        except ValueError as error:
            raise SVIInputError(str(error)) from error
        image, mask = inputs.concat_latent_image, inputs.concat_mask
    else:
        if reference is None:
            raise SVIInputError(f"{mode.value} needs the resized reference image from 'SVI Encode Anchor'")
        height, width = reference.shape[1:3]
        conditioning_frames = reference if motion_frames is None else resize_image(motion_frames, width, height)
        try:
            video = pixel_mode_frames(conditioning_frames, reference, clip_frames, mode)
        except ValueError as error:
            raise SVIInputError(str(error)) from error
        image = vae.encode(video)
        mask = anchor_only_mask(latent_frames, image.shape[-2], image.shape[-1])
    empty = torch.zeros([1, WAN_LATENT_CHANNELS, latent_frames, image.shape[-2], image.shape[-1]])
    return ClipInputs(image, mask, empty)


def condition(conditioning, inputs: ClipInputs, clip_vision_output=None):
    import node_helpers

    values = {"concat_latent_image": inputs.concat_latent_image, "concat_mask": inputs.concat_mask}
    if clip_vision_output is not None:
        values["clip_vision_output"] = clip_vision_output
    return node_helpers.conditioning_set_values(conditioning, values)


def has_image_branch(model_patcher) -> bool:
    """Wan 2.1 I2V has a CLIP-vision branch; Wan 2.2 A14B does not."""
    return getattr(model_patcher.model.diffusion_model, "img_emb", None) is not None


def check_wan_i2v(model_patcher, role: str) -> None:
    diffusion_model = getattr(model_patcher.model, "diffusion_model", None)
    patch = getattr(diffusion_model, "patch_embedding", None)
    if patch is None or not hasattr(diffusion_model, "blocks") or patch.weight.shape[1] != 36:
        raise SVIInputError(f"the {role} model is not a Wan image-to-video model (Wan 2.1 I2V 14B or a Wan 2.2 I2V A14B expert, "
                            "36 input channels)")


def check_expert_pair(model, model_low) -> None:
    """Wan 2.1 I2V is one model; a Wan 2.2 A14B expert always needs its partner."""
    check_wan_i2v(model, "main")
    if model_low is not None:
        check_wan_i2v(model_low, "low-noise")
        if has_image_branch(model):
            raise SVIInputError("Wan 2.1 I2V is a single model: disconnect model_low_noise (it is for Wan 2.2 A14B)")
    elif not has_image_branch(model):
        raise SVIInputError("this is a Wan 2.2 A14B expert: connect the low-noise expert to model_low_noise "
                            "(and the high-noise expert to model)")


def sample_clip(model_high, model_low, positive, negative, empty_latent: torch.Tensor, *, seed: int, sigmas: torch.Tensor,
                boundary: float, cfg: float, sampler_name: str = "euler", step_callback=None) -> torch.Tensor:
    """Few-step flow sampling through ComfyUI's samplers; on Wan 2.2 the low-noise expert takes over below `boundary`.

    Returns the denoised latent in VAE space. `step_callback(step, total, x0)` is called after each step;
    ComfyUI's interrupt is honoured between steps by its samplers.
    """
    import comfy.sample
    import comfy.samplers

    check_expert_pair(model_high, model_low)
    if model_low is not None:
        high, low = split_at_boundary(sigmas, boundary)
        stages = [(model, part) for model, part in ((model_high, high), (model_low, low)) if len(part) > 1]
    else:
        stages = [(model_high, sigmas)]
    total = len(sigmas) - 1
    sampler = comfy.samplers.sampler_object(sampler_name)
    latent = empty_latent
    noise = comfy.sample.prepare_noise(empty_latent, seed)
    done = 0
    for stage_index, (model, stage_sigmas) in enumerate(stages):
        offset = done

        def callback(step, x0, x, _total, offset=offset):
            if step_callback is not None:
                step_callback(offset + step + 1, total, x0)

        stage_noise = noise if stage_index == 0 else torch.zeros_like(latent)
        latent = comfy.sample.sample_custom(model, stage_noise, cfg, sampler, stage_sigmas.clone(), positive, negative, latent,
                                            callback=callback, disable_pbar=True, seed=seed)
        done += len(stage_sigmas) - 1
    return latent


def decode_clip(vae, samples: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """Frames [F, H, W, 3] in 0..1, decoded by ComfyUI's VAE (faster on CUDA: fast_vae.py)."""
    images = decode_frames(vae, samples, fast)
    return images.reshape(-1, *images.shape[-3:])
