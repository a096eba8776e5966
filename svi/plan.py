"""Per-clip prompts, settings, seeds and few-step sigma schedules (svi-spec.md, 'Seeds and prompts', 'Models').

The schedule is one line per clip: a prompt, optionally followed by `|` and per-line settings, e.g.

    a person walks along the beach | repeat=2 style=0.6
    the sun sets over the sea | drift=off end=sunset.png
    the person turns and waves | seed=1234

- repeat=k   the line makes k clips in a row (the official --prompt_repeat_times, per line)
- style=s    the style LoRA's strength for this line's clips (SVI LoRA Stack's style LoRA)
- seed=n     this line's first clip uses seed n, its later clips n + 42, n + 84, ... (instead of the run's seed)
- end=name   the last clip of the line ends on this image (from ComfyUI's input folder)
- drift=w    drift control for this line's clips: off / reference / seam (off: the prompt changes the light)
Blank lines are skipped; a value with spaces is quoted (end="my photo.png"); `|` always starts the settings.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from enum import Enum

import torch

SEED_MODULUS = 2**64  # ComfyUI seeds are unsigned 64-bit
CLIP_SEED_STRIDE = 42  # the SVI authors seed clip k with k * 42; we offset that from the user's seed
SETTINGS_SEPARATOR = "|"
DRIFT_WORDS = ("off", "reference", "seam")


class PromptOverflow(str, Enum):
    """What a clip past the end of the prompt list gets."""

    CYCLE = "cycle through the list"
    HOLD_LAST = "repeat the last prompt"


class ScheduleError(ValueError):
    """A schedule line that does not parse; the message names the line."""


@dataclass(frozen=True)
class ScheduleLine:
    number: int  # 1-based line number in the text, blank lines counted, so a message points at it
    prompt: str
    repeat: int | None = None
    style: float | None = None
    seed: int | None = None
    end: str | None = None
    drift: str | None = None

    def settings(self) -> dict:
        return {name: value for name in _SETTING_PARSERS if (value := getattr(self, name)) is not None}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < SEED_MODULUS:
        raise ValueError(f"must be between 0 and {SEED_MODULUS - 1}")
    return value


def _strength(text: str) -> float:
    value = float(text)
    if not -10.0 <= value <= 10.0:
        raise ValueError("must be between -10 and 10")
    return value


def _drift(text: str) -> str:
    if text not in DRIFT_WORDS:
        raise ValueError(f"must be one of {', '.join(DRIFT_WORDS)}")
    return text


def _image_name(text: str) -> str:
    if not text.strip():
        raise ValueError("needs an image file name")
    return text


_SETTING_PARSERS = {"repeat": _positive_int, "style": _strength, "seed": _seed, "end": _image_name, "drift": _drift}


def parse_schedule_line(number: int, text: str) -> ScheduleLine:
    prompt, separator, settings_text = text.partition(SETTINGS_SEPARATOR)
    prompt = prompt.strip()
    where = f"line {number} ({text.strip()[:60]!r})"
    if not prompt:
        raise ScheduleError(f"{where}: the prompt is empty; write the prompt before '{SETTINGS_SEPARATOR}'")
    settings = {}
    if separator:
        try:
            words = shlex.split(settings_text)
        except ValueError as error:
            raise ScheduleError(f"{where}: {error} in the settings") from None
        if not words:
            raise ScheduleError(f"{where}: nothing after '{SETTINGS_SEPARATOR}'; write settings such as style=0.6 "
                                f"(or remove the '{SETTINGS_SEPARATOR}')")
        for word in words:
            name, equals, value = word.partition("=")
            if not equals:
                raise ScheduleError(f"{where}: {word!r} is not a setting; write name=value "
                                    f"({', '.join(_SETTING_PARSERS)}); '{SETTINGS_SEPARATOR}' always starts the settings")
            if name not in _SETTING_PARSERS:
                raise ScheduleError(f"{where}: unknown setting {name!r}; known: {', '.join(_SETTING_PARSERS)}")
            if name in settings:
                raise ScheduleError(f"{where}: {name} is set twice")
            try:
                settings[name] = _SETTING_PARSERS[name](value)
            except ValueError as error:
                raise ScheduleError(f"{where}: {name}={value!r} {error}".replace("invalid literal", "is not a number:")) from None
    return ScheduleLine(number, prompt, **settings)


def parse_schedule(text: str) -> list[ScheduleLine]:
    """One line per clip (or per `repeat` clips); blank lines are skipped. Raises ScheduleError naming the line."""
    lines = [parse_schedule_line(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ScheduleError("the prompt list is empty: write one prompt per line, one line per clip")
    return lines


def clip_seed(user_seed: int, clip_index: int) -> int:
    """A different, reproducible seed per clip; clip 0 uses the user's seed unchanged."""
    return (user_seed + CLIP_SEED_STRIDE * clip_index) % SEED_MODULUS


