"""The few-step presets against svi-spec.md's numbers, never against the implementation's own table.

svi-spec.md, "Models": Lightning / lightx2v 4 steps use sigmas 1.0, 0.9375, 0.8333, 0.625; "rCM-distilled
TurboWan checkpoints use 1-4 steps with sigmas 0.995, 0.934, 0.853, 0.609". Those four are rCM's TrigFlow times
atan(200), 1.5, 1.4, 1.0 turned into rectified-flow sigmas, sin t / (sin t + cos t); rCM's N-step sampler runs the
first N of them (its mid-times are [1.5, 1.4, 1.0][:N - 1]), so an N-step preset is the first N spec sigmas, then 0.
"""

import math

import pytest
import torch

from svi_infinity.svi.plan import SIGMA_PRESETS, schedule_sigmas, split_at_boundary

SPEC_RCM = (0.995, 0.934, 0.853, 0.609)
SPEC_LIGHTNING = (1.0, 0.9375, 0.8333, 0.625)
RCM_TRIGFLOW_TIMES = (math.atan(200.0), 1.5, 1.4, 1.0)


def test_spec_rcm_sigmas_are_rcms_trigflow_times():
    derived = [math.sin(t) / (math.sin(t) + math.cos(t)) for t in RCM_TRIGFLOW_TIMES]
    assert [round(s, 3) for s in derived] == list(SPEC_RCM)


@pytest.mark.parametrize("steps", [2, 4])
def test_rcm_preset_runs_the_first_n_spec_sigmas(steps):
    """Breakage caught (and found: the 2-step preset was 0.995, 0.853, 0, skipping rCM's second time)."""
    preset = f"rCM {steps}-step (TurboWan)"
    assert preset in SIGMA_PRESETS
    assert schedule_sigmas(preset).tolist() == pytest.approx([*SPEC_RCM[:steps], 0.0])


def test_every_preset_is_a_spec_schedule():
    """Each preset is a prefix of one of the spec's schedules (as many steps as its name says), ending at 0."""
    for name, sigmas in SIGMA_PRESETS.items():
        steps = int(name.split("-step")[0].split()[-1])
        spec = SPEC_RCM if name.startswith("rCM") else SPEC_LIGHTNING
        assert list(sigmas) == pytest.approx([*spec[:steps], 0.0]), name


def test_rcm_4_step_gives_each_wan22_expert_two_steps_at_the_default_boundary():
    high, low = split_at_boundary(schedule_sigmas("rCM 4-step (TurboWan)"), 0.9)
    assert high.tolist() == pytest.approx([0.995, 0.934, 0.853]) and low.tolist() == pytest.approx([0.853, 0.609, 0.0])
    assert torch.equal(high[-1], low[0])
