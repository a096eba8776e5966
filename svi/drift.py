"""Colour and brightness drift over clips: measuring it and correcting it, as plain torch.

Drift is measured in CIE Lab (D65), where distances are roughly perceptual: a clip's drift is the
distance between its mean Lab colour and the reference's (a mean colour difference, in Delta-E units),
with the per-channel means and standard deviations beside it.

Correction is a per-channel affine map in Lab (mean/std matching; no histograms), whose parameters
are eased in over each clip: a clip starts with the correction its first frames need to continue the
previous clip seamlessly and ends with the correction its last frames need to reach the target, so no
step appears at a seam. What a clip's first frames need depends on the mode: where the next clip is
conditioned on corrected decoded frames (SVI 1.0 modes), it starts from corrected colour and needs none;
where it continues the sampled latent (2.0 Pro), it inherits the previous clip's uncorrected colour and
so carries the previous clip's final correction.

Never fighting a prompt that asks for a change of light:
- a per-clip opt-out (`drift=off` in the schedule) leaves that clip as generated (only easing out the
  carried correction where needed for a seamless start) and makes its last frames the new target, so
  later clips hold the new light instead of being pulled back to the old one;
- small differences (below `deadband`) are never corrected, so a drift-free video is left alone;
- one clip's correction is limited (`max_shift` Delta-E of mean colour, `max_ratio` of contrast), so a
  large intended change is at most nudged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

# sRGB (D65) -> CIE XYZ, and the D65 white point.
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPSILON = 216 / 24389
_KAPPA = 24389 / 27
STATS_STRIDE = 2  # statistics read every 2nd pixel in each direction: a quarter of the work, the same numbers to ~0.01


class DriftMode(str, Enum):
    OFF = "off"
    REFERENCE = "match the reference"
    SEAM = "match the previous clip at the seam"

    @classmethod
    def from_schedule(cls, word: str) -> "DriftMode":
        """The short words a schedule line may use: drift=off / reference / seam."""
        words = {"off": cls.OFF, "reference": cls.REFERENCE, "seam": cls.SEAM}
        if word not in words:
            raise ValueError(f"drift must be one of {sorted(words)}, got {word!r}")
        return words[word]


def _mix(values: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """values [..., 3] times a 3x3 colour matrix, as three broadcast multiply-adds (a matmul with an inner size of 3 is
    up to 100x slower on the CPU)."""
    matrix = matrix.to(values)
    return values[..., 0:1] * matrix[:, 0] + values[..., 1:2] * matrix[:, 1] + values[..., 2:3] * matrix[:, 2]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB in 0..1 -> Lab (L 0..100)."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _mix(linear, _RGB_TO_XYZ) / _WHITE.to(rgb)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(_EPSILON) ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> [..., 3] sRGB, clamped to 0..1."""
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], dim=-1)
    xyz = torch.where(f ** 3 > _EPSILON, f ** 3, (116 * f - 16) / _KAPPA)
    xyz = torch.cat([xyz[..., :1], torch.where(lab[..., :1] > _KAPPA * _EPSILON, fy.unsqueeze(-1) ** 3,
                                                lab[..., :1] / _KAPPA), xyz[..., 2:]], dim=-1)
    linear = _mix(xyz * _WHITE.to(lab), _XYZ_TO_RGB)
    linear = linear.clamp(0, 1)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055).clamp(0, 1)


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and standard deviation (L, a, b) of some frames."""

    mean: torch.Tensor  # [3]
    std: torch.Tensor  # [3]

    @classmethod
    def of(cls, frames: torch.Tensor) -> "LabStats":
        """Statistics of frames [F, H, W, 3] (or one image [H, W, 3]) in 0..1."""
        lab = rgb_to_lab(frames[..., ::STATS_STRIDE, ::STATS_STRIDE, :3].double()).reshape(-1, 3)
        return cls(lab.mean(dim=0).cpu(), lab.std(dim=0).cpu())  # statistics live on the CPU, whatever the frames

    def difference(self, other: "LabStats") -> float:
        """Distance between the mean colours (Delta-E 1976)."""
        return float(torch.linalg.vector_norm(self.mean - other.mean))

    def as_dict(self) -> dict:
        return {"mean_lab": [round(float(v), 3) for v in self.mean], "std_lab": [round(float(v), 3) for v in self.std]}


@dataclass(frozen=True)
class ClipDrift:
    """What the drift measurement says about one clip."""

    difference: float  # Delta-E between the clip's mean Lab colour and the reference's
    stats: LabStats

    def as_dict(self) -> dict:
        return {"delta_e": round(self.difference, 3), **self.stats.as_dict()}


def measure_drift(frames: torch.Tensor, reference: LabStats) -> ClipDrift:
    stats = LabStats.of(frames)
    return ClipDrift(stats.difference(reference), stats)


@dataclass(frozen=True)
class LabAffine:
    """lab' = lab * scale + offset, per channel."""

    scale: torch.Tensor  # [3]
    offset: torch.Tensor  # [3]

    @classmethod
    def identity(cls) -> "LabAffine":
        return cls(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))

    def is_identity(self) -> bool:
        return bool(torch.equal(self.scale, torch.ones_like(self.scale)) and torch.equal(self.offset, torch.zeros_like(self.offset)))

    def blend(self, other: "LabAffine", weight: float) -> "LabAffine":
        return LabAffine(self.scale + (other.scale - self.scale) * weight, self.offset + (other.offset - self.offset) * weight)

    def as_dict(self) -> dict:
        return {"scale": [round(float(v), 4) for v in self.scale], "offset": [round(float(v), 3) for v in self.offset]}


