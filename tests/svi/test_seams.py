"""Seams: exact frame accounting and which source frame lands where, for hard cuts and cross-fades."""

import pytest
import torch

from svi_infinity.svi.conditioning import SVIMode
from svi_infinity.svi.seams import StreamingStitcher, seam_for, stitch_clips, total_frames


def labelled_clips(count: int, frames: int = 81) -> list[torch.Tensor]:
    """Frame f of clip k holds the value k * 1000 + f everywhere, so the output says where each frame came from."""
    return [torch.full((frames, 2, 2, 3), 0.0) + (k * 1000 + torch.arange(frames, dtype=torch.float64)).view(-1, 1, 1, 1)
            for k in range(count)]


def labels(video: torch.Tensor) -> list[int]:
    return [int(v) for v in video[:, 0, 0, 0]]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_pro_hard_cut_drops_anchor_and_motion_prefix(n):
    seam = seam_for(SVIMode.PRO_LATENT, motion_latent_frames=n)
    video = stitch_clips(labelled_clips(4), seam)
    expected = list(range(81))
    for k in range(1, 4):
        expected += [k * 1000 + f for f in range(1 + 4 * n, 81)]
    assert labels(video) == expected
    assert len(expected) == 81 + (80 - 4 * n) * 3 == total_frames(4, 81, seam)


def test_pro_n1_gives_81_plus_76_per_clip():
    seam = seam_for(SVIMode.PRO_LATENT, motion_latent_frames=1)
    assert [total_frames(n, 81, seam) for n in (1, 2, 3, 12)] == [81, 157, 233, 81 + 76 * 11]


@pytest.mark.parametrize("mode", [SVIMode.FILM_ZERO_PAD, SVIMode.SHOT_REFERENCE_PAD])
@pytest.mark.parametrize("m", [1, 5])
def test_pixel_modes_drop_the_tail_of_every_non_final_clip(mode, m):
    seam = seam_for(mode, conditioning_frames=m)
    video = stitch_clips(labelled_clips(3), seam)
    expected = [f for f in range(81 - m)] + [1000 + f for f in range(81 - m)] + [2000 + f for f in range(81)]
    assert labels(video) == expected
    assert len(expected) == 81 + (81 - m) * 2 == total_frames(3, 81, seam)


def test_crossfade_blends_the_last_frames_of_the_overlap_linearly():
    seam = seam_for(SVIMode.PRO_LATENT, motion_latent_frames=2)  # overlap 8 frames
    clips = [torch.rand(81, 2, 2, 3, dtype=torch.float64) for _ in range(2)]
    hard = stitch_clips(clips, seam)
    faded = stitch_clips(clips, seam, crossfade=3)
    assert faded.shape == hard.shape
    start = 81 - 8  # where clip 0's overlap region begins in the output
    assert torch.equal(faded[: start + 5], hard[: start + 5])
    for i, position in enumerate(range(start + 5, start + 8)):
        weight = (i + 1) / 4
        previous, following = clips[0][position], clips[1][1 + (position - start)]
        assert torch.allclose(faded[position], previous * (1 - weight) + following * weight)
    assert torch.equal(faded[start + 8:], hard[start + 8:])
    with pytest.raises(ValueError):
        stitch_clips(clips, seam, crossfade=9)


def test_streaming_stitcher_matches_and_holds_only_the_overlap():
    seam = seam_for(SVIMode.PRO_LATENT, motion_latent_frames=3)
    clips = [torch.rand(81, 3, 3, 3) for _ in range(5)]
    written = []
    stitcher = StreamingStitcher(seam, written.append, crossfade=2)
    for clip in clips:
        stitcher.add_clip(clip)
        assert stitcher._held_tail.shape[0] == seam.overlap
    stitcher.finish()
    assert torch.equal(torch.cat(written), stitch_clips(clips, seam, crossfade=2))
    assert stitcher.frames_written == total_frames(5, 81, seam)


def official_svi20_wan22_join(clips: list[torch.Tensor]) -> torch.Tensor:
    """inference_svi_2.0.py: all of clip 0, then `video_frames[1:]` of every later clip (each starts on the previous
    clip's last frame)."""
    return torch.cat([clips[0], *(clip[1:] for clip in clips[1:])])


def test_wan22_svi20_seam_is_the_official_join_frame_by_frame():
    seam = seam_for(SVIMode.WAN22_LAST_FRAME, conditioning_frames=1)
    clips = labelled_clips(4)
    video = stitch_clips(clips, seam)
    assert labels(video) == labels(official_svi20_wan22_join(clips))
    assert labels(video)[79:83] == [79, 80, 1001, 1002]  # clip 0's last frame kept, clip 1's first (its copy) dropped
    assert labels(video)[160:163] == [1080, 2001, 2002]
    assert len(video) == 81 + 80 * 3 == total_frames(4, 81, seam)
    assert seam.repeated_span() == (0, 1)


def test_wan22_svi20_differs_from_shot_m1_only_in_which_copy_of_the_seam_frame_is_kept():
    clips = labelled_clips(3)
    official = labels(stitch_clips(clips, seam_for(SVIMode.WAN22_LAST_FRAME, conditioning_frames=1)))
    shot = labels(stitch_clips(clips, seam_for(SVIMode.SHOT_REFERENCE_PAD, conditioning_frames=1)))
    differing = [i for i, (a, b) in enumerate(zip(official, shot)) if a != b]
    assert differing == [80, 160] and (official[80], shot[80]) == (80, 1000)


def test_repeated_span_names_the_frames_that_show_the_previous_tail_again():
    assert seam_for(SVIMode.PRO_LATENT, motion_latent_frames=2).repeated_span() == (1, 8)
    assert seam_for(SVIMode.FILM_ZERO_PAD, conditioning_frames=5).repeated_span() == (0, 5)
