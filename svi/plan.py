"""Per-clip prompts, seeds and few-step sigma schedules (svi-spec.md, 'Seeds and prompts', 'Models')."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

SEED_MODULUS = 2**64  # ComfyUI seeds are unsigned 64-bit
CLIP_SEED_STRIDE = 42  # the SVI authors seed clip k with k * 42; we offset that from the user's seed


class PromptOverflow(str, Enum):
    """What a clip past the end of the prompt list gets."""

    CYCLE = "cycle through the list"
    HOLD_LAST = "repeat the last prompt"


def parse_prompt_list(text: str) -> list[str]:
    """One prompt per line; blank lines are ignored."""
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("the prompt list is empty: write one prompt per line, one line per clip")
    return prompts


def prompt_for_clip(prompts: list[str], clip_index: int, overflow: PromptOverflow = PromptOverflow.CYCLE) -> str:
    if not prompts:
        raise ValueError("the prompt list is empty")
    if clip_index < len(prompts):
        return prompts[clip_index]
    if overflow is PromptOverflow.CYCLE:
        return prompts[clip_index % len(prompts)]
    return prompts[-1]


def clip_seed(user_seed: int, clip_index: int) -> int:
    """A different, reproducible seed per clip; clip 0 uses the user's seed unchanged."""
    return (user_seed + CLIP_SEED_STRIDE * clip_index) % SEED_MODULUS


@dataclass(frozen=True)
class ClipPlan:
    index: int
    prompt: str
    seed: int


def plan_clips(prompts: list[str], num_clips: int, user_seed: int,
               overflow: PromptOverflow = PromptOverflow.CYCLE) -> list[ClipPlan]:
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    return [ClipPlan(k, prompt_for_clip(prompts, k, overflow), clip_seed(user_seed, k)) for k in range(num_clips)]


# Few-step presets: the sigmas a distilled "Turbo" Wan was trained on, followed by the final 0.
SIGMA_PRESETS: dict[str, tuple[float, ...]] = {
    "lightning 4-step (lightx2v / Wan2.2-Lightning)": (1.0, 0.9375, 0.8333, 0.625, 0.0),
    "rCM 4-step (TurboWan)": (0.995, 0.934, 0.853, 0.609, 0.0),
    "rCM 2-step (TurboWan)": (0.995, 0.934, 0.0),  # rCM runs the first N of its 4 times (mid_t[:N - 1])
}
CUSTOM_SCHEDULE = "custom: steps + shift"
DEFAULT_BOUNDARY_SIGMA = 0.9  # Wan 2.2 A14B: high-noise expert above, low-noise expert below


def shifted_flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Flow-matching sigmas for `steps` Euler steps with timestep shift (Wan uses shift 5)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def schedule_sigmas(preset: str, steps: int = 4, shift: float = 5.0) -> torch.Tensor:
    if preset == CUSTOM_SCHEDULE:
        return shifted_flow_sigmas(steps, shift)
    if preset not in SIGMA_PRESETS:
        raise ValueError(f"unknown schedule {preset!r}; choose one of {[*SIGMA_PRESETS, CUSTOM_SCHEDULE]}")
    return torch.tensor(SIGMA_PRESETS[preset], dtype=torch.float32)


def split_at_boundary(sigmas: torch.Tensor, boundary: float) -> tuple[torch.Tensor, torch.Tensor]:
    """High-noise steps (start sigma >= boundary) and low-noise steps; they share the switch sigma."""
    if not math.isfinite(boundary):
        raise ValueError(f"the expert boundary must be a finite sigma, got {boundary}")
    starts = sigmas[:-1]
    switch = int((starts >= boundary).sum())
    return sigmas[: switch + 1], sigmas[switch:]
