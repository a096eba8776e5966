"""SVI-Dance pose conditioning in plain torch: the encoder's input and output layout, pose fitting, clip windows."""

import pytest
import torch

from svi_infinity.demo.tiny_models import pose_encoder_tensors, pose_video_frames
from svi_infinity.svi.dance import (EXTRA_FIRST_FRAMES, PoseEncoder, check_pose_length, clip_pose_frames,
                                    fit_pose_frames, pose_frames_needed)

DIM = 24


@pytest.fixture(scope="module")
def encoder():
    tensors = pose_encoder_tensors(DIM, seed=1)
    return PoseEncoder.from_weights({k[len("dwpose_embedding."):]: v for k, v in tensors.items()})


def test_one_token_per_wan_patch_in_f_h_w_order(encoder):
    """81 frames at 64x96 -> the clip's 21 latent frames x (64/16) x (96/16) tokens, as Wan's patch grid flattens."""
    pose = pose_video_frames(81, 96, 64)
    tokens = encoder.tokens(pose)
    assert tokens.shape == (1, 21 * 4 * 6, DIM)
    video = pose.permute(3, 0, 1, 2).unsqueeze(0)
    official_input = torch.cat([video[:, :, :1].repeat(1, 1, 3, 1, 1), video], dim=2)  # svi_video_dance.py's input
    assert EXTRA_FIRST_FRAMES == 3
    features = encoder(official_input)
    assert features.shape == (1, DIM, 21, 4, 6)
    assert torch.equal(tokens, features.flatten(2).transpose(1, 2))
    assert torch.equal(tokens[0, 2 * 24 + 1 * 6 + 5], features[0, :, 2, 1, 5])  # token (f=2, h=1, w=5)


def test_the_pose_moves_the_tokens(encoder):
    first, other = pose_video_frames(81, 96, 64), pose_video_frames(81, 96, 64, phase=1.5)
    assert not torch.allclose(encoder.tokens(first), encoder.tokens(other))
    assert torch.equal(encoder.tokens(first), encoder.tokens(first.clone()))


def test_fit_keeps_the_aspect_ratio_on_black_with_nearest_pixels():
    frame = torch.rand(2, 40, 40, 3)
    fitted = fit_pose_frames(frame, 96, 64)  # 40x40 -> 64x64 centred in 96 wide
    assert fitted.shape == (2, 64, 96, 3)
    assert torch.all(fitted[:, :, :16] == 0) and torch.all(fitted[:, :, 80:] == 0)
    inner = fitted[:, :, 16:80]
    assert set(inner.flatten().tolist()) <= set(frame.flatten().tolist())  # nearest: only original values
    assert torch.equal(inner[:, 0, 0], frame[:, 0, 0]) and torch.equal(inner[:, 63, 63], frame[:, 39, 39])


def test_clip_windows_follow_the_frames_each_clip_shows():
    """Clip k's frame i becomes video frame k (81 - M) + i (1.0 seams keep the next clip's regenerated frames)."""
    pose = torch.arange(320, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 2, 3)
    for k, m in ((0, 1), (1, 1), (2, 1), (3, 5)):
        window = clip_pose_frames(pose, k, 81, m)
        assert window[:, 0, 0, 0].tolist() == list(range(k * (81 - m), k * (81 - m) + 81))
    with pytest.raises(ValueError, match="clip 4 needs frames 240-320"):
        clip_pose_frames(pose[:300], 3, 81, 1)


def test_a_short_pose_video_is_refused_with_what_it_covers():
    assert pose_frames_needed(3, 81, 1) == 241
    check_pose_length(241, 3, 81, 1)
    with pytest.raises(ValueError, match=r"has 240 frames but 3 clips .* need 241: .* at most 2 clips"):
        check_pose_length(240, 3, 81, 1)
    with pytest.raises(ValueError, match="at most 0 clips"):
        check_pose_length(50, 1, 81, 1)
