"""Rules for user input that need no model: real numbers, Wan clip sizes and lengths, what a clip needs in memory.

Each rule returns the problems it finds, each naming the input it is about and saying what would work instead, so a
refusal lists every bad input once. The nodes run these rules before anything runs (ComfyUI's validate_inputs), and
the long-video loop runs them again for callers that bypass the nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .conditioning import PIXEL_FRAMES_PER_LATENT, SVIMode, latent_frames_for
from .seams import seam_for

BYTES_PER_DECODED_PIXEL = 3 * 4  # ComfyUI IMAGE frames: RGB float32
SIZE_MULTIPLE = 16  # Wan: 8x VAE downsampling, then 2x2 patches
MAX_SIDE = 16384  # ComfyUI's nodes.MAX_RESOLUTION (v0.33.0), the largest size its nodes accept


@dataclass(frozen=True)
class InputProblem:
    input: str
    message: str

    def line(self) -> str:
        return f"{self.input}: {self.message}"


class InvalidInputs(ValueError):
    """Inputs refused before anything runs; the message has one line per bad input, naming it."""

    def __init__(self, problems: list[InputProblem]):
        self.problems = problems
        super().__init__("\n".join(problem.line() for problem in problems))


def raise_if_any(problems: list[InputProblem]) -> None:
    if problems:
        raise InvalidInputs(problems)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_in_range(name: str, value, minimum=None, maximum=None) -> list[InputProblem]:
    """A real number (not NaN, not infinite) within [minimum, maximum]."""
    if not _number(value):
        return [InputProblem(name, f"{value!r} is not a number")]
    span = f" (use a value from {minimum:g} to {maximum:g})" if minimum is not None and maximum is not None else ""
    if math.isnan(value):
        return [InputProblem(name, f"NaN is not a number{span}")]
    if math.isinf(value):
        return [InputProblem(name, f"{value} is not a finite number{span}")]
    if minimum is not None and value < minimum:
        return [InputProblem(name, f"{value:g} is below the minimum {minimum:g}")]
    if maximum is not None and value > maximum:
        return [InputProblem(name, f"{value:g} is above the maximum {maximum:g}")]
    return []


def clip_side(name: str, value: int, maximum: int) -> list[InputProblem]:
    """A clip width or height: at least 16, a multiple of 16, at most ComfyUI's largest size."""
    if value < SIZE_MULTIPLE:
        return [InputProblem(name, f"{value} is too small: a clip side must be at least {SIZE_MULTIPLE} pixels")]
    if value > maximum:
        return [InputProblem(name, f"{value} is larger than the largest size ComfyUI allows ({maximum})")]
    if value % SIZE_MULTIPLE:
        lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
        return [InputProblem(name, f"{value} is not a multiple of 16; Wan needs both sides divisible by 16 "
                                   f"(nearest: {lower} or {lower + SIZE_MULTIPLE})")]
    return []


def clip_length(name: str, frames: int) -> list[InputProblem]:
    """Wan clips have 4k+1 frames (81 = 5 s at 16 fps)."""
    try:
        latent_frames_for(frames)
    except ValueError:
        lower = max(1, (frames - 1) // PIXEL_FRAMES_PER_LATENT * PIXEL_FRAMES_PER_LATENT + 1)
        return [InputProblem(name, f"{frames} frames: a Wan clip has 4k+1 frames, e.g. 81 (nearest: {lower} or "
                                   f"{lower + PIXEL_FRAMES_PER_LATENT})")]
    return []


def decoded_clip_bytes(width: int, height: int, frames: int) -> int:
    return width * height * frames * BYTES_PER_DECODED_PIXEL


def clip_fits_in_memory(width: int, height: int, frames: int, memory_bytes: int, *, share: float = 1 / 3) -> list[InputProblem]:
    """Every clip is decoded into host memory as float32 frames (and held again, quantised, while it is saved), so one
    decoded clip may take at most `share` of the machine's memory; says what would fit at this frame count."""
    need = decoded_clip_bytes(width, height, frames)
    budget = memory_bytes * share
    if need <= budget:
        return []
    scale = math.sqrt(budget / need)
    fit_w = max(SIZE_MULTIPLE, int(width * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    fit_h = max(SIZE_MULTIPLE, int(height * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return [InputProblem("width/height", f"{width}x{height} at {frames} frames is {need / 2**30:.1f} GiB of decoded frames "
                                         f"per clip, more than this machine can hold ({memory_bytes / 2**30:.0f} GiB of RAM); "
                                         f"at {frames} frames about {fit_w}x{fit_h} fits")]


def clip_problems(width: int, height: int, frames: int, *, max_side: int, memory_bytes: int) -> list[InputProblem]:
    """Size and length of a clip, and whether one decoded clip fits in this machine's memory."""
    problems = clip_side("width", width, max_side) + clip_side("height", height, max_side) + clip_length("length", frames)
    return problems or clip_fits_in_memory(width, height, frames, memory_bytes)


def crossfade_fits(mode: SVIMode, motion_latent_frames: int, conditioning_frames: int, crossfade: int) -> list[InputProblem]:
    """A cross-fade no longer than the frames two clips share."""
    seam = seam_for(mode, motion_latent_frames=motion_latent_frames, conditioning_frames=conditioning_frames)
    if crossfade > seam.overlap:
        return [InputProblem("crossfade", f"a cross-fade of {crossfade} frames is longer than the {seam.overlap} frames "
                                          f"the clips share")]
    return []


def seam_problems(mode: SVIMode, frames: int, motion_latent_frames: int, conditioning_frames: int,
                  crossfade: int) -> list[InputProblem]:
    """The motion prefix (or the re-encoded frames) fits in a clip of 4k+1 `frames`, the clip is long enough for its
    seam, and the cross-fade fits."""
    latent_frames = latent_frames_for(frames)
    seam = seam_for(mode, motion_latent_frames=motion_latent_frames, conditioning_frames=conditioning_frames)
    if mode.uses_latent_motion and 1 + motion_latent_frames > latent_frames:
        problem = InputProblem("motion", f"{motion_latent_frames} motion latent frames and the anchor do not fit in a "
                                         f"{frames}-frame clip ({latent_frames} latent frames)")
    elif not mode.uses_latent_motion and conditioning_frames >= frames:
        problem = InputProblem("conditioning_frames", f"{conditioning_frames} re-encoded frames leave no room in a "
                                                      f"{frames}-frame clip")
    elif frames < seam.head_skip + 2 * seam.overlap:
        problem = InputProblem("length", f"a {frames}-frame clip is too short for its seam: each clip shares "
                                         f"{seam.head_skip + seam.overlap} frames with the previous one")
    else:
        return crossfade_fits(mode, motion_latent_frames, conditioning_frames, crossfade)
    return [problem, *crossfade_fits(mode, motion_latent_frames, conditioning_frames, crossfade)]


def host_memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().total
