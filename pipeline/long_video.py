"""The whole SVI loop at constant memory: sample, decode, save, carry the motion, repeat.

Each finished clip goes to disk on a worker thread while the next clip samples (svi/run_store.py;
encoding the lossless archive and the H.264 copies takes seconds of CPU time per 480p clip, which
would otherwise stall the GPU), and the final video grows clip by clip beside it instead of being
re-encoded at the end. An interrupt or an out-of-memory error waits for the clip being
saved, so it loses at most the clip in progress; a crash at most that one and the one being
written. `resume` continues from the first clip that is missing or fails its hash check. Only the
previous clip's motion (a few latent frames, or M frames in 1.0 modes) and at most one clip
waiting to be saved are kept between clips.
"""

from __future__ import annotations

import hashlib
import io
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..svi.conditioning import SVIMode, last_latent_frames
from ..svi.plan import PromptOverflow, parse_prompt_list, plan_clips, schedule_sigmas
from ..svi.run_store import RunStore, temporary_path
from ..svi.seams import StreamingStitcher, seam_for, total_frames
from ..svi.video_io import FrameWriter, read_frames, to_uint8
from .clips import (SVIInputError, build_clip_inputs, check_expert_pair, condition, decode_clip, encode_anchor,
                    has_image_branch, sample_clip)
from .model_identity import model_fingerprint
from .progress import StepProgress

PACK_VERSION = "0.1.0"
CLIP_EVENT = "svi-infinity.clip"


@dataclass(frozen=True)
class LongVideoSettings:
    prompts: str
    negative_prompt: str
    prompt_overflow: PromptOverflow
    num_clips: int
    width: int
    height: int
    clip_frames: int
    mode: SVIMode
    motion_latent_frames: int
    conditioning_frames: int
    seed: int
    schedule: str
    steps: int
    shift: float
    boundary: float
    cfg: float
    crossfade: int
    fps: float

    def identity(self) -> dict:
        """What decides the clips' content; a resumed run must agree on all of it (num_clips may grow)."""
        values = asdict(self)
        values.pop("num_clips")
        values["prompt_overflow"] = self.prompt_overflow.value
        values["mode"] = self.mode.value
        return values


@dataclass
class LongVideoResult:
    output_dir: Path
    run_dir: Path
    video_path: Path
    last_latent: torch.Tensor
    frames: int
    clips_made: int
    clips_resumed: int

    def ui(self) -> dict:
        """The stitched video as a preview on the node, and a one-line summary."""
        subfolder = self.run_dir.resolve().relative_to(self.output_dir.resolve()).as_posix()
        return {"images": [{"filename": self.video_path.name, "subfolder": subfolder, "type": "output"}], "animated": (True,),
                "text": [f"{self.frames} frames from {self.clips_resumed + self.clips_made} clips "
                         f"({self.clips_resumed} resumed, {self.clips_made} made) in {self.run_dir.name}"]}


def _clip_writer(frames: np.ndarray, fps: float, *, lossless: bool = True):
    """Writes a clip's uint8 frames to the path it is given: lossless for resuming, a quick H.264 for playing in a
    browser."""

    def write(path: Path) -> None:
        writer = FrameWriter(path, frames.shape[2], frames.shape[1], fps, lossless=lossless, quick=not lossless)
        writer.write_uint8(frames)
        writer.close()

    return write


def _thumbnail(frame: torch.Tensor):
    from PIL import Image

    image = Image.fromarray(to_uint8(frame[None])[0])
    image.thumbnail((320, 320))
    return image


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class ClipEvents:
    """The pack's own progress messages (event 'svi-infinity.clip') that the canvas timeline draws; nothing polls."""

    def __init__(self, node_id: str | None, clips: int, subfolder: str):
        from server import PromptServer

        self.server = PromptServer.instance
        self.base = {"node": node_id, "clips": clips, "subfolder": subfolder}

    def send(self, clip: int, status: str, **details) -> None:
        if self.server is not None:
            self.server.send_sync(CLIP_EVENT, {**self.base, "clip": clip, "status": status, **details})


