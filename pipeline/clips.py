"""One SVI clip on ComfyUI objects: anchor encoding, conditioning, few-step sampling, decoding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..svi.conditioning import (ResizeMode, SVIMode, clip_mask, latent_frames_for, pixel_mode_frames,
                                pro_latent_conditioning)
from ..svi.plan import split_at_boundary
from ..svi.validation import MAX_SIDE, clip_side, raise_if_any
from .fast_vae import decode_frames

WAN_LATENT_CHANNELS = 16
VAE_SCALE = 8  # Wan 2.1 VAE: pixels per latent cell in each direction


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


def resize_image(image: torch.Tensor, width: int, height: int, mode: ResizeMode = ResizeMode.CROP) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, height, width, 3].

    crop: scale and centre-crop like Wan's own image-to-video node; stretch: the official SVI scripts' PIL
    `resize((width, height))` (bicubic, on the 8-bit image), aspect ratio not kept; pad: scale to fit inside and
    centre on black.
    """
    import comfy.utils

    image = image[..., :3]
    if image.shape[1:3] == (height, width):
        return image
    if mode is ResizeMode.CROP:
        return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
    if mode is ResizeMode.STRETCH:
        from PIL import Image

        eight_bit = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # PyAV-free: no svi.video_io here
        frames = [Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC) for frame in eight_bit]
        return torch.from_numpy(np.stack([np.asarray(frame) for frame in frames])).to(image.dtype) / 255.0
    scale = min(width / image.shape[2], height / image.shape[1])
    inner_width, inner_height = max(1, round(image.shape[2] * scale)), max(1, round(image.shape[1] * scale))
    inner = comfy.utils.common_upscale(image.movedim(-1, 1), inner_width, inner_height, "bilinear", "disabled")
    left, top = (width - inner_width) // 2, (height - inner_height) // 2
    return torch.nn.functional.pad(inner, (left, width - inner_width - left, top, height - inner_height - top)).movedim(1, -1)


def encode_anchor(vae, image: torch.Tensor, width: int, height: int,
                  resize: ResizeMode = ResizeMode.CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor latent [1, 16, 1, h, w], the resized reference frame [1, H, W, 3])."""
    check_clip_size(width, height)
    wan_latent_format(vae)
    if image.ndim != 4 or image.shape[0] < 1:
        raise SVIInputError(f"the reference must be an IMAGE batch [B, H, W, C], got shape {tuple(image.shape)}")
    reference = resize_image(image[:1], width, height, resize)
    return vae.encode(reference), reference


def check_end_image(end_image: torch.Tensor, width: int, height: int) -> None:
    """An end image must already have the clip's size (SVI Encode Anchor resizes one the way it resizes the reference)."""
    if end_image.ndim != 4 or end_image.shape[0] < 1:
        raise SVIInputError(f"the end image must be an IMAGE batch [B, H, W, C], got shape {tuple(end_image.shape)}")
    if tuple(end_image.shape[1:3]) != (height, width):
        raise SVIInputError(f"the end image is {end_image.shape[2]}x{end_image.shape[1]} but the clips are {width}x{height}: "
                            "pass it through SVI Encode Anchor's end_image input (its 'end' output has the clip size)")


def encode_end_latent(vae, reference: torch.Tensor, end_image: torch.Tensor, clip_frames: int) -> torch.Tensor:
    """2.0 Pro's end latent [1, 16, 1, h, w]: the last latent frame of what Wan's first-last-frame node encodes, the clip
    as [reference, grey ..., end image] (the Wan VAE is causal, so the end frame's latent depends on the frames before
    it; encoding the end image alone would give a first-frame latent instead)."""
    height, width = reference.shape[1:3]
    check_end_image(end_image, width, height)
    video = torch.full((clip_frames, height, width, 3), 0.5, dtype=reference.dtype)
    video[0], video[-1] = reference[0, ..., :3], end_image[0, ..., :3].to(reference.dtype)
    return vae.encode(video)[:, :, -1:]


@dataclass(frozen=True)
class ClipInputs:
    concat_latent_image: torch.Tensor
    concat_mask: torch.Tensor
    empty_latent: torch.Tensor