@dataclass(frozen=True)
class ClipPlan:
    index: int
    prompt: str
    seed: int
    line: int = 0  # the schedule line it comes from (1-based), 0 when planned from plain prompts
    style: float | None = None
    end: str | None = None
    drift: str | None = None

    def record(self) -> dict:
        """The per-clip settings a run manifest keeps."""
        return {"line": self.line, "style": self.style, "end": self.end, "drift": self.drift}


def plan_clips(lines: list[ScheduleLine], num_clips: int, user_seed: int,
               overflow: PromptOverflow = PromptOverflow.CYCLE, prompt_repeat: int = 1) -> list[ClipPlan]:
    """Each line makes `repeat` clips in a row (the line's own, else `prompt_repeat`); past the end the list is cycled
    or its last line held, so with one repeat for all lines clip k uses line (k // repeat) % len(lines), as the
    official scripts do.

    Seeds: clip k uses the run's seed + 42 k, unless its line sets seed=n: then the line's first clip uses n and its
    later ones n + 42, n + 84, ... . An end image goes to the last clip of each run of consecutive clips of its line.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    if prompt_repeat < 1:
        raise ValueError(f"prompt_repeat must be at least 1, got {prompt_repeat}")
    if not lines:
        raise ValueError("the prompt list is empty")
    slots = [line for line in lines for _ in range(line.repeat or prompt_repeat)]
    chosen = [slots[k] if k < len(slots) else slots[k % len(slots)] if overflow is PromptOverflow.CYCLE else slots[-1]
              for k in range(num_clips)]
    clips_of_line: dict[int, int] = {}
    plans = []
    for k, line in enumerate(chosen):
        earlier = clips_of_line.get(line.number, 0)
        seed = clip_seed(user_seed, k) if line.seed is None else clip_seed(line.seed, earlier)
        ends_run = k == num_clips - 1 or chosen[k + 1] is not line
        plans.append(ClipPlan(k, line.prompt, seed, line.number, line.style, line.end if ends_run else None, line.drift))
        clips_of_line[line.number] = earlier + 1
    return plans


# Few-step presets: the sigmas a distilled "Turbo" Wan was trained on, followed by the final 0.
SIGMA_PRESETS: dict[str, tuple[float, ...]] = {
    "lightning 4-step (lightx2v / Wan2.2-Lightning)": (1.0, 0.9375, 0.8333, 0.625, 0.0),
    "rCM 4-step (TurboWan)": (0.995, 0.934, 0.853, 0.609, 0.0),
    "rCM 2-step (TurboWan)": (0.995, 0.934, 0.0),  # rCM runs the first N of its 4 times (mid_t[:N - 1])
}
CUSTOM_SCHEDULE = "custom: steps + shift"
DEFAULT_BOUNDARY_SIGMA = 0.875  # Wan 2.2 A14B: high-noise expert at and above, low-noise below (the official SVI value)


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
