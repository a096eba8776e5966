"""The SVI image-to-video conditioning `y` (svi-spec.md), as plain torch.

Wan's I2V input is the noisy latent concatenated with 4 mask channels and 16 conditioning-latent
channels. ComfyUI builds those from two conditioning values: `concat_latent_image` (in VAE latent
space; ComfyUI applies `process_latent_in` to it) and `concat_mask` (1 = to generate,
0 = known; ComfyUI inverts it). Everything here works in VAE latent space, so a padding frame that
must be zero after normalisation is written as the latent format's `process_out(0)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

PIXEL_FRAMES_PER_LATENT = 4  # Wan VAE: latent frame 0 <-> pixel frame 0, then 4 pixel frames each
CLIP_FRAMES = 81  # 5 s at 16 fps
MOTION_LATENT_FRAMES = (1, 2, 3)  # 4, 8 or 12 pixel frames


class SVIMode(str, Enum):
    """How clip k > 0 remembers clip k-1."""

    PRO_LATENT = "2.0 Pro (latent motion)"
    FILM_ZERO_PAD = "1.0 Film (pixel motion, zero padding)"
    SHOT_REFERENCE_PAD = "1.0 Shot/Dance/Talk (pixel motion, reference padding)"

    @property
    def uses_latent_motion(self) -> bool:
        return self is SVIMode.PRO_LATENT


def latent_frames_for(pixel_frames: int) -> int:
    if pixel_frames < 1 or (pixel_frames - 1) % PIXEL_FRAMES_PER_LATENT:
        raise ValueError(f"a Wan clip has 4k+1 frames (e.g. 81); got {pixel_frames}")
    return (pixel_frames - 1) // PIXEL_FRAMES_PER_LATENT + 1


def pixel_frames_for(latent_frames: int) -> int:
    return (latent_frames - 1) * PIXEL_FRAMES_PER_LATENT + 1


def last_latent_frames(samples: torch.Tensor, count: int) -> torch.Tensor:
    """The motion latent: the last `count` frames of a clip's final denoised latent [B, C, T, h, w]."""
    if samples.ndim != 5:
        raise ValueError(f"expected a video latent [B, C, T, h, w], got shape {tuple(samples.shape)}")
    if count not in MOTION_LATENT_FRAMES:
        raise ValueError(f"motion latent frames must be 1, 2 or 3 (4, 8 or 12 video frames), got {count}")
    if count >= samples.shape[2]:
        raise ValueError(f"the clip has only {samples.shape[2]} latent frames; cannot take the last {count} as motion")
    return samples[:, :, -count:].clone()


@dataclass(frozen=True)
class ClipConditioning:
    concat_latent_image: torch.Tensor  # [B, 16, T, h, w], VAE latent space
    concat_mask: torch.Tensor  # [1, 1, T, h, w], 0 = known frame


def anchor_only_mask(latent_frames: int, height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Only latent frame 0 (the anchor) is known; every later frame, motion included, is generated."""
    mask = torch.ones((1, 1, latent_frames, height, width), dtype=dtype, device=device)
    mask[:, :, 0] = 0.0
    return mask


def pro_latent_conditioning(anchor: torch.Tensor, motion: torch.Tensor | None, latent_frames: int,
                            zero_latent: torch.Tensor) -> ClipConditioning:
    """SVI 2.0 Pro: y = [anchor, motion (clip k > 0), padding...] along time.

    `anchor` is [B, C, 1, h, w]; `motion` is [B, C, n, h, w]; `zero_latent` is the per-channel value that
    becomes 0 after the model's latent normalisation (`latent_format.process_out(0)`), shape [C].
    """
    if anchor.ndim != 5 or anchor.shape[2] != 1:
        raise ValueError(f"the anchor must be one latent frame [B, C, 1, h, w], got {tuple(anchor.shape)}")
    if zero_latent.shape != (anchor.shape[1],):
        raise ValueError(f"zero_latent must have one value per latent channel ({anchor.shape[1]}), got {tuple(zero_latent.shape)}")
    prefix = [anchor]
    if motion is not None:
        if motion.ndim != 5 or motion.shape[:2] != anchor.shape[:2] or motion.shape[3:] != anchor.shape[3:]:
            raise ValueError(
                f"motion latent {tuple(motion.shape)} does not match the anchor {tuple(anchor.shape)}: "
                "it must come from a clip of the same model family and size")
        if 1 + motion.shape[2] > latent_frames:
            raise ValueError(f"motion latent has {motion.shape[2]} frames; with the anchor that exceeds the clip's "
                             f"{latent_frames} latent frames")
        prefix.append(motion.to(anchor))
    known = torch.cat(prefix, dim=2)
    padding = zero_latent.to(anchor).view(1, -1, 1, 1, 1).expand(
        anchor.shape[0], -1, latent_frames - known.shape[2], anchor.shape[3], anchor.shape[4])
    image = torch.cat([known, padding], dim=2)
    mask = anchor_only_mask(latent_frames, anchor.shape[3], anchor.shape[4], dtype=anchor.dtype, device=anchor.device)
    return ClipConditioning(image, mask)


def pixel_mode_frames(conditioning_frames: torch.Tensor, reference: torch.Tensor, clip_frames: int,
                      mode: SVIMode) -> torch.Tensor:
    """SVI 1.0: the VAE input video [clip_frames, H, W, 3] in ComfyUI's 0..1 image range.

    The first frames are the conditioning frames (the reference for clip 0, the last M decoded frames
    of the previous clip otherwise); the rest is padding: the reference repeated (Shot/Dance/Talk),
    or zero in the model's -1..1 pixel space, i.e. 0.5 grey here (Film).
    """
    if mode.uses_latent_motion:
        raise ValueError(f"{mode.value} takes its motion from latents, not pixels")
    count = conditioning_frames.shape[0]
    if count >= clip_frames:
        raise ValueError(f"{count} conditioning frames leave no room in a {clip_frames}-frame clip")
    if mode is SVIMode.SHOT_REFERENCE_PAD:
        padding = reference[:1].expand(clip_frames - count, -1, -1, -1)
    else:
        padding = torch.full((clip_frames - count, *conditioning_frames.shape[1:]), 0.5,
                             dtype=conditioning_frames.dtype, device=conditioning_frames.device)
    return torch.cat([conditioning_frames, padding.to(conditioning_frames)], dim=0)
