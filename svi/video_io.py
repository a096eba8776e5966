"""Writing and reading frames with PyAV (the video library ComfyUI itself uses).

Finished clips are archived losslessly (x264 in RGB at crf 0) so that the final video can be
rebuilt bit-exactly after a resume; the final video is ordinary H.264 that any player opens.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE frames [F, H, W, 3] in 0..1 -> uint8."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class FrameWriter:
    """Streams frames into a video file; lossless (archive) or H.264 yuv420p (for players)."""

    def __init__(self, path: Path, width: int, height: int, fps: float, *, lossless: bool, quick: bool = False):
        """`quick`: x264's veryfast preset for H.264 too (a preview, where encoding time matters more than size)."""
        self.path = Path(path)
        self.container = av.open(str(self.path), mode="w")
        codec = "libx264rgb" if lossless else "libx264"
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        self.stream.width = width
        self.stream.height = height
        self.stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        self.stream.options = {"crf": "0" if lossless else "17", "preset": "veryfast" if lossless or quick else "medium"}
        self.frames = 0

    def write(self, frames: torch.Tensor) -> None:
        self.write_uint8(to_uint8(frames))

    def write_uint8(self, frames: np.ndarray) -> None:
        """Frames already quantised by `to_uint8` (what a worker thread gets, so it holds a quarter of the bytes)."""
        for frame in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self.container.mux(packet)
            self.frames += 1

    def abort(self) -> None:
        """Closes the file without flushing the encoder (the caller deletes it)."""
        self.container.close()

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def read_frames(path: Path) -> torch.Tensor:
    """All frames of a video as IMAGE [F, H, W, 3] in 0..1."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