@dataclass(frozen=True)
class DriftSettings:
    mode: DriftMode = DriftMode.OFF
    strength: float = 1.0  # 0 = measure only, 1 = move fully onto the target (within the limits)
    deadband: float = 1.0  # Lab units of mean colour (Delta-E) and of spread (std per channel) left uncorrected
    max_shift: float = 12.0  # Delta-E: the most one clip's mean colour is moved
    max_ratio: float = 1.3  # the most one clip's contrast (std per channel) is scaled up or down
    window: int = 8  # frames at a clip's end (and, for seam matching, at its start) whose statistics are matched

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"drift strength must be between 0 and 1, got {self.strength}")
        if self.deadband < 0 or self.max_shift < 0 or self.max_ratio < 1.0 or self.window < 1:
            raise ValueError("drift limits: deadband and max_shift must be >= 0, max_ratio >= 1, window >= 1")


def transfer(source: LabStats, target: LabStats, settings: DriftSettings, baseline: LabAffine | None = None) -> LabAffine:
    """The per-channel affine map that moves `source` statistics towards `target`.

    The wanted move is the difference beyond the deadband, times the strength; the limits bound how far it goes past
    what `baseline` (the correction the clip already starts with) does to the same statistics, so a correction that a
    continuing latent has to carry over from clip to clip is not itself capped, only its growth within one clip.
    """
    baseline = baseline or LabAffine.identity()
    shift = target.mean - source.mean
    distance = float(torch.linalg.vector_norm(shift))
    wanted_mean = source.mean + (shift * (max(0.0, distance - settings.deadband) * settings.strength / distance)
                                 if distance > 0 else shift)
    spread = target.std - source.std  # the deadband applies to the spread in the same Lab units
    wanted_std = source.std + torch.sign(spread) * (spread.abs() - settings.deadband).clamp_min(0) * settings.strength
    wanted_log_scale = torch.log(wanted_std.clamp_min(1e-6) / source.std.clamp_min(1e-6))
    base_mean = source.mean * baseline.scale + baseline.offset
    step = wanted_mean - base_mean
    step_size = float(torch.linalg.vector_norm(step))
    if step_size > settings.max_shift:
        step = step * (settings.max_shift / step_size)
    limit = math.log(settings.max_ratio)
    scale = baseline.scale * torch.exp((wanted_log_scale - torch.log(baseline.scale)).clamp(-limit, limit))
    # lab' = (lab - source.mean) * scale + (base_mean + step)
    return LabAffine(scale, base_mean + step - source.mean * scale)


