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
    SHOT_REFERENCE_PAD = "1.0 Shot / 2.0 on Wan 2.1 (pixel motion, reference padding)"
    DANCE_POSE = "1.0 Dance (pixel motion, reference padding, pose video)"
    WAN22_LAST_FRAME = "2.0 on Wan 2.2 (last frame, reference padding, next clip's first frame dropped)"

    @property
    def uses_latent_motion(self) -> bool:
        return self is SVIMode.PRO_LATENT

    @property
    def pads_with_reference(self) -> bool:
        return self in (SVIMode.SHOT_REFERENCE_PAD, SVIMode.DANCE_POSE, SVIMode.WAN22_LAST_FRAME)

    @property
    def needs_pose(self) -> bool:
        return self is SVIMode.DANCE_POSE

    @classmethod
    def parse(cls, value: str) -> "SVIMode":
        """A mode by its name, including the names older saved workflows hold."""
        value = LEGACY_MODE_NAMES.get(value, value)
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown SVI mode {value!r}; choose one of {[mode.value for mode in cls]}") from None


# Saved workflows from before the modes were named for what they do ("Talk" had no audio, "Dance" no pose).
LEGACY_MODE_NAMES = {"1.0 Shot/Dance/Talk (pixel motion, reference padding)": SVIMode.SHOT_REFERENCE_PAD.value}


class ResizeMode(str, Enum):
    """How the reference (and an end image) is fitted to the clip size."""

    CROP = "crop (scale, centre-crop)"
    STRETCH = "stretch (official SVI)"
    PAD = "pad (scale to fit, black bars)"


def round_to_8bit(frames: torch.Tensor) -> torch.Tensor:
    """Decoded frames as an 8-bit image holds them: the official 1.0 code re-encodes uint8 frames, never floats."""
    return (frames.clamp(0, 1) * 255).round() / 255


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


def first_last_mask(latent_frames: int, height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Wan's first-last-frame mask [1, 4, T, h, w]: latent frame 0 known, and of the last latent frame only its
    4th pixel frame (the clip's last frame, the end image) known.

    The 4 channels are the 4 pixel frames a latent frame stands for (ComfyUI's WanFirstLastFrameToVideo marks
    pixel frames 0-3 and the last one known in an 84-frame pixel mask and views it as [4, T]).
    """
    mask = torch.ones((1, 4, latent_frames, height, width), dtype=dtype, device=device)
    mask[:, :, 0] = 0.0
    mask[:, PIXEL_FRAMES_PER_LATENT - 1, -1] = 0.0
    return mask


def clip_mask(latent_frames: int, height: int, width: int, *, end_frame: bool, dtype=torch.float32, device=None) -> torch.Tensor:
    make = first_last_mask if end_frame else anchor_only_mask
    return make(latent_frames, height, width, dtype=dtype, device=device)


def pro_latent_conditioning(anchor: torch.Tensor, motion: torch.Tensor | None, latent_frames: int,
                            zero_latent: torch.Tensor, end: torch.Tensor | None = None) -> ClipConditioning:
    """SVI 2.0 Pro: y = [anchor, motion (clip k > 0), padding..., end (optional)] along time.

    `anchor` is [B, C, 1, h, w]; `motion` is [B, C, n, h, w]; `zero_latent` is the per-channel value that
    becomes 0 after the model's latent normalisation (`latent_format.process_out(0)`), shape [C]; `end` is
    one latent frame for the clip's last frame (first-last-frame conditioning), marked known as Wan does.
    """
    if anchor.ndim != 5 or anchor.shape[2] != 1:
        raise ValueError(f"the anchor must be one latent frame [B, C, 1, h, w], got {tuple(anchor.shape)}")
    if zero_latent.shape != (anchor.shape[1],):
        raise ValueError(f"zero_latent must have one value per latent channel ({anchor.shape[1]}), got {tuple(zero_latent.shape)}")
    prefix = [anchor]
    if motion is not None:
        _check_matches_anchor(motion, anchor, "motion latent")
        prefix.append(motion.to(anchor))
    known = torch.cat(prefix, dim=2)
    suffix = []
    if end is not None:
        _check_matches_anchor(end, anchor, "end latent")
        if end.shape[2] != 1:
            raise ValueError(f"the end latent must be one latent frame, got {end.shape[2]}")
        suffix.append(end.to(anchor))
    if known.shape[2] + len(suffix) > latent_frames:
        raise ValueError(f"the anchor, {known.shape[2] - 1} motion latent frames{' and the end frame' if suffix else ''} "
                         f"exceed the clip's {latent_frames} latent frames")
    padding = zero_latent.to(anchor).view(1, -1, 1, 1, 1).expand(
        anchor.shape[0], -1, latent_frames - known.shape[2] - len(suffix), anchor.shape[3], anchor.shape[4])
    image = torch.cat([known, padding, *suffix], dim=2)
    mask = clip_mask(latent_frames, anchor.shape[3], anchor.shape[4], end_frame=end is not None, dtype=anchor.dtype,
                     device=anchor.device)
    return ClipConditioning(image, mask)


def _check_matches_anchor(latent: torch.Tensor, anchor: torch.Tensor, what: str) -> None:
    if latent.ndim != 5 or latent.shape[:2] != anchor.shape[:2] or latent.shape[3:] != anchor.shape[3:]:
        raise ValueError(f"{what} {tuple(latent.shape)} does not match the anchor {tuple(anchor.shape)}: "
                         "it must come from the same model family and clip size")


def pixel_mode_frames(conditioning_frames: torch.Tensor, reference: torch.Tensor, clip_frames: int,
                      mode: SVIMode, end_frame: torch.Tensor | None = None) -> torch.Tensor:
    """SVI 1.0 and 2.0-on-Wan-2.2: the VAE input video [clip_frames, H, W, 3] in ComfyUI's 0..1 image range.

    The first frames are the conditioning frames (the reference for clip 0, the last M decoded frames
    of the previous clip otherwise); the rest is padding: the reference repeated (Shot, Dance, 2.0 on
    Wan 2.2), or zero in the model's -1..1 pixel space, i.e. 0.5 grey here (Film). With an end frame it
    takes the last place and the padding between is grey, as in Wan's first-last-frame conditioning and the
    official SVI pipeline's end-image branch.
    """
    if mode.uses_latent_motion:
        raise ValueError(f"{mode.value} takes its motion from latents, not pixels")
    count = conditioning_frames.shape[0]
    tail = [] if end_frame is None else [end_frame[:1].to(conditioning_frames)]
    if count + len(tail) >= clip_frames:
        raise ValueError(f"{count} conditioning frames{' and an end frame' if tail else ''} leave no room in a "
                         f"{clip_frames}-frame clip")
    padding_frames = clip_frames - count - len(tail)
    if mode.pads_with_reference and not tail:
        padding = reference[:1].expand(padding_frames, -1, -1, -1)
    else:
        padding = torch.full((padding_frames, *conditioning_frames.shape[1:]), 0.5,
                             dtype=conditioning_frames.dtype, device=conditioning_frames.device)
    return torch.cat([conditioning_frames, padding.to(conditioning_frames), *tail], dim=0)
