"""Joining clips at their seams with exact frame accounting (svi-spec.md, step 7 and SVI 1.0 modes).

Consecutive clips overlap: in 2.0 Pro, clip k starts by re-creating the anchor frame and then the
previous clip's last 4n frames (the motion prefix); in 1.0 modes, clip k starts by regenerating the
last M frames of clip k-1. A hard cut keeps one side of the overlap; a cross-fade blends its last
frames. The stitcher is streaming: it holds only the overlap region of the previous clip, so
memory does not grow with the number of clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .conditioning import PIXEL_FRAMES_PER_LATENT, SVIMode


@dataclass(frozen=True)
class Seam:
    head_skip: int  # frames at the start of clip k > 0 that are dropped outright (the re-created anchor)
    overlap: int  # frames that clip k-1's tail and clip k's head (after head_skip) both show
    keep_next: bool  # hard cut: keep clip k's version of the overlap (1.0) or clip k-1's (2.0 Pro, 2.0 on Wan 2.2)

    def repeated_span(self) -> tuple[int, int]:
        """(first index, count) of the frames of clip k > 0 that show again the last `count` frames of clip k-1."""
        return self.head_skip, self.overlap


def seam_for(mode: SVIMode, *, motion_latent_frames: int = 1, conditioning_frames: int = 5) -> Seam:
    """2.0 Pro drops the re-created anchor and motion prefix of the next clip; 1.0 modes drop the last M frames of
    the previous clip (the next clip regenerates them); 2.0 on Wan 2.2 keeps the previous clip's last M frames and
    drops the next clip's first M (official inference_svi_2.0.py: M = 1, `video_frames[1:]` for every later clip).
    """
    if mode.uses_latent_motion:
        return Seam(head_skip=1, overlap=PIXEL_FRAMES_PER_LATENT * motion_latent_frames, keep_next=False)
    return Seam(head_skip=0, overlap=conditioning_frames, keep_next=mode is not SVIMode.WAN22_LAST_FRAME)


def total_frames(num_clips: int, clip_frames: int, seam: Seam) -> int:
    """81 + 76 (N - 1) for 2.0 Pro with n = 1; a cross-fade does not change the count."""
    if num_clips < 1:
        return 0
    return clip_frames + (num_clips - 1) * (clip_frames - seam.head_skip - seam.overlap)


def blend_overlap(previous_tail: torch.Tensor, next_head: torch.Tensor, seam: Seam, crossfade: int) -> torch.Tensor:
    """The frames shown for the overlap region: the hard-cut winner, then a linear fade over the last `crossfade`."""
    if crossfade < 0 or crossfade > seam.overlap:
        raise ValueError(f"cross-fade must be between 0 and the {seam.overlap} overlapping frames, got {crossfade}")
    region = (next_head if seam.keep_next else previous_tail).clone()
    if crossfade:
        start = seam.overlap - crossfade
        weights = torch.arange(1, crossfade + 1, dtype=region.dtype, device=region.device) / (crossfade + 1)
        weights = weights.view(-1, *([1] * (region.ndim - 1)))
        region[start:] = previous_tail[start:] * (1 - weights) + next_head[start:] * weights
    return region


class StreamingStitcher:
    """Feeds clips in order; emits final frames through `write` as soon as they can no longer change."""

    def __init__(self, seam: Seam, write: Callable[[torch.Tensor], None], crossfade: int = 0):
        if crossfade > seam.overlap:
            raise ValueError(f"cross-fade of {crossfade} frames is longer than the {seam.overlap}-frame overlap")
        self.seam = seam
        self.crossfade = crossfade
        self.write = write
        self.frames_written = 0
        self._held_tail: torch.Tensor | None = None

    def add_clip(self, frames: torch.Tensor) -> None:
        seam = self.seam
        if self._held_tail is None:
            body = frames
        else:
            if frames.shape[0] < seam.head_skip + 2 * seam.overlap:
                raise ValueError(f"a clip of {frames.shape[0]} frames is too short for this seam")
            head = frames[seam.head_skip: seam.head_skip + seam.overlap]
            self._emit(blend_overlap(self._held_tail, head, seam, self.crossfade))
            body = frames[seam.head_skip + seam.overlap:]
        if seam.overlap:
            self._emit(body[:-seam.overlap])
            self._held_tail = body[-seam.overlap:].clone()
        else:
            self._emit(body)
            self._held_tail = body[:0]

    def finish(self) -> None:
        if self._held_tail is not None and self._held_tail.shape[0]:
            self._emit(self._held_tail)
        self._held_tail = None

    def _emit(self, frames: torch.Tensor) -> None:
        if frames.shape[0]:
            self.write(frames)
            self.frames_written += frames.shape[0]


def stitch_clips(clips: list[torch.Tensor], seam: Seam, crossfade: int = 0) -> torch.Tensor:
    """All clips joined into one frame tensor (for graphs small enough to hold in memory)."""
    parts: list[torch.Tensor] = []
    stitcher = StreamingStitcher(seam, parts.append, crossfade)
    for clip in clips:
        stitcher.add_clip(clip)
    stitcher.finish()
    return torch.cat(parts, dim=0)
