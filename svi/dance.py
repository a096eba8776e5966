"""SVI-Dance pose conditioning, as plain torch.

SVI-Dance (official test_svi_dance.py / svi_video_dance.py) is SVI 1.0 with reference padding plus a pose
video: a small UniAnimate-style encoder of 3D convolutions turns the clip's pose frames into one vector
per Wan patch token, and that is added to the patch-embedded input tokens before the first transformer
block, for the conditional and the unconditional pass alike. The encoder's weights ship inside the Dance
LoRA file (`dwpose_embedding.*`, beside the LoRA pairs).

Pose frames are fitted to the clip size the official way (nearest-neighbour scaling that keeps the aspect
ratio, centred on black), and the encoder sees them in 0..1 with the first frame repeated three more times
in front, so 81 frames become 84 and its two temporal stride-2 layers give the clip's 21 latent frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .conditioning import PIXEL_FRAMES_PER_LATENT

POSE_ENCODER_KEY = "dwpose_embedding."  # how the Dance LoRA names the encoder's tensors
EXTRA_FIRST_FRAMES = PIXEL_FRAMES_PER_LATENT - 1  # the first pose frame is fed 1 + 3 times, like the VAE's first frame
# (kernel, stride, padding) of each convolution; a SiLU follows every one but the last.
_LAYERS = (
    ((3, 3, 3), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), 1),
    ((3, 3, 3), (1, 2, 2), 1),
    ((3, 3, 3), (2, 2, 2), 1),
    ((3, 3, 3), (2, 2, 2), 1),
    ((1, 2, 2), (1, 2, 2), 0),
)


class PoseEncoder(torch.nn.Sequential):
    """Pose video [1, 3, F + 3, H, W] in 0..1 -> [1, dim, latent frames, H / 16, W / 16], one vector per Wan token."""

    def __init__(self, dim: int, hidden: int = 16):
        layers: list[torch.nn.Module] = []
        for index, (kernel, stride, padding) in enumerate(_LAYERS):
            last = index == len(_LAYERS) - 1
            layers.append(torch.nn.Conv3d(3 if index == 0 else hidden, dim if last else hidden, kernel, stride=stride, padding=padding))
            if not last:
                layers.append(torch.nn.SiLU())
        super().__init__(*layers)

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor]) -> "PoseEncoder":
        """Builds the encoder from its tensors ('0.weight', '0.bias', ..., '12.bias'); the sizes come from the file."""
        try:
            hidden, dim = weights["0.weight"].shape[0], weights[f"{2 * (len(_LAYERS) - 1)}.weight"].shape[0]
        except KeyError as error:
            raise ValueError(f"the pose encoder weights lack {error.args[0]!r}: not an SVI-Dance pose encoder") from None
        encoder = cls(dim, hidden)
        expected = {name: tuple(tensor.shape) for name, tensor in encoder.state_dict().items()}
        found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
        if found != expected:
            wrong = sorted(set(expected) ^ set(found) | {n for n in set(expected) & set(found) if expected[n] != found[n]})
            raise ValueError(f"the pose encoder weights do not have the SVI-Dance layout (first differences: {wrong[:4]})")
        encoder.load_state_dict({name: tensor.float() for name, tensor in weights.items()})
        return encoder.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return self[-1].out_channels

    def tokens(self, pose_frames: torch.Tensor) -> torch.Tensor:
        """Pose frames [F, H, W, 3] in 0..1 (F = 4k + 1) -> tokens [1, latent frames * H/16 * W/16, dim] in (f, h, w)
        order, the order Wan flattens its patch grid in."""
        weight = self[0].weight
        video = pose_frames[..., :3].to(device=weight.device, dtype=weight.dtype).permute(3, 0, 1, 2).unsqueeze(0)
        video = torch.cat([video[:, :, :1].expand(-1, -1, EXTRA_FIRST_FRAMES, -1, -1), video], dim=2)
        with torch.no_grad():
            features = self(video)
        return features.flatten(2).transpose(1, 2)


def fit_pose_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pose frames [N, H0, W0, 3] -> [N, height, width, 3]: nearest-neighbour scaling keeping the aspect ratio, centred
    on black (the official resize_and_pad_to_target)."""
    scale = min(height / frames.shape[1], width / frames.shape[2])
    new_height, new_width = int(frames.shape[1] * scale), int(frames.shape[2] * scale)
    scaled = F.interpolate(frames[..., :3].movedim(-1, 1), size=(new_height, new_width), mode="nearest")
    top, left = (height - new_height) // 2, (width - new_width) // 2
    padded = F.pad(scaled, (left, width - new_width - left, top, height - new_height - top), value=0.0)
    return padded.movedim(1, -1)


def pose_frames_needed(num_clips: int, clip_frames: int, motion_frames: int) -> int:
    """Frames of pose video that `num_clips` clips cover: every later clip starts on the previous clip's last M frames."""
    return clip_frames + (num_clips - 1) * (clip_frames - motion_frames)


def check_pose_length(available: int, num_clips: int, clip_frames: int, motion_frames: int) -> None:
    needed = pose_frames_needed(num_clips, clip_frames, motion_frames)
    if available < needed:
        clips_covered = 0 if available < clip_frames else 1 + (available - clip_frames) // (clip_frames - motion_frames)
        raise ValueError(f"the pose video has {available} frames but {num_clips} clips of {clip_frames} frames (each later "
                         f"one continuing the previous one's last {motion_frames}) need {needed}: give a longer pose "
                         f"video or make at most {clips_covered} clips")


def clip_pose_frames(pose: torch.Tensor, clip_index: int, clip_frames: int, motion_frames: int) -> torch.Tensor:
    """The pose frames of clip k: video frames k (F - M) ... k (F - M) + F - 1, the frames that clip shows.

    (The official script reaches the same windows with a one-frame lag from the second clip on: it refills each
    clip's frames after the first M from index 80 + 80 (k - 1), so pose frame 80 is used twice; here clip k's
    frame i always gets the pose of the video frame it becomes.)
    """
    start = clip_index * (clip_frames - motion_frames)
    window = pose[start: start + clip_frames]
    if window.shape[0] != clip_frames:
        raise ValueError(f"the pose video ends at frame {pose.shape[0]}; clip {clip_index + 1} needs frames {start}-"
                         f"{start + clip_frames - 1}")
    return window
