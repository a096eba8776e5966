"""Prompts per clip, seeds per clip and the few-step sigma schedules."""

import pytest
import torch

from svi_infinity.svi.plan import (DEFAULT_BOUNDARY_SIGMA, SIGMA_PRESETS, PromptOverflow, ScheduleError, clip_seed,
                                   parse_schedule, plan_clips, schedule_sigmas, shifted_flow_sigmas, split_at_boundary)


def lines(*prompts):
    return parse_schedule("\n".join(prompts))


def test_prompt_list_parsing():
    assert [line.prompt for line in parse_schedule("a\n\n  b  \n\nc\n")] == ["a", "b", "c"]
    assert [line.number for line in parse_schedule("a\n\n  b  \n\nc\n")] == [1, 3, 5]
    with pytest.raises(ValueError, match="empty"):
        parse_schedule(" \n\t\n")


def test_per_line_settings_parse():
    first, second, third = parse_schedule(
        'a person walks | repeat=2 style=0.6\nthe sun sets|drift=off end="sunset at sea.png"\nwaves | seed=1234')
    assert (first.prompt, first.repeat, first.style, first.seed, first.end, first.drift) == ("a person walks", 2, 0.6, None, None, None)
    assert (second.prompt, second.drift, second.end) == ("the sun sets", "off", "sunset at sea.png")
    assert third.seed == 1234 and third.settings() == {"seed": 1234}


@pytest.mark.parametrize("text, message", [
    ("ok\na cat | sed=5", r"line 2 \('a cat \| sed=5'\): unknown setting 'sed'; known: repeat, style, seed, end, drift"),
    ("ok\n\na cat | style=loud", r"line 3 .*style='loud' could not convert"),
    ("a cat | repeat=0", r"line 1 .*repeat='0' must be at least 1"),
    ("a cat | seed=-1", r"line 1 .*seed='-1' must be between 0 and"),
    ("a cat | drift=sometimes", r"line 1 .*must be one of off, reference, seam"),
    ("a cat | style=1 style=2", r"line 1 .*style is set twice"),
    ("a cat | bright", r"line 1 .*'bright' is not a setting"),
    ("a cat |", r"line 1 .*nothing after '\|'"),
    ("  | style=1", r"line 1 .*the prompt is empty"),
    ('a cat | end="open quote', r"line 1 .*No closing quotation"),
    ("a cat | style=11", r"line 1 .*between -10 and 10"),
])
def test_a_line_that_does_not_parse_is_named(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(text)


def test_overflow_cycle_or_hold_last():
    prompts = lines("a", "b", "c")
    assert [p.prompt for p in plan_clips(prompts, 7, 0, PromptOverflow.CYCLE)] == list("abcabca")
    assert [p.prompt for p in plan_clips(prompts, 5, 0, PromptOverflow.HOLD_LAST)] == list("abccc")


@pytest.mark.parametrize("repeat", [1, 2, 3])
def test_prompt_repeat_is_the_official_rule(repeat):
    """test_svi.py: prompt_index = (chunk_idx // prompt_repeat_times) % len(prompts)."""
    prompts = ["a", "b", "c"]
    plan = plan_clips(lines(*prompts), 11, 0, PromptOverflow.CYCLE, prompt_repeat=repeat)
    assert [p.prompt for p in plan] == [prompts[(k // repeat) % len(prompts)] for k in range(11)]


def test_per_line_repeat_overrides_the_run_repeat():
    plan = plan_clips(lines("a | repeat=3", "b", "c | repeat=1"), 7, 0, prompt_repeat=2)
    assert [p.prompt for p in plan] == list("aaabbca")
    assert [p.line for p in plan] == [1, 1, 1, 2, 2, 3, 1]


def test_seeds_differ_per_clip_and_are_reproducible():
    seeds = [p.seed for p in plan_clips(lines("x"), 60, 12345)]
    assert len(set(seeds)) == 60 and seeds[0] == 12345
    assert seeds == [p.seed for p in plan_clips(lines("x"), 60, 12345)]
    assert clip_seed(2**64 - 1, 1) == 41
    with pytest.raises(ValueError):
        plan_clips(lines("x"), 0, 1)


def test_seed_override_starts_the_line_on_that_seed_and_never_repeats_it():
    plan = plan_clips(lines("a", "b | seed=777 repeat=2", "c"), 8, 100, PromptOverflow.CYCLE)
    assert [p.seed for p in plan] == [100, 777, 819, 100 + 3 * 42, 100 + 4 * 42, 777 + 2 * 42, 777 + 3 * 42, 100 + 7 * 42]
    held = plan_clips(lines("a", "b | seed=5"), 5, 0, PromptOverflow.HOLD_LAST)
    assert [p.seed for p in held] == [0, 5, 47, 89, 131]


def test_end_image_goes_to_the_last_clip_of_each_run_of_its_line():
    plan = plan_clips(lines("a | repeat=2 end=x.png", "b"), 6, 0, PromptOverflow.CYCLE)
    assert [p.end for p in plan] == [None, "x.png", None, None, "x.png", None]
    held = plan_clips(lines("a", "b | end=y.png"), 5, 0, PromptOverflow.HOLD_LAST)
    assert [p.end for p in held] == [None, None, None, None, "y.png"]


def test_style_and_drift_apply_to_every_clip_of_the_line():
    plan = plan_clips(lines("a | repeat=2 style=0.25 drift=off", "b"), 3, 0)
    assert [(p.style, p.drift) for p in plan] == [(0.25, "off"), (0.25, "off"), (None, None)]
    assert plan[0].record() == {"line": 1, "style": 0.25, "end": None, "drift": "off"}


def test_presets_are_the_spec_numbers():
    assert SIGMA_PRESETS["lightning 4-step (lightx2v / Wan2.2-Lightning)"] == (1.0, 0.9375, 0.8333, 0.625, 0.0)
    assert SIGMA_PRESETS["rCM 4-step (TurboWan)"] == (0.995, 0.934, 0.853, 0.609, 0.0)


def test_shift_5_four_steps_is_the_lightning_schedule():
    assert torch.allclose(shifted_flow_sigmas(4, 5.0), schedule_sigmas("lightning 4-step (lightx2v / Wan2.2-Lightning)"), atol=1e-4)
    with pytest.raises(ValueError):
        schedule_sigmas("nope")


@pytest.mark.parametrize("boundary", [0.9, DEFAULT_BOUNDARY_SIGMA])
@pytest.mark.parametrize("preset", ["lightning 4-step (lightx2v / Wan2.2-Lightning)", "rCM 4-step (TurboWan)"])
def test_four_step_presets_split_two_high_two_low(boundary, preset):
    high, low = split_at_boundary(schedule_sigmas(preset), boundary)
    assert len(high) - 1 == 2 and len(low) - 1 == 2
    assert high[-1] == low[0]


def test_default_boundary_is_the_official_value_and_changes_long_schedules():
    """0.875 as in the official Wan 2.2 SVI scripts (switch_DiT_boundary); 50- and 8-step runs split differently from 0.9."""
    assert DEFAULT_BOUNDARY_SIGMA == 0.875
    for steps, at_0875, at_09 in ((50, 21, 18), (8, 4, 3)):
        sigmas = shifted_flow_sigmas(steps, 5.0)
        assert len(split_at_boundary(sigmas, 0.875)[0]) - 1 == at_0875
        assert len(split_at_boundary(sigmas, 0.9)[0]) - 1 == at_09