def build_clip_inputs(vae, mode: SVIMode, clip_frames: int, *, anchor: torch.Tensor | None = None,
                      motion: torch.Tensor | None = None, reference: torch.Tensor | None = None,
                      motion_frames: torch.Tensor | None = None, end_image: torch.Tensor | None = None,
                      end_latent: torch.Tensor | None = None) -> ClipInputs:
    """The concat latent, mask and empty latent of one clip, for any SVI mode.

    With an end image the clip's last frame is conditioned as in Wan's first-last-frame node: 2.0 Pro puts
    `end_latent` (encode_end_latent, computed here from `end_image` and `reference` when not given) at the last
    latent frame, pixel modes put the image at the last pixel frame; the mask marks that frame known.
    """
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
        if end_image is not None:
            check_end_image(end_image, anchor.shape[-1] * VAE_SCALE, anchor.shape[-2] * VAE_SCALE)
        if end_image is not None and end_latent is None:
            if reference is None:
                raise SVIInputError("an end image in 2.0 Pro also needs the resized reference from 'SVI Encode Anchor'")
            end_latent = encode_end_latent(vae, reference, end_image, clip_frames)
        try:
            inputs = pro_latent_conditioning(anchor, motion, latent_frames, zero_latent(latent_format), end_latent)
        except ValueError as error:
            raise SVIInputError(str(error)) from error
        image, mask = inputs.concat_latent_image, inputs.concat_mask
    else:
        if reference is None:
            raise SVIInputError(f"{mode.value} needs the resized reference image from 'SVI Encode Anchor'")
        height, width = reference.shape[1:3]
        if end_image is not None:
            check_end_image(end_image, width, height)
        conditioning_frames = reference if motion_frames is None else resize_image(motion_frames, width, height)
        try:
            video = pixel_mode_frames(conditioning_frames, reference, clip_frames, mode, end_image)
        except ValueError as error:
            raise SVIInputError(str(error)) from error
        image = vae.encode(video)
        mask = clip_mask(latent_frames, image.shape[-2], image.shape[-1], end_frame=end_image is not None)
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


def expert_stages(sigmas: torch.Tensor, boundary: float, switch_step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The high- and low-noise experts' sigmas: split at `switch_step` when given, else at the boundary sigma."""
    if switch_step is None:
        return split_at_boundary(sigmas, boundary)
    steps = len(sigmas) - 1
    if not 0 <= switch_step <= steps:
        raise SVIInputError(f"the experts switch at step {switch_step}, but the schedule has {steps} steps (0..{steps})")
    return sigmas[: switch_step + 1], sigmas[switch_step:]


def sample_clip(model_high, model_low, positive, negative, empty_latent: torch.Tensor, *, seed: int, sigmas: torch.Tensor,
                boundary: float, cfg: float, cfg_low: float | None = None, switch_step: int | None = None, sampler=None,
                step_callback=None) -> torch.Tensor:
    """Sampling through ComfyUI's samplers; on Wan 2.2 the low-noise expert takes over below `boundary` (or from step
    `switch_step`), with its own cfg (`cfg_low`, else `cfg`). `sampler` is a ComfyUI SAMPLER (default: Euler).

    Returns the denoised latent in VAE space. `step_callback(step, total, x0)` is called after each step;
    ComfyUI's interrupt is honoured between steps by its samplers.
    """
    import comfy.sample
    import comfy.samplers

    check_expert_pair(model_high, model_low)
    if model_low is not None:
        high, low = expert_stages(sigmas, boundary, switch_step)
        cfg_low = cfg if cfg_low is None else cfg_low
        stages = [(model, part, scale) for model, part, scale in ((model_high, high, cfg), (model_low, low, cfg_low)) if len(part) > 1]
    else:
        stages = [(model_high, sigmas, cfg)]
    total = len(sigmas) - 1
    sampler = comfy.samplers.sampler_object("euler") if sampler is None else sampler
    latent = empty_latent
    noise = comfy.sample.prepare_noise(empty_latent, seed)
    done = 0
    for stage_index, (model, stage_sigmas, stage_cfg) in enumerate(stages):
        offset = done

        def callback(step, x0, x, _total, offset=offset):
            if step_callback is not None:
                step_callback(offset + step + 1, total, x0)

        stage_noise = noise if stage_index == 0 else torch.zeros_like(latent)
        latent = comfy.sample.sample_custom(model, stage_noise, stage_cfg, sampler, stage_sigmas.clone(), positive, negative,
                                            latent, callback=callback, disable_pbar=True, seed=seed)
        done += len(stage_sigmas) - 1
    return latent


def decode_clip(vae, samples: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """Frames [F, H, W, 3] in 0..1, decoded by ComfyUI's VAE (faster on CUDA: fast_vae.py)."""
    images = decode_frames(vae, samples, fast)
    return images.reshape(-1, *images.shape[-3:])