class ClipArchiver:
    """Saves finished clips and grows the final video on one worker thread, in clip order, while the next clip samples.

    At most one task is in flight: handing over a clip first waits for the previous one, so host memory holds at most
    one clip beside the one being made. `finish` returns once everything is on disk; `abandon` (on an error) waits for
    the clip being saved, so it is kept, and drops the half-written final video.
    """

    def __init__(self, store: RunStore, seam, crossfade: int, fps: float, events: ClipEvents):
        self.store, self.seam, self.crossfade, self.fps, self.events = store, seam, crossfade, fps, events
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svi-clip-archiver")
        self._stitch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svi-video-stitcher")
        self._pending: Future | None = None
        self._partial = temporary_path(store.video_path)
        self._writer: FrameWriter | None = None
        self._stitcher: StreamingStitcher | None = None

    def stitch_saved(self, count: int) -> None:
        """Feeds the first `count` clips, already on disk from an earlier run, into the final video."""

        def task() -> None:
            for index in range(count):
                self._stitch(read_frames(self.store.frames_path(index)))

        if count:
            self._submit(task)

    def save(self, index: int, latent: torch.Tensor, frames: np.ndarray, record: dict, thumbnail_jpeg: bytes, prompt: str) -> None:
        """Hands over a finished clip (latent on the CPU, uint8 frames); its 'done' event is sent once it is on disk."""

        def task() -> None:
            # The final video's encode runs beside the clip's own files; both end before the next clip's task starts.
            stitched = self._stitch_pool.submit(self._stitch, torch.from_numpy(frames).float() / 255.0)  # as a resume reads it back
            try:
                self.store.save_clip(index, latent, _clip_writer(frames, self.fps), record, thumbnail_jpeg,
                                     _clip_writer(frames, self.fps, lossless=False))
                self.events.send(index, "done", prompt=prompt, **self.store.clip_files(index))
            finally:
                stitched.result()

        self._submit(task)

    def finish(self) -> int:
        """Waits for the last clip, closes the final video and puts it in place; returns its frame count."""
        self.wait()
        self._stitcher.finish()
        self._writer.close()
        self._shutdown()
        self._partial.replace(self.store.video_path)
        return self._stitcher.frames_written

    def abandon(self) -> None:
        """On an error elsewhere: lets the clip being saved finish (so it is kept) and drops the half-written video."""
        try:
            self.wait()
        except Exception:  # the error that stopped the run is the one to report; this one goes to the log
            logging.exception("SVI Long Video: saving a clip failed while the run was stopping")
        finally:
            self._shutdown()
            if self._writer is not None:
                self._writer.abort()
            self._partial.unlink(missing_ok=True)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _shutdown(self) -> None:
        self._pool.shutdown()
        self._stitch_pool.shutdown()

    def _submit(self, task) -> None:
        self.wait()
        self._pending = self._pool.submit(task)

    def _stitch(self, frames: torch.Tensor) -> None:
        if self._writer is None:
            self._writer = FrameWriter(self._partial, frames.shape[2], frames.shape[1], self.fps, lossless=False)
            self._stitcher = StreamingStitcher(self.seam, self._writer.write, self.crossfade)
        self._stitcher.add_clip(frames)


