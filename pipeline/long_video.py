"""The whole SVI loop at constant memory: sample, decode, save, carry the motion, repeat.

Each finished clip goes to disk on a worker thread while the next clip samples (svi/run_store.py;
encoding the lossless archive and the H.264 copies takes seconds of CPU time per 480p clip, which
would otherwise stall the GPU), and the final video grows clip by clip beside it instead of being
re-encoded at the end. An interrupt or an out-of-memory error waits for the clip being
saved, so it loses at most the clip in progress; a crash at most that one and the one being
written. `resume` continues from the first clip that is missing or fails its hash check. Only the
previous clip's motion (a few latent frames, or M frames in 1.0 modes) and at most one clip
waiting to be saved are kept between clips.

Per clip, the schedule (svi/plan.py) may set the style LoRA's strength (a clone of the experts per strength, the
style LoRA's patches added once more at the difference), the seed, an end frame, and drift control. Drift control
(svi/drift.py) corrects each decoded clip before it is saved; in 1.0 modes and 2.0 on Wan 2.2 the corrected frames
are also what the next clip re-encodes, so corrected colour carries forward; in 2.0 Pro the motion latent is never
decoded, so the next clip continues the uncorrected latent and the controller carries the previous clip's correction
into it instead (and the anchor keeps pulling towards the reference).
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

from ..svi.conditioning import ResizeMode, SVIMode, last_latent_frames, round_to_8bit
from ..svi.dance import pose_frames_needed
from ..svi.drift import DriftController, DriftMode, DriftSettings
from ..svi.plan import PromptOverflow, parse_schedule, plan_clips, schedule_sigmas
from ..svi.run_store import RunMismatch, RunStore, temporary_path
from ..svi.seams import StreamingStitcher, seam_for, total_frames
from ..svi.validation import (MAX_SIDE, InputProblem, clip_problems, host_memory_bytes, number_in_range, raise_if_any,
                              seam_problems)
from ..svi.video_io import FrameWriter, read_frames, to_uint8
from ..svi.version import PACK_VERSION
from .clips import (SVIInputError, build_clip_inputs, check_expert_pair, condition, decode_clip, encode_anchor,
                    encode_end_latent, has_image_branch, resize_image, sample_clip)
from .dance import clip_pose_tokens, pose_encoder_of, prepare_pose_video, with_pose_tokens
from .lora import has_style_lora, with_style_strength
from .model_identity import model_fingerprint
from .progress import StepProgress

CLIP_EVENT = "svi-infinity.clip"
PROMPTS_ENCODED_AHEAD = 64  # distinct prompts encoded in one go (one text-encoder load); ~4-8 MB each at 512 tokens


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
    prompt_repeat: int = 1  # each prompt line makes this many clips (the official --prompt_repeat_times)
    resize: ResizeMode = ResizeMode.CROP  # how the reference (and end images) fit the clip size
    clip_vision_crop: bool = True  # CLIP vision sees a centre square (False: the whole frame squashed, as the official code)
    round_motion_8bit: bool = True  # 1.0 modes re-encode 8-bit motion frames (the official code; a resumed run reads 8-bit)
    drift: DriftMode = DriftMode.OFF
    drift_strength: float = 1.0
    cfg_low: float | None = None  # Wan 2.2 low-noise expert's cfg; None: cfg
    switch_step: int | None = None  # Wan 2.2: the low-noise expert from this step on; None: by the boundary sigma

    def problems(self, memory_bytes: int) -> list[InputProblem]:
        """Every setting that cannot make a video (SVI Long Video refuses the same before anything runs)."""
        problems = [problem for name, value, minimum in (("shift", self.shift, None), ("boundary_sigma", self.boundary, None),
                                                         ("cfg", self.cfg, None), ("fps", self.fps, 1), ("num_clips", self.num_clips, 1),
                                                         ("prompt_repeat", self.prompt_repeat, 1),
                                                         ("cfg_low_noise", 1.0 if self.cfg_low is None else self.cfg_low, None))
                    for problem in number_in_range(name, value, minimum)]
        problems += number_in_range("drift_strength", self.drift_strength, 0.0, 1.0)
        for name, check in (("prompts", lambda: parse_schedule(self.prompts)),
                            ("schedule", lambda: schedule_sigmas(self.schedule, self.steps, self.shift))):
            try:
                check()
            except ValueError as error:
                problems.append(InputProblem(name, str(error)))
        shape = clip_problems(self.width, self.height, self.clip_frames, max_side=MAX_SIDE, memory_bytes=memory_bytes)
        return problems + (shape or seam_problems(self.mode, self.clip_frames, self.motion_latent_frames,
                                                  self.conditioning_frames, self.crossfade))

    def identity(self) -> dict:
        """What decides the clips' content; a resumed run must agree on all of it (num_clips may grow)."""
        values = asdict(self)
        values.pop("num_clips")
        for name in ("prompt_overflow", "mode", "resize", "drift"):
            values[name] = values[name].value
        return values

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(mode=self.drift, strength=self.drift_strength)


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
    """The pack's own progress messages (event 'svi-infinity.clip') that the canvas timeline draws; nothing polls.

    Like ComfyUI's own progress, they go only to the websocket client that queued the prompt (they carry its prompt
    text and file names), and not at all to a prompt queued without a client id. The recipient and the prompt id are
    fixed when the run starts, since 'done' is sent from the saving thread.
    """

    def __init__(self, node_id: str | None, clips: int, subfolder: str):
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        self.server = PromptServer.instance
        self.client_id = getattr(self.server, "client_id", None)
        context = get_executing_context()
        self.base = {"node": node_id, "clips": clips, "subfolder": subfolder,
                     "prompt_id": context.prompt_id if context is not None else None}

    def send(self, clip: int, status: str, **details) -> None:
        if self.server is not None and self.client_id is not None:
            self.server.send_sync(CLIP_EVENT, {**self.base, "clip": clip, "status": status, **details}, self.client_id)