def apply_ramp(frames: torch.Tensor, start: LabAffine, end: LabAffine) -> torch.Tensor:
    """Frames [F, H, W, 3] with the correction eased linearly from `start` (first frame) to `end` (last frame)."""
    if start.is_identity() and end.is_identity():
        return frames
    out = torch.empty_like(frames)
    count = frames.shape[0]
    for index in range(count):  # one frame at a time, in float32 (well inside an 8-bit step): no whole-clip Lab copy
        affine = start.blend(end, index / (count - 1) if count > 1 else 1.0)
        lab = rgb_to_lab(frames[index, ..., :3].float())
        out[index, ..., :3] = lab_to_rgb(lab * affine.scale.to(lab) + affine.offset.to(lab)).to(frames.dtype)
    if frames.shape[-1] > 3:
        out[..., 3:] = frames[..., 3:]
    return out


@dataclass(frozen=True)
class ClipCorrection:
    frames: torch.Tensor  # the corrected clip
    start: LabAffine
    end: LabAffine
    before: ClipDrift
    after: ClipDrift

    def record(self) -> dict:
        """What a run manifest keeps about this clip's drift and its correction."""
        return {"before": self.before.as_dict(), "after": self.after.as_dict(),
                "correction_start": self.start.as_dict(), "correction_end": self.end.as_dict()}


class DriftController:
    """Measures and corrects clips in order; holds only statistics between clips, never frames.

    `conditioning_corrected`: True where the next clip is conditioned on the corrected decoded frames
    (SVI 1.0 modes), False where it continues the sampled latent (2.0 Pro); see the module docstring.
    `seam_start`, `seam_count`: which frames of a later clip show again the previous clip's last
    `seam_count` frames (svi/seams.py, Seam.repeated_span), for seam matching.
    """

    def __init__(self, reference: torch.Tensor, settings: DriftSettings, *, conditioning_corrected: bool,
                 seam_start: int, seam_count: int):
        self.settings = settings
        self.reference = LabStats.of(reference)
        self.target = self.reference
        self.conditioning_corrected = conditioning_corrected
        self.seam_start, self.seam_count = seam_start, seam_count
        self.carried = LabAffine.identity()  # the correction the next clip's first frames need
        self.previous_tail: LabStats | None = None  # the previous clip's corrected last frames

    def state(self) -> dict:
        """Everything the controller carries between clips (saved with each clip, so a resumed run continues it)."""
        return {"target": _stats_to_list(self.target), "carried": [self.carried.scale.tolist(), self.carried.offset.tolist()],
                "previous_tail": None if self.previous_tail is None else _stats_to_list(self.previous_tail)}

    def restore(self, state: dict) -> None:
        self.target = _stats_from_list(state["target"])
        self.carried = LabAffine(*(torch.tensor(v, dtype=torch.float64) for v in state["carried"]))
        self.previous_tail = None if state["previous_tail"] is None else _stats_from_list(state["previous_tail"])

    def correct(self, frames: torch.Tensor, mode: DriftMode | None = None) -> ClipCorrection:
        """Corrects one clip (frames [F, H, W, 3]); `mode` overrides the settings' mode for this clip (schedule)."""
        mode = self.settings.mode if mode is None else mode
        window = min(self.settings.window, frames.shape[0])
        if mode is DriftMode.REFERENCE:
            start = self.carried
            end = transfer(LabStats.of(frames[-window:]), self.target, self.settings, baseline=start)
        elif mode is DriftMode.SEAM and self.previous_tail is not None:
            head = frames[self.seam_start: self.seam_start + self.seam_count]
            start = end = transfer(LabStats.of(head), self.previous_tail, self.settings, baseline=self.carried)  # moves as one
        elif mode is DriftMode.SEAM:
            start = end = LabAffine.identity()  # the first clip has no seam to match
        else:
            start, end = self.carried, LabAffine.identity()  # off: only the carried correction is eased out
        corrected = apply_ramp(frames, start, end)
        self.previous_tail = LabStats.of(corrected[-self.seam_count:]) if self.seam_count else None
        if mode is DriftMode.OFF:
            self.target = LabStats.of(corrected[-window:])  # the light this clip ended on is what later clips hold
        self.carried = LabAffine.identity() if self.conditioning_corrected else end
        return ClipCorrection(corrected, start, end, measure_drift(frames, self.reference),
                              measure_drift(corrected, self.reference))


def _stats_to_list(stats: LabStats) -> list:
    return [stats.mean.tolist(), stats.std.tolist()]


def _stats_from_list(values: list) -> LabStats:
    return LabStats(torch.tensor(values[0], dtype=torch.float64), torch.tensor(values[1], dtype=torch.float64))
