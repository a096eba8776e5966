"""SVI conditioning matches svi-spec.md: y = [anchor, motion, zero-after-normalisation padding], anchor-only mask."""

import pytest
import torch

from svi_infinity.svi.conditioning import (LEGACY_MODE_NAMES, SVIMode, anchor_only_mask, first_last_mask,
                                           last_latent_frames, latent_frames_for, pixel_mode_frames,
                                           pro_latent_conditioning, round_to_8bit)

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
    (torch.randn(1, C, 21, H, W), "exceed"),
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
    for mode in (SVIMode.DANCE_POSE, SVIMode.WAN22_LAST_FRAME):
        assert torch.equal(pixel_mode_frames(motion, reference, 81, mode), shot)
    for video in (film, shot):
        assert video.shape == (81, 8, 8, 3) and torch.equal(video[:5], motion)
    assert torch.all(film[5:] == 0.5)
    assert all(torch.equal(shot[t], reference[0]) for t in range(5, 81))
    with pytest.raises(ValueError):
        pixel_mode_frames(torch.rand(81, 8, 8, 3), reference, 81, SVIMode.FILM_ZERO_PAD)
    with pytest.raises(ValueError):
        pixel_mode_frames(motion, reference, 81, SVIMode.PRO_LATENT)


def _describe(image: torch.Tensor, sources: dict[str, torch.Tensor]) -> list[str]:
    """Which source each latent frame of a concat latent is (a name, or '?')."""
    names = []
    for t in range(image.shape[2]):
        frame = image[:, :, t]
        names.append(next((name for name, source in sources.items() if torch.equal(frame, source)), "?"))
    return names


@pytest.mark.parametrize("motion_frames", [None, 1, 2, 3])
def test_pro_end_latent_layout_frame_by_frame(motion_frames, zero_latent):
    """y = [anchor, motion..., zero padding..., end]; mask: latent 0 known, and of the last latent only its 4th pixel
    frame (channel 3) known, as WanFirstLastFrameToVideo builds it."""
    anchor, end = torch.randn(1, C, 1, H, W), torch.randn(1, C, 1, H, W)
    motion = None if motion_frames is None else torch.randn(1, C, motion_frames, H, W)
    result = pro_latent_conditioning(anchor, motion, 21, zero_latent, end)
    sources = {"anchor": anchor[:, :, 0], "end": end[:, :, 0],
               "pad": zero_latent.view(1, C, 1, 1).expand(1, C, H, W)}
    sources.update({f"motion{i}": motion[:, :, i] for i in range(motion_frames or 0)})
    n = motion_frames or 0
    assert _describe(result.concat_latent_image, sources) == (["anchor"] + [f"motion{i}" for i in range(n)]
                                                              + ["pad"] * (21 - 2 - n) + ["end"])
    mask = result.concat_mask
    assert mask.shape == (1, 4, 21, H, W)
    assert torch.all(mask[:, :, 0] == 0)
    assert torch.all(mask[:, :, 1:20] == 1)
    assert torch.all(mask[:, :3, 20] == 1) and torch.all(mask[:, 3, 20] == 0)
    with pytest.raises(ValueError, match="end frame exceed"):
        pro_latent_conditioning(anchor, torch.randn(1, C, 3, H, W), 4, zero_latent, end)


def test_first_last_mask_is_comfyui_first_last_frame_mask():
    """The same mask WanFirstLastFrameToVideo makes for one start and one end frame (its pixel-frame mask viewed as
    4 channels per latent frame)."""
    latent_frames = 21
    pixel_mask = torch.ones((1, 1, latent_frames * 4, H, W))
    pixel_mask[:, :, :1 + 3] = 0.0
    pixel_mask[:, :, -1:] = 0.0
    comfy_layout = pixel_mask.view(1, latent_frames, 4, H, W).transpose(1, 2)
    assert torch.equal(first_last_mask(latent_frames, H, W), comfy_layout)
    without_end = anchor_only_mask(latent_frames, H, W).repeat(1, 4, 1, 1, 1)
    assert torch.equal(first_last_mask(latent_frames, H, W)[:, :, :-1], without_end[:, :, :-1])


@pytest.mark.parametrize("mode", [SVIMode.FILM_ZERO_PAD, SVIMode.SHOT_REFERENCE_PAD, SVIMode.DANCE_POSE,
                                  SVIMode.WAN22_LAST_FRAME])
def test_pixel_end_frame_takes_the_last_frame_with_grey_between(mode):
    """[conditioning frames, grey..., end] in every pixel mode: the official SVI pipeline's end-image branch and Wan's
    first-last-frame node both pad with zero (grey here) between."""
    reference, motion, end = torch.rand(1, 8, 8, 3), torch.rand(5, 8, 8, 3), torch.rand(1, 8, 8, 3)
    video = pixel_mode_frames(motion, reference, 81, mode, end)
    assert video.shape == (81, 8, 8, 3)
    assert torch.equal(video[:5], motion) and torch.equal(video[80], end[0])
    assert torch.all(video[5:80] == 0.5)
    with pytest.raises(ValueError, match="and an end frame leave no room"):
        pixel_mode_frames(torch.rand(80, 8, 8, 3), reference, 81, mode, end)


def test_old_mode_names_still_load():
    old = "1.0 Shot/Dance/Talk (pixel motion, reference padding)"
    assert SVIMode.parse(old) is SVIMode.SHOT_REFERENCE_PAD and old in LEGACY_MODE_NAMES
    assert all(SVIMode.parse(mode.value) is mode for mode in SVIMode)
    assert not any("Talk" in mode.value for mode in SVIMode)
    with pytest.raises(ValueError, match="unknown SVI mode"):
        SVIMode.parse("1.0 Talk")


def test_round_to_8bit_is_what_a_uint8_frame_holds():
    frames = torch.rand(3, 4, 5, 3)
    rounded = round_to_8bit(frames)
    assert torch.equal(rounded * 255, (frames * 255).round())
    assert (rounded - frames).abs().max() <= 0.5 / 255 + 1e-7 and not torch.equal(rounded, frames)
