"""Input rules: each problem names its input and says what would work; what a refusal proposes really passes."""

import math

import pytest

from svi_infinity.svi.conditioning import SVIMode
from svi_infinity.svi.validation import (InvalidInputs, clip_fits_in_memory, clip_length, clip_problems, clip_side,
                                         decoded_clip_bytes, number_in_range, raise_if_any, seam_problems)

GIB = 2**30


@pytest.mark.parametrize("value, phrase", [(math.nan, "NaN is not a number"), (math.inf, "inf is not a finite number"),
                                           (-math.inf, "-inf is not a finite number"), ("1.5", "'1.5' is not a number"),
                                           (True, "True is not a number"), (0.5, "below the minimum 1"),
                                           (31, "above the maximum 30")])
def test_numbers_must_be_real_and_in_range(value, phrase):
    (problem,) = number_in_range("cfg", value, 1, 30)
    assert problem.input == "cfg" and phrase in problem.message


def test_a_real_number_in_range_passes():
    assert number_in_range("cfg", 1.0, 1, 30) == number_in_range("cfg", 30, 1, 30) == number_in_range("shift", -2.5) == []


@pytest.mark.parametrize("side, phrase", [(0, "at least 16"), (8, "at least 16"), (40, "nearest: 32 or 48"),
                                          (16400, "largest size ComfyUI allows (16384)")])
def test_clip_sides(side, phrase):
    (problem,) = clip_side("height", side, 16384)
    assert problem.input == "height" and phrase in problem.message


def test_clip_lengths_name_the_nearest_valid_ones():
    assert clip_length("length", 81) == clip_length("length", 1) == []
    (problem,) = clip_length("length", 79)
    assert "nearest: 77 or 81" in problem.message
    for suggestion in (77, 81):
        assert clip_length("length", suggestion) == []


def test_memory_refusal_proposes_a_size_that_fits():
    memory = 24 * GIB
    (problem,) = clip_fits_in_memory(16384, 9216, 81, memory)
    assert problem.input == "width/height" and "more than this machine can hold (24 GiB of RAM)" in problem.message
    width, height = map(int, problem.message.rsplit("about ", 1)[1].split(" ")[0].split("x"))
    assert width % 16 == height % 16 == 0 and abs(width / height - 16384 / 9216) < 0.05
    assert clip_fits_in_memory(width, height, 81, memory) == []
    assert decoded_clip_bytes(width, height, 81) > 0.8 * memory / 3  # not needlessly small


def test_clip_problems_list_every_bad_part_once():
    problems = clip_problems(40, 50, 10, max_side=16384, memory_bytes=64 * GIB)
    assert [p.input for p in problems] == ["width", "height", "length"]
    assert clip_problems(832, 480, 81, max_side=16384, memory_bytes=64 * GIB) == []


def test_seam_rules():
    pro, film = SVIMode.PRO_LATENT, SVIMode.FILM_ZERO_PAD
    assert seam_problems(pro, 9, 1, 5, 4) == []
    assert [p.input for p in seam_problems(pro, 9, 3, 5, 0)] == ["motion"]  # 3 latent frames + anchor > 3
    assert [p.input for p in seam_problems(film, 9, 1, 9, 0)] == ["conditioning_frames"]
    assert [p.input for p in seam_problems(film, 9, 1, 5, 0)] == ["length"]  # 9 < 2 * 5: the seam needs 10 frames
    assert [p.input for p in seam_problems(pro, 81, 1, 5, 5)] == ["crossfade"]
    assert seam_problems(film, 81, 1, 5, 5) == []


def test_invalid_inputs_lists_one_line_per_problem():
    with pytest.raises(InvalidInputs) as refused:
        raise_if_any(number_in_range("cfg", math.nan) + clip_side("width", 40, 16384))
    assert str(refused.value).splitlines() == ["cfg: NaN is not a number",
                                               "width: 40 is not a multiple of 16; Wan needs both sides divisible by 16 "
                                               "(nearest: 32 or 48)"]
    raise_if_any([])
