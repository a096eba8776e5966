"""Prompts per clip, seeds per clip and the few-step sigma schedules."""

import pytest
import torch

from svi_infinity.svi.plan import (SIGMA_PRESETS, PromptOverflow, clip_seed, parse_prompt_list, plan_clips,
                                   schedule_sigmas, shifted_flow_sigmas, split_at_boundary)


def test_prompt_list_parsing():
    assert parse_prompt_list("a\n\n  b  \n\nc\n") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="empty"):
        parse_prompt_list(" \n\t\n")


def test_overflow_cycle_or_hold_last():
    prompts = ["a", "b", "c"]
    assert [p.prompt for p in plan_clips(prompts, 7, 0, PromptOverflow.CYCLE)] == list("abcabca")
    assert [p.prompt for p in plan_clips(prompts, 5, 0, PromptOverflow.HOLD_LAST)] == list("abccc")


def test_seeds_differ_per_clip_and_are_reproducible():
    seeds = [p.seed for p in plan_clips(["x"], 60, 12345)]
    assert len(set(seeds)) == 60 and seeds[0] == 12345
    assert seeds == [p.seed for p in plan_clips(["x"], 60, 12345)]
    assert clip_seed(2**64 - 1, 1) == 41
    with pytest.raises(ValueError):
        plan_clips(["x"], 0, 1)


def test_presets_are_the_spec_numbers():
    assert SIGMA_PRESETS["lightning 4-step (lightx2v / Wan2.2-Lightning)"] == (1.0, 0.9375, 0.8333, 0.625, 0.0)
    assert SIGMA_PRESETS["rCM 4-step (TurboWan)"] == (0.995, 0.934, 0.853, 0.609, 0.0)


def test_shift_5_four_steps_is_the_lightning_schedule():
    assert torch.allclose(shifted_flow_sigmas(4, 5.0), schedule_sigmas("lightning 4-step (lightx2v / Wan2.2-Lightning)"), atol=1e-4)
    with pytest.raises(ValueError):
        schedule_sigmas("nope")


@pytest.mark.parametrize("boundary", [0.9, 0.875])
def test_two_high_two_low_steps(boundary):
    high, low = split_at_boundary(schedule_sigmas("lightning 4-step (lightx2v / Wan2.2-Lightning)"), boundary)
    assert high.tolist() == pytest.approx([1.0, 0.9375, 0.8333])
    assert low.tolist() == pytest.approx([0.8333, 0.625, 0.0])