class ClipArchiver:
    """Saves finished clips and grows the final video on one worker thread, in clip order, while the next clip samples.

    At most one task is in flight: handing over a clip first waits for the previous one, so host memory holds at most
    one clip beside the one being made. `finish` returns once everything is on disk; `abandon` (on an error) waits for
    the clip being saved, so it is kept, and drops the half-written final video.
    """

    def __init__(self, store: RunStore, video_path: Path, seam, crossfade: int, fps: float, events: ClipEvents):
        self.store, self.video_path, self.seam, self.crossfade, self.fps, self.events = store, video_path, seam, crossfade, fps, events
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svi-clip-archiver")
        self._stitch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svi-video-stitcher")
        self._pending: Future | None = None
        self._partial = temporary_path(video_path)
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
        self._partial.replace(self.video_path)
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


class PromptEncodings:
    """The text encodings of the clips still to make, encoded before their clips sample, a batch of distinct prompts at a
    time: on a small card ComfyUI would otherwise swap the text encoder in (and the diffusion model out) at every new
    prompt. Encodings no later clip needs are dropped, so a long prompt list stays at constant memory."""

    def __init__(self, clip, prompts: list[str]):
        self.clip, self.prompts = clip, prompts
        self._encoded: dict[str, object] = {}

    def encode(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def for_clip(self, position: int):
        """The encoding of `prompts[position]`; when it is not ready, the next PROMPTS_ENCODED_AHEAD distinct prompts are
        encoded at once."""
        text = self.prompts[position]
        if text not in self._encoded:
            still_needed = self.prompts[position:]
            self._encoded = {t: e for t, e in self._encoded.items() if t in still_needed}
            for upcoming in list(dict.fromkeys(still_needed))[:PROMPTS_ENCODED_AHEAD]:
                if upcoming not in self._encoded:
                    self._encoded[upcoming] = self.encode(upcoming)
        return self._encoded[text]


def out_of_memory_advice(clip_number: int, num_clips: int, finished: int, run_dir: Path) -> str:
    """What helps on ComfyUI v0.33.0, whose dynamic VRAM already streams weights that do not fit (so --lowvram does
    nothing)."""
    return (f"out of GPU memory on clip {clip_number} of {num_clips}. What helps: smaller width/height or a shorter length "
            f"(4k+1 frames); the fp8_scaled or GGUF Wan files instead of fp16 (README: 'Which files for which GPU'); "
            f"closing other programs on the GPU, or starting ComfyUI with --reserve-vram <GB> if they need it. The {finished} "
            f"finished clips are safe in {run_dir}; run again with resume on to continue.")


END_IMAGE_INPUT = "end_image input"  # how records and identity name the node's end_image (the last clip's end frame)


def sampler_identity(sampler) -> dict:
    """What identifies a ComfyUI SAMPLER in a run's identity and records: its function and options (Euler when None)."""
    if sampler is None:
        return {"name": "euler"}
    function = getattr(sampler, "sampler_function", None)
    options = {k: v for k, v in (getattr(sampler, "extra_options", None) or {}).items() if isinstance(v, (int, float, str, bool))}
    return {"name": getattr(function, "__name__", type(sampler).__name__).removeprefix("sample_"), "options": options}


def load_input_image(name: str) -> torch.Tensor:
    """An image from ComfyUI's input folder as an IMAGE [1, H, W, 3] (as LoadImage reads it: EXIF-rotated, RGB)."""
    import folder_paths
    from PIL import Image, ImageOps

    path = Path(folder_paths.get_annotated_filepath(name))
    if not path.is_file():
        raise SVIInputError(f"end image {name!r} is not in ComfyUI's input folder ({folder_paths.get_input_directory()})")
    with Image.open(path) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")
        return torch.from_numpy(np.array(rgb)).float().div(255.0).unsqueeze(0)


def end_image_problems(prompts: str) -> list[InputProblem]:
    """Every end=name in the schedule names an image in ComfyUI's input folder."""
    import folder_paths

    try:
        lines = parse_schedule(prompts)
    except ValueError:
        return []  # the schedule's own rule reports it
    return [InputProblem("prompts", f"line {line.number}: end image {line.end!r} is not in ComfyUI's input folder "
                                    f"({folder_paths.get_input_directory()}); upload it there (e.g. with a Load Image node)")
            for line in lines if line.end is not None and not folder_paths.exists_annotated_filepath(line.end)]


def _image_sha256(image: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for frame in image:  # frame by frame: a pose video can be thousands of frames
        digest.update(to_uint8(frame[None]).tobytes())
    return digest.hexdigest()[:16]


def _clip_plan_record(clip_plan, end: str | None) -> dict:
    return {"prompt": clip_plan.prompt, "seed": clip_plan.seed, **clip_plan.record(), "end": end}


def _check_resumed_plan(store: RunStore, plan_records: list[dict], resumed: int) -> None:
    """The clips already made were made with what this graph would make them with (an end image given to the last clip
    moves when num_clips grows, so the identity alone cannot say)."""
    for saved in sorted(store.manifest()["clips"], key=lambda clip: clip["index"])[:resumed]:
        wanted = plan_records[saved["index"]]
        differing = [key for key in wanted if saved.get(key) != wanted[key]]
        if differing:
            raise RunMismatch(f"cannot resume {store.run_dir.name}: clip {saved['index'] + 1} was made with "
                              + ", ".join(f"{key}={saved.get(key)!r}" for key in differing) + " but now gets "
                              + ", ".join(f"{key}={wanted[key]!r}" for key in differing)
                              + ". Turn resume off to start a new run, or keep num_clips and the schedule as they were.")


def run_long_video(settings: LongVideoSettings, *, model, model_low, clip, vae, reference: torch.Tensor, clip_vision,
                   filename_prefix: str, resume: bool, node_id: str | None = None, output_dir: Path | None = None,
                   sampler=None, sigmas: torch.Tensor | None = None, end_image: torch.Tensor | None = None,
                   pose_video: torch.Tensor | None = None) -> LongVideoResult:
    """`sampler` (a ComfyUI SAMPLER) and `sigmas` (ComfyUI SIGMAS) replace Euler and the schedule preset; `end_image` is the
    last clip's end frame; `pose_video` the SVI-Dance pose frames (mode 1.0 Dance)."""
    import comfy.model_management
    import folder_paths

    raise_if_any(settings.problems(host_memory_bytes()))
    lines = parse_schedule(settings.prompts)
    sigmas = schedule_sigmas(settings.schedule, settings.steps, settings.shift) if sigmas is None else sigmas.float().cpu()
    check_expert_pair(model, model_low)
    steps_per_clip = len(sigmas) - 1
    if settings.switch_step is not None and not 0 <= settings.switch_step <= steps_per_clip:
        raise SVIInputError(f"switch_step: the experts switch at step {settings.switch_step}, but the sigmas make "
                            f"{steps_per_clip} steps (0..{steps_per_clip})")
    seam = seam_for(settings.mode, motion_latent_frames=settings.motion_latent_frames,
                    conditioning_frames=settings.conditioning_frames)
    plan = plan_clips(lines, settings.num_clips, settings.seed, settings.prompt_overflow, settings.prompt_repeat)
    ends = [clip_plan.end for clip_plan in plan]
    if end_image is not None:
        if ends[-1] is not None:
            raise SVIInputError(f"end_image: the last clip already ends on {ends[-1]!r} (line {plan[-1].line} of the prompts); "
                                "disconnect end_image or remove end= from that line")
        ends[-1] = END_IMAGE_INPUT
    styled_lines = sorted({clip_plan.line for clip_plan in plan if clip_plan.style is not None})
    if styled_lines and not any(m is not None and has_style_lora(m) for m in (model, model_low)):
        raise SVIInputError(f"prompts: line {styled_lines[0]} sets style=..., but the model has no style LoRA: choose one as "
                            "SVI LoRA Stack's style_lora (it can be at strength 0 and turned up per line)")
    if pose_video is not None and not settings.mode.needs_pose:
        raise SVIInputError(f"pose_video: only mode {SVIMode.DANCE_POSE.value} uses a pose video; disconnect it or choose that mode")
    pose = encoder = None
    if settings.mode.needs_pose:
        if pose_video is None:
            raise SVIInputError(f"pose_video: mode {settings.mode.value} needs the pose video (IMAGE frames, e.g. a DWPose "
                                f"render of {pose_frames_needed(settings.num_clips, settings.clip_frames, settings.conditioning_frames)} frames)")
        encoder = pose_encoder_of(model)
        pose = prepare_pose_video(pose_video, settings.width, settings.height, num_clips=settings.num_clips,
                                  clip_frames=settings.clip_frames, motion_frames=settings.conditioning_frames)
    anchor, resized_reference = encode_anchor(vae, reference, settings.width, settings.height, settings.resize)
    end_images = {key: resize_image(end_image if key == END_IMAGE_INPUT else load_input_image(key), settings.width,
                                    settings.height, settings.resize)
                  for key in dict.fromkeys(e for e in ends if e is not None)}

    identity = {**settings.identity(), "model": model_fingerprint(model), "model_low_noise": model_fingerprint(model_low),
                "reference_sha256": _image_sha256(resized_reference), "clip_vision": clip_vision is not None,
                "sampler": sampler_identity(sampler), "sigmas": [round(float(s), 6) for s in sigmas],
                "end_images": {key: _image_sha256(image) for key, image in end_images.items()},
                "pose_video_sha256": None if pose is None else _image_sha256(pose)}
    output_dir = Path(output_dir or folder_paths.get_output_directory())
    store = RunStore.open(output_dir, filename_prefix, identity, resume=resume)
    resumed = min(store.verified_clip_count(), settings.num_clips)
    plan_records = [_clip_plan_record(clip_plan, end) for clip_plan, end in zip(plan, ends)]
    _check_resumed_plan(store, plan_records, resumed)
    video_path = store.video_path_for(settings.num_clips)

    progress = StepProgress(model, settings.num_clips * steps_per_clip, node_id)
    progress.bar.update_absolute(resumed * steps_per_clip)
    events = ClipEvents(node_id, settings.num_clips, store.run_dir.relative_to(output_dir.resolve()).as_posix())
    for clip_plan in plan:
        events.send(clip_plan.index, "done" if clip_plan.index < resumed else "pending", prompt=clip_plan.prompt,
                    **(store.clip_files(clip_plan.index) if clip_plan.index < resumed else {}))

    drift = None
    if settings.drift is not DriftMode.OFF or any(clip_plan.drift is not None for clip_plan in plan):
        drift = DriftController(resized_reference[0], settings.drift_settings(),
                                conditioning_corrected=not settings.mode.uses_latent_motion, seam_start=seam.repeated_span()[0],
                                seam_count=seam.repeated_span()[1])
    motion = motion_frames = None
    last_latent = None
    if resumed:
        last_latent = store.load_latent(resumed - 1)
        if settings.mode.uses_latent_motion:
            motion = last_latent_frames(last_latent, settings.motion_latent_frames)
        else:
            motion_frames = read_frames(store.frames_path(resumed - 1))[-settings.conditioning_frames:]
        if drift is not None:
            drift.restore(store.manifest()["clips"][resumed - 1]["drift_control"]["state"])

    styled: dict[float | None, tuple] = {None: (model, model_low)}

    def experts_for(style: float | None) -> tuple:
        """The experts with the style LoRA at this clip's strength; one clone per strength, so clips that share a strength
        share the patched weights."""
        if style not in styled:
            styled[style] = tuple(None if m is None else with_style_strength(m, style) if has_style_lora(m) else m
                                  for m in (model, model_low))
        return styled[style]

    end_latents: dict[str, torch.Tensor] = {}
    to_make = plan[resumed:]
    encodings = PromptEncodings(clip, [clip_plan.prompt for clip_plan in to_make])
    negative_encoding = encodings.encode(settings.negative_prompt) if to_make else None
    archiver = ClipArchiver(store, video_path, seam, settings.crossfade, settings.fps, events)
    archiver.stitch_saved(resumed)
    drift_device = comfy.model_management.get_torch_device()
    try:  # every way out of the loop lets the clip being saved finish
        for position, clip_plan in enumerate(to_make):
            prompt_encoding = encodings.for_clip(position)
            comfy.model_management.throw_exception_if_processing_interrupted()
            events.send(clip_plan.index, "running", prompt=clip_plan.prompt, step=0, steps=steps_per_clip)
            end_key = ends[clip_plan.index]
            clip_end = None if end_key is None else end_images[end_key]
            if clip_end is not None and settings.mode.uses_latent_motion and end_key not in end_latents:
                end_latents[end_key] = encode_end_latent(vae, resized_reference, clip_end, settings.clip_frames)
            inputs = build_clip_inputs(vae, settings.mode, settings.clip_frames, anchor=anchor, motion=motion,
                                       reference=resized_reference, motion_frames=motion_frames, end_image=clip_end,
                                       end_latent=end_latents.get(end_key))
            clip_model, clip_model_low = experts_for(clip_plan.style)
            vision = None
            if clip_vision is not None and has_image_branch(clip_model):
                first_frame = resized_reference if motion_frames is None or settings.mode.uses_latent_motion else motion_frames[:1]
                vision = clip_vision.encode_image(first_frame, crop=settings.clip_vision_crop)
            if pose is not None:
                dtype = clip_model.model_dtype()  # the tokens are kept in the weights' dtype, 16-bit for 8-bit weights
                tokens = clip_pose_tokens(encoder, pose, clip_plan.index, settings.clip_frames, settings.conditioning_frames,
                                          torch.bfloat16 if dtype.itemsize == 1 else dtype)
                clip_model = with_pose_tokens(clip_model, tokens)
            positive = condition(prompt_encoding, inputs, vision)
            negative = condition(negative_encoding, inputs, vision)
            progress.offset = clip_plan.index * steps_per_clip

            def on_step(done, total, x0, clip_plan=clip_plan):
                progress.step(done, total, x0)
                events.send(clip_plan.index, "running", prompt=clip_plan.prompt, step=done, steps=total)

            try:
                samples = sample_clip(clip_model, clip_model_low, positive, negative, inputs.empty_latent, seed=clip_plan.seed,
                                      sigmas=sigmas, boundary=settings.boundary, cfg=settings.cfg, cfg_low=settings.cfg_low,
                                      switch_step=settings.switch_step, sampler=sampler, step_callback=on_step)
                frames = decode_clip(vae, samples)
            except Exception as error:
                events.send(clip_plan.index, "failed", prompt=clip_plan.prompt, error=str(error) or type(error).__name__)
                if isinstance(error, torch.OutOfMemoryError):
                    raise SVIInputError(out_of_memory_advice(clip_plan.index + 1, settings.num_clips, clip_plan.index,
                                                             store.run_dir)) from error
                raise

            record = {**plan_records[clip_plan.index], "frames": int(frames.shape[0]), "pack_version": PACK_VERSION,
                      "sampler": {**sampler_identity(sampler), "sigmas": [round(float(s), 6) for s in sigmas],
                                  "cfg": settings.cfg, "cfg_low_noise": settings.cfg_low, "boundary": settings.boundary,
                                  "switch_step": settings.switch_step}}
            if drift is not None:
                mode = None if clip_plan.drift is None else DriftMode.from_schedule(clip_plan.drift)
                correction = drift.correct(frames.to(drift_device), mode)
                frames = correction.frames.to(frames.device)
                record["drift_control"] = {**correction.record(), "state": drift.state()}
            thumbnail = _thumbnail(frames[frames.shape[0] // 2])
            progress.show_image(thumbnail)
            events.send(clip_plan.index, "saving", prompt=clip_plan.prompt)
            archiver.save(clip_plan.index, samples.cpu(), to_uint8(frames), record, _jpeg(thumbnail), clip_plan.prompt)
            last_latent = samples
            if settings.mode.uses_latent_motion:
                motion = last_latent_frames(samples, settings.motion_latent_frames)
            else:
                motion_frames = frames[-settings.conditioning_frames:].clone()
                if settings.round_motion_8bit:
                    motion_frames = round_to_8bit(motion_frames)
            del frames
        frames_written = archiver.finish()
    except BaseException:
        archiver.abandon()
        raise
    expected = total_frames(settings.num_clips, settings.clip_frames, seam)
    if frames_written != expected:
        raise RuntimeError(f"stitched {frames_written} frames, expected {expected}")
    store.record_video(video_path, settings.num_clips)
    return LongVideoResult(output_dir, store.run_dir, video_path, last_latent, frames_written,
                           settings.num_clips - resumed, resumed)
