"""Drift control: a clip sequence with a known, growing drift (brightness, contrast, hue) is measured and corrected.

The clips are a moving beach scene (sky gradient, waves, sand ripples, a walking figure, a drifting cloud) seen
through a simulated SVI generator that drifts: within every clip its colours move a fixed step further (brighter,
more contrast, hue turning), continuing from where the previous clip left off, the way SVI drifts when the next clip
continues the last one. In 2.0 Pro the next clip continues the uncorrected latent; in 1.0 modes it continues the
corrected decoded frames (the generator then starts from the corrected colour). Numbers are printed with -s.
"""

import functools
import math

import pytest
import torch

from svi_infinity.svi.drift import (DriftController, DriftMode, DriftSettings, LabAffine, LabStats, apply_ramp,
                                    lab_to_rgb, measure_drift, rgb_to_lab, transfer)

CLIPS, FRAMES, OVERLAP = 6, 81, 4
STEP = {"brightness": 2.5, "contrast": 0.05, "hue_degrees": 4.0}  # per clip: +2.5 L, +5% contrast, 4 degrees of hue
ACHIEVED_FACTOR = 5.0  # the measured drift falls at least this much
DRIFT_FREE_TOLERANCE = 0.5 / 255  # on a drift-free sequence no pixel moves more than half an 8-bit step


@functools.lru_cache(maxsize=None)
def scene_frames(first: int, count: int, height: int = 36, width: int = 64) -> torch.Tensor:
    """Frames first..first+count-1 of the moving scene, [count, H, W, 3] in 0..1."""
    y = torch.linspace(0, 1, height).view(-1, 1)
    x = torch.linspace(0, 1, width).view(1, -1)
    frames = []
    for g in range(first, first + count):
        t = g / 16.0
        xs = x + 0.02 * math.sin(0.15 * t)
        zero = 0 * xs + 0 * y
        sky = torch.stack([0.35 + 0.25 * y + zero, 0.55 + 0.2 * y + zero, 0.9 - 0.1 * y + zero], -1)
        sea_mask = ((y > 0.45) & (y <= 0.65)).float().expand(height, width).unsqueeze(-1)
        waves = 0.06 * torch.sin(40 * xs + 3 * t + 20 * y)
        sea = torch.stack([0.05 + waves, 0.35 + waves, 0.55 + waves], -1)
        sand_mask = (y > 0.65).float().expand(height, width).unsqueeze(-1)
        ripples = 0.05 * torch.sin(70 * xs + 50 * y)
        sand = torch.stack([0.8 + ripples, 0.7 + ripples, 0.5 + ripples], -1)
        image = sky * (1 - sea_mask - sand_mask) + sea * sea_mask + sand * sand_mask
        person = ((((xs - 0.3 - 0.4 * (g % 300) / 300) / 0.03) ** 2 + ((y - 0.72) / 0.12) ** 2) < 1).float().unsqueeze(-1)
        image = image * (1 - person) + torch.tensor([0.6, 0.2, 0.25]) * person
        cloud = torch.exp(-(((xs - 0.8 + 0.3 * (g % 500) / 500) / 0.1) ** 2 + ((y - 0.15) / 0.05) ** 2)).unsqueeze(-1)
        frames.append((image * (1 - 0.8 * cloud) + 0.76 * cloud).clamp(0, 1))
    return torch.stack(frames).double()