def run_long_video(settings: LongVideoSettings, *, model, model_low, clip, vae, reference: torch.Tensor, clip_vision,
                   filename_prefix: str, resume: bool, node_id: str | None = None,
                   output_dir: Path | None = None) -> LongVideoResult:
    import comfy.model_management
    import folder_paths

    if settings.num_clips < 1:
        raise SVIInputError(f"num_clips must be at least 1, got {settings.num_clips}")
    try:
        prompts = parse_prompt_list(settings.prompts)
        sigmas = schedule_sigmas(settings.schedule, settings.steps, settings.shift)
    except ValueError as error:
        raise SVIInputError(str(error)) from error
    check_expert_pair(model, model_low)
    seam = seam_for(settings.mode, motion_latent_frames=settings.motion_latent_frames,
                    conditioning_frames=settings.conditioning_frames)
    if settings.crossfade > seam.overlap:
        raise SVIInputError(f"cross-fade of {settings.crossfade} frames is longer than the {seam.overlap} frames the clips share")
    plan = plan_clips(prompts, settings.num_clips, settings.seed, settings.prompt_overflow)
    anchor, resized_reference = encode_anchor(vae, reference, settings.width, settings.height)

    identity = {**settings.identity(), "model": model_fingerprint(model), "model_low_noise": model_fingerprint(model_low),
                "reference_sha256": hashlib.sha256(to_uint8(resized_reference).tobytes()).hexdigest()[:16],
                "clip_vision": clip_vision is not None}
    output_dir = Path(output_dir or folder_paths.get_output_directory())
    store = RunStore.open(output_dir, filename_prefix, identity, resume=resume)
    resumed = min(store.verified_clip_count(), settings.num_clips)

    steps_per_clip = len(sigmas) - 1
    progress = StepProgress(model, settings.num_clips * steps_per_clip, node_id)
    progress.bar.update_absolute(resumed * steps_per_clip)
    events = ClipEvents(node_id, settings.num_clips, store.run_dir.relative_to(output_dir.resolve()).as_posix())
    for clip_plan in plan:
        events.send(clip_plan.index, "done" if clip_plan.index < resumed else "pending", prompt=clip_plan.prompt,
                    **(store.clip_files(clip_plan.index) if clip_plan.index < resumed else {}))

    motion = motion_frames = None
    last_latent = None
    if resumed:
        last_latent = store.load_latent(resumed - 1)
        if settings.mode.uses_latent_motion:
            motion = last_latent_frames(last_latent, settings.motion_latent_frames)
        else:
            motion_frames = read_frames(store.frames_path(resumed - 1))[-settings.conditioning_frames:]

    encoded_prompts: dict[str, object] = {}

    def encode_text(text: str):
        if text not in encoded_prompts:
            encoded_prompts[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return encoded_prompts[text]

    archiver = ClipArchiver(store, seam, settings.crossfade, settings.fps, events)
    archiver.stitch_saved(resumed)
    try:  # every way out of the loop lets the clip being saved finish
        for clip_plan in plan[resumed:]:
            comfy.model_management.throw_exception_if_processing_interrupted()
            events.send(clip_plan.index, "running", prompt=clip_plan.prompt, step=0, steps=steps_per_clip)
            inputs = build_clip_inputs(vae, settings.mode, settings.clip_frames, anchor=anchor, motion=motion,
                                       reference=resized_reference, motion_frames=motion_frames)
            vision = None
            if clip_vision is not None and has_image_branch(model):
                first_frame = resized_reference if motion_frames is None or settings.mode.uses_latent_motion else motion_frames[:1]
                vision = clip_vision.encode_image(first_frame, crop=True)
            positive = condition(encode_text(clip_plan.prompt), inputs, vision)
            negative = condition(encode_text(settings.negative_prompt), inputs, vision)
            progress.offset = clip_plan.index * steps_per_clip

            def on_step(done, total, x0, clip_plan=clip_plan):
                progress.step(done, total, x0)
                events.send(clip_plan.index, "running", prompt=clip_plan.prompt, step=done, steps=total)

            try:
                samples = sample_clip(model, model_low, positive, negative, inputs.empty_latent, seed=clip_plan.seed, sigmas=sigmas,
                                      boundary=settings.boundary, cfg=settings.cfg, step_callback=on_step)
                frames = decode_clip(vae, samples)
            except Exception as error:
                events.send(clip_plan.index, "failed", prompt=clip_plan.prompt, error=str(error) or type(error).__name__)
                if isinstance(error, torch.OutOfMemoryError):
                    raise SVIInputError(
                        f"out of GPU memory on clip {clip_plan.index + 1} of {settings.num_clips}: lower width/height or length, "
                        f"or load the Wan 2.2 experts with offloading (fp8 weights, --lowvram). The {clip_plan.index} finished "
                        f"clips are safe in {store.run_dir}; run again with resume on to continue.") from error
                raise

            record = {"prompt": clip_plan.prompt, "seed": clip_plan.seed, "frames": int(frames.shape[0]), "pack_version": PACK_VERSION,
                      "sampler": {"name": "euler", "sigmas": [round(float(s), 6) for s in sigmas], "cfg": settings.cfg,
                                  "boundary": settings.boundary}}
            thumbnail = _thumbnail(frames[frames.shape[0] // 2])
            progress.show_image(thumbnail)
            events.send(clip_plan.index, "saving", prompt=clip_plan.prompt)
            archiver.save(clip_plan.index, samples.cpu(), to_uint8(frames), record, _jpeg(thumbnail), clip_plan.prompt)
            last_latent = samples
            if settings.mode.uses_latent_motion:
                motion = last_latent_frames(samples, settings.motion_latent_frames)
            else:
                motion_frames = frames[-settings.conditioning_frames:].clone()
            del frames
        frames_written = archiver.finish()
    except BaseException:
        archiver.abandon()
        raise
    expected = total_frames(settings.num_clips, settings.clip_frames, seam)
    if frames_written != expected:
        raise RuntimeError(f"stitched {frames_written} frames, expected {expected}")
    return LongVideoResult(output_dir, store.run_dir, store.video_path, last_latent, frames_written,
                           settings.num_clips - resumed, resumed)

