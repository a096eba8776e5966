"""SVI conditioning matches svi-spec.md: y = [anchor, motion, zero-after-normalisation padding], anchor-only mask."""

import pytest
import torch

from svi_infinity.svi.conditioning import (SVIMode, anchor_only_mask, last_latent_frames, latent_frames_for,
                                           pixel_mode_frames, pro_latent_conditioning)

C, H, W = 16, 6, 10


@pytest.fixture
def zero_latent():
    return torch.randn(C)


@pytest.mark.parametrize("motion_frames", [None, 1, 2, 3])
def test_pro_layout_frame_by_frame(motion_frames, zero_latent):
    anchor = torch.randn(1, C, 1, H, W)
    motion = None if motion_frames is None else torch.randn(1, C, motion_frames, H, W)
    result = pro_latent_conditioning(anchor, motion, 21, zero_latent)
    image, mask = result.concat_latent_image, result.concat_mask
    assert image.shape == (1, C, 21, H, W) and mask.shape == (1, 1, 21, H, W)
    assert torch.equal(image[:, :, 0], anchor[:, :, 0])
    known = 1 + (motion_frames or 0)
    for t in range(1, known):
        assert torch.equal(image[:, :, t], motion[:, :, t - 1])
    for t in range(known, 21):
        for c in range(C):
            assert torch.all(image[0, c, t] == zero_latent[c])
    assert torch.all(mask[:, :, 0] == 0) and torch.all(mask[:, :, 1:] == 1)


def test_padding_is_zero_after_comfyui_normalisation(comfy_runtime):
    import comfy.latent_formats

    from svi_infinity.pipeline.clips import zero_latent

    fmt = comfy.latent_formats.Wan21()
    result = pro_latent_conditioning(torch.randn(1, C, 1, H, W), torch.randn(1, C, 1, H, W), 21, zero_latent(fmt))
    normalised = fmt.process_in(result.concat_latent_image)
    assert normalised[:, :, 2:].abs().max() < 1e-5
    assert normalised[:, :, :2].abs().mean() > 0.1


@pytest.mark.parametrize("bad_motion, phrase", [
    (torch.randn(1, C, 21, H, W), "exceeds"),
    (torch.randn(1, 48, 1, H, W), "does not match"),
    (torch.randn(1, C, 1, H + 2, W), "does not match"),
])
def test_pro_rejects_bad_motion(bad_motion, phrase, zero_latent):
    with pytest.raises(ValueError, match=phrase):
        pro_latent_conditioning(torch.randn(1, C, 1, H, W), bad_motion, 21, zero_latent)


def test_motion_is_the_last_n_frames_and_a_copy():
    clip = torch.randn(1, C, 21, H, W)
    for n in (1, 2, 3):
        motion = last_latent_frames(clip, n)
        assert torch.equal(motion, clip[:, :, 21 - n:])
        motion.add_(1)
        assert not torch.equal(motion, clip[:, :, 21 - n:])
    with pytest.raises(ValueError):
        last_latent_frames(clip, 4)
    with pytest.raises(ValueError):
        last_latent_frames(torch.randn(1, C, 3, H, W), 3)


def test_frame_counts():
    assert latent_frames_for(81) == 21 and latent_frames_for(121) == 31 and latent_frames_for(1) == 1
    for bad in (80, 82, 0):
        with pytest.raises(ValueError):
            latent_frames_for(bad)


def test_anchor_only_mask():
    mask = anchor_only_mask(5, 2, 3)
    assert mask[0, 0, 0].sum() == 0 and mask[0, 0, 1:].sum() == 4 * 6


def test_film_pads_with_mid_grey_shot_with_the_reference():
    reference = torch.rand(1, 8, 8, 3)
    motion = torch.rand(5, 8, 8, 3)
    film = pixel_mode_frames(motion, reference, 81, SVIMode.FILM_ZERO_PAD)
    shot = pixel_mode_frames(motion, reference, 81, SVIMode.SHOT_REFERENCE_PAD)
    for video in (film, shot):
        assert video.shape == (81, 8, 8, 3) and torch.equal(video[:5], motion)
    assert torch.all(film[5:] == 0.5)
    assert all(torch.equal(shot[t], reference[0]) for t in range(5, 81))
    with pytest.raises(ValueError):
        pixel_mode_frames(torch.rand(81, 8, 8, 3), reference, 81, SVIMode.FILM_ZERO_PAD)
    with pytest.raises(ValueError):
        pixel_mode_frames(motion, reference, 81, SVIMode.PRO_LATENT)