class ColourState:
    """A colour state of the simulated generator: lab' = matrix @ lab + offset (hue turns mix a and b)."""

    def __init__(self, matrix=None, offset=None):
        self.matrix = torch.eye(3, dtype=torch.float64) if matrix is None else matrix
        self.offset = torch.zeros(3, dtype=torch.float64) if offset is None else offset

    @classmethod
    def drift(cls, fraction: float, step=STEP) -> "ColourState":
        angle = math.radians(step["hue_degrees"] * fraction)
        contrast = 1 + step["contrast"] * fraction
        matrix = torch.tensor([[contrast, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]],
                              dtype=torch.float64)
        return cls(matrix, torch.tensor([step["brightness"] * fraction + 50 * (1 - contrast), 0, 0], dtype=torch.float64))

    def then(self, other: "ColourState") -> "ColourState":
        return ColourState(other.matrix @ self.matrix, other.matrix @ self.offset + other.offset)

    def corrected_by(self, affine: LabAffine) -> "ColourState":
        return ColourState(torch.diag(affine.scale) @ self.matrix, affine.scale * self.offset + affine.offset)

    def show(self, frames: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(frames)
        m = self.matrix
        return lab_to_rgb(lab[..., 0:1] * m[:, 0] + lab[..., 1:2] * m[:, 1] + lab[..., 2:3] * m[:, 2] + self.offset)


def generate(controller: DriftController | None, *, conditioning_corrected: bool, step=STEP, modes=None,
             extra=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(raw clips, shown clips): clip k covers scene frames k (81 - 4) ...; its colour drifts one `step` over the clip,
    starting from the colour the previous clip handed on (corrected or not, see the module docstring).
    `extra[k]`: a further ColourState the prompt asks for in clip k (e.g. the light changes)."""
    start = ColourState()
    raw_clips, shown = [], []
    for k in range(CLIPS):
        content = scene_frames(k * (FRAMES - OVERLAP), FRAMES)
        wanted = (extra or {}).get(k)
        raw = []
        for i in range(FRAMES):
            state = start.then(ColourState.drift(i / (FRAMES - 1), step))
            if wanted is not None:
                state = state.then(ColourState.drift(i / (FRAMES - 1), wanted))
            raw.append(state.show(content[i: i + 1]))
        raw = torch.cat(raw)
        end_state = state
        if controller is None:
            shown.append(raw)
        else:
            correction = controller.correct(raw, None if modes is None else modes.get(k))
            shown.append(correction.frames)
            if conditioning_corrected:
                end_state = end_state.corrected_by(correction.end)
        raw_clips.append(raw)
        start = end_state
    return raw_clips, shown


def controller(mode: DriftMode, conditioning_corrected: bool, **settings) -> DriftController:
    return DriftController(scene_frames(0, 1)[0], DriftSettings(mode=mode, **settings),
                           conditioning_corrected=conditioning_corrected, seam_start=1, seam_count=OVERLAP)


def drifts(clips: list[torch.Tensor]) -> list[float]:
    reference = LabStats.of(scene_frames(0, 1)[0])
    return [measure_drift(clip, reference).difference for clip in clips]


def seam_jumps(clips: list[torch.Tensor]) -> list[float]:
    """Delta-E between the previous clip's last 4 frames and the next clip's frames 1-4 that show them again."""
    return [LabStats.of(a[-OVERLAP:]).difference(LabStats.of(b[1: 1 + OVERLAP])) for a, b in zip(clips, clips[1:])]


def test_lab_conversion():
    rgb = torch.rand(2000, 3, dtype=torch.float64)
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-9
    lab = rgb_to_lab(torch.tensor([[1.0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float64))
    assert torch.allclose(lab, torch.tensor([[53.24, 80.09, 67.20], [100, 0, 0], [0, 0, 0]], dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("conditioning_corrected", [False, True], ids=["2.0 Pro (latent carried)", "1.0 (frames re-encoded)"])
def test_reference_matching_removes_injected_drift(conditioning_corrected):
    _, uncorrected = generate(None, conditioning_corrected=conditioning_corrected)
    _, corrected = generate(controller(DriftMode.REFERENCE, conditioning_corrected), conditioning_corrected=conditioning_corrected)
    before, after = drifts(uncorrected), drifts(corrected)
    print(f"\ndrift per clip (Delta-E of mean Lab colour to the reference), {'1.0' if conditioning_corrected else '2.0 Pro'}:")
    print("  off:                 " + " ".join(f"{d:6.2f}" for d in before))
    print("  match the reference: " + " ".join(f"{d:6.2f}" for d in after))
    print(f"  mean {sum(before) / CLIPS:.2f} -> {sum(after) / CLIPS:.2f}  (x{sum(before) / sum(after):.1f}); "
          f"last clip {before[-1]:.2f} -> {after[-1]:.2f} (x{before[-1] / after[-1]:.1f})")
    assert before == sorted(before) and before[-1] > 10  # the injected drift grows clip by clip
    assert sum(before) / sum(after) >= ACHIEVED_FACTOR and before[-1] / after[-1] >= ACHIEVED_FACTOR
    jumps = seam_jumps(corrected)
    print("  seam jumps after correction (Delta-E): " + " ".join(f"{j:.2f}" for j in jumps))
    assert max(jumps) < 1.0  # the eased correction adds no step at the seams


def test_seam_matching_removes_colour_pops_at_the_seams():
    """Every later clip comes out with a colour pop (brighter and bluer than the previous clip's end it continues, and
    the pops add up); matching the previous clip at the seam closes each one down to the deadband."""
    pop = {"brightness": 5.0, "contrast": 0.0, "hue_degrees": 8.0}
    settings = DriftSettings()

    def popping(ctrl):
        state, shown = ColourState(), []
        for k in range(CLIPS):
            state = state if k == 0 else state.then(ColourState.drift(1.0, pop))
            raw = state.show(scene_frames(k * (FRAMES - OVERLAP), FRAMES))
            shown.append(raw if ctrl is None else ctrl.correct(raw).frames)
        return shown

    before = seam_jumps(popping(None))
    after = seam_jumps(popping(controller(DriftMode.SEAM, conditioning_corrected=False)))
    print(f"\nseam jumps (Delta-E): off {' '.join(f'{j:.2f}' for j in before)}\n"
          f"  match the previous clip at the seam: {' '.join(f'{j:.2f}' for j in after)} (x{sum(before) / sum(after):.1f})")
    assert min(before) > 5 and max(after) <= settings.deadband + 0.05 and sum(before) / sum(after) >= ACHIEVED_FACTOR


@pytest.mark.parametrize("mode", [DriftMode.REFERENCE, DriftMode.SEAM])
def test_a_drift_free_sequence_is_left_alone(mode):
    no_drift = {"brightness": 0.0, "contrast": 0.0, "hue_degrees": 0.0}
    raw, shown = generate(controller(mode, conditioning_corrected=False), conditioning_corrected=False, step=no_drift)
    change = max(float((a - b).abs().max()) for a, b in zip(raw, shown))
    print(f"\n{mode.value}: largest change on a drift-free sequence {change * 255:.4f} / 255")
    assert change <= DRIFT_FREE_TOLERANCE


def test_an_opted_out_clip_changes_the_light_and_later_clips_keep_it():
    """Clip 2's prompt makes it darker and warmer (drift=off there): it is shown as generated, and later clips hold
    the new light instead of being pulled back to the reference."""
    dusk = {"brightness": -18.0, "contrast": -0.1, "hue_degrees": -25.0}
    ctrl = controller(DriftMode.REFERENCE, conditioning_corrected=True)
    raw, shown = generate(ctrl, conditioning_corrected=True, modes={2: DriftMode.OFF}, extra={2: dusk})
    assert torch.equal(raw[2], shown[2])
    dusk_end = LabStats.of(shown[2][-8:])
    later = [LabStats.of(clip).difference(dusk_end) for clip in shown[3:]]
    to_reference = drifts(shown[3:])
    print(f"\nafter an opted-out dusk clip: Delta-E to the dusk light {' '.join(f'{d:.2f}' for d in later)}, "
          f"to the original reference {' '.join(f'{d:.2f}' for d in to_reference)}")
    assert max(later) < 2.0 and min(to_reference) > 10


def test_one_clip_is_moved_at_most_max_shift_and_max_ratio():
    reference = LabStats(torch.tensor([50.0, 0, 0], dtype=torch.float64), torch.tensor([20.0, 10, 10], dtype=torch.float64))
    far = LabStats(torch.tensor([80.0, 30, -20], dtype=torch.float64), torch.tensor([40.0, 10, 2], dtype=torch.float64))
    settings = DriftSettings(mode=DriftMode.REFERENCE, max_shift=12.0, max_ratio=1.3)
    affine = transfer(far, reference, settings)
    moved = far.mean * affine.scale + affine.offset
    assert float(torch.linalg.vector_norm(moved - far.mean)) == pytest.approx(12.0)
    assert torch.allclose(affine.scale, torch.tensor([1 / 1.3, 1.0, 1.3], dtype=torch.float64))
    half = transfer(far, reference, DriftSettings(mode=DriftMode.REFERENCE, strength=0.5, max_shift=100, max_ratio=10))
    distance = float(torch.linalg.vector_norm(reference.mean - far.mean))
    assert float(torch.linalg.vector_norm(far.mean * half.scale + half.offset - far.mean)) == pytest.approx((distance - 1.0) / 2)


def test_the_carried_state_survives_a_resume():
    """A resumed run restores the controller from the last saved clip and corrects the next clip identically."""
    raw, _ = generate(None, conditioning_corrected=False)
    straight = controller(DriftMode.REFERENCE, conditioning_corrected=False)
    for clip in raw[:3]:
        straight.correct(clip)
    resumed = controller(DriftMode.REFERENCE, conditioning_corrected=False)
    resumed.restore(straight.state())
    assert torch.equal(straight.correct(raw[3]).frames, resumed.correct(raw[3]).frames)


def test_apply_ramp_eases_from_start_to_end():
    frames = scene_frames(0, 5)
    start, end = LabAffine.identity(), LabAffine(torch.ones(3, dtype=torch.float64), torch.tensor([10.0, 0, 0], dtype=torch.float64))
    out = apply_ramp(frames, start, end)
    shifts = [float((rgb_to_lab(out[i]) - rgb_to_lab(frames[i]))[..., 0].median()) for i in range(5)]
    assert shifts == pytest.approx([0, 2.5, 5, 7.5, 10], abs=0.01)
    assert apply_ramp(frames, start, start) is frames
