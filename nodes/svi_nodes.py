"""The SVI nodes: anchor, motion, conditioning, LoRA stack, Turbo sampler, clip join, long video."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import folder_paths
import nodes as comfy_nodes
from comfy_api.latest import InputImpl, Types, io

from ..pipeline.clips import (SVIInputError, build_clip_inputs, condition, encode_anchor, resize_image, sample_clip)
from ..pipeline.long_video import LongVideoSettings, end_image_problems, run_long_video
from ..pipeline.lora import apply_lora
from ..pipeline.progress import StepProgress
from ..svi.conditioning import CLIP_FRAMES, LEGACY_MODE_NAMES, ResizeMode, SVIMode, last_latent_frames
from ..svi.conditioning import round_to_8bit as _round_to_8bit
from ..svi.drift import DriftController, DriftMode, DriftSettings
from ..svi.plan import (CUSTOM_SCHEDULE, DEFAULT_BOUNDARY_SIGMA, SIGMA_PRESETS, PromptOverflow, clip_seed,
                        parse_schedule, schedule_sigmas)
from ..svi.run_store import safe_prefix_path
from ..svi.seams import seam_for, stitch_clips
from ..svi.validation import clip_length, clip_problems, clip_side, crossfade_fits, host_memory_bytes, seam_problems
from .validation import refuse_bad_inputs, value_error_rule

MODES = [mode.value for mode in SVIMode]
RESIZE_MODES = [mode.value for mode in ResizeMode]
DRIFT_MODES = [mode.value for mode in DriftMode]
CLIP_VISION_FRAMING = {"crop (centre square)": True, "squash (whole frame, official SVI)": False}
DRIFT_STATE = io.Custom("SVI_DRIFT")  # what one SVI Drift Control hands the next: the colour statistics it carries
SCHEDULES = [*SIGMA_PRESETS, CUSTOM_SCHEDULE]
MOTION_CHOICES = {"4 frames (1 latent frame)": 1, "8 frames (2 latent frames)": 2, "12 frames (3 latent frames)": 3}
NO_LORA = "None"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_SIZE = comfy_nodes.MAX_RESOLUTION


def _size_inputs():
    return [
        io.Int.Input("width", default=832, min=16, max=MAX_SIZE, step=16, tooltip="Clip width in pixels; a multiple of 16."),
        io.Int.Input("height", default=480, min=16, max=MAX_SIZE, step=16, tooltip="Clip height in pixels; a multiple of 16."),
    ]


def _mode_input():
    return io.Combo.Input("mode", options=MODES, default=MODES[0],
                          tooltip="2.0 Pro carries the last latent frames of the previous clip (default). The pixel modes re-encode "
                                  "its last M decoded frames (conditioning_frames) and pad with zeros (Film, M=5) or the reference: "
                                  "Shot (M=1) and SVI 2.0 on Wan 2.1 (M=5), Dance (M=1, with a pose video), and SVI 2.0 on "
                                  "Wan 2.2 (M=1; the seam keeps the previous clip's last frame and drops the next clip's first).")


def current_mode(value):
    """A mode as the current combo names it: saved workflows may hold an older name (None stays None: a link)."""
    return LEGACY_MODE_NAMES.get(value, value)


def _resize_input():
    return io.Combo.Input("resize", options=RESIZE_MODES, default=ResizeMode.CROP.value, optional=True,
                          tooltip="How the reference (and an end image) fits the clip size: centre-crop, stretch (the official "
                                  "SVI scripts' resize) or pad with black.")


def _open_sampling_inputs():
    """The expert switch and the low-noise expert's cfg, then ComfyUI's own SAMPLER and SIGMAS (defaults unchanged)."""
    return [
        io.Float.Input("cfg_low_noise", default=0.0, min=0.0, max=30.0, step=0.1, optional=True,
                       tooltip="Wan 2.2: cfg of the low-noise expert; 0 = the same as cfg."),
        io.Int.Input("switch_step", default=-1, min=-1, max=1000, optional=True,
                     tooltip="Wan 2.2: the low-noise expert runs from this step on; -1 = where the sigmas fall below boundary_sigma."),
        io.Sampler.Input("sampler", optional=True, tooltip="Any ComfyUI sampler (e.g. KSamplerSelect); default Euler."),
        io.Sigmas.Input("sigmas", optional=True, tooltip="Any ComfyUI SIGMAS (e.g. BasicScheduler, a split); replace the schedule."),
    ]


def _open_sampling(cfg_low_noise, switch_step) -> tuple[float | None, int | None]:
    return (None if cfg_low_noise == 0 else cfg_low_noise), (None if switch_step < 0 else switch_step)


def _motion_input():
    return io.Combo.Input("motion", options=list(MOTION_CHOICES), default=next(iter(MOTION_CHOICES)),
                          tooltip="How much of the previous clip's end the next clip continues from (2.0 Pro).")


def _sampling_inputs():
    return [
        io.Combo.Input("schedule", options=SCHEDULES, default=SCHEDULES[0],
                       tooltip="Sigmas the Turbo (step-distilled) model expects; 'custom' uses steps + shift."),
        io.Int.Input("steps", default=4, min=1, max=100, tooltip="Steps for the custom schedule (ignored by presets)."),
        io.Float.Input("shift", default=5.0, min=0.1, max=100.0, step=0.1, tooltip="Timestep shift for the custom schedule."),
        io.Float.Input("boundary_sigma", default=DEFAULT_BOUNDARY_SIGMA, min=0.0, max=1.0, step=0.005,
                       tooltip="Wan 2.2: the high-noise expert runs the steps that start at or above this sigma, the low-noise expert the rest."),
        io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                       tooltip="1 for Turbo models (no negative pass); above 1 the negative prompt is used."),
    ]


def _side_rules():
    return [(("width",), lambda width: clip_side("width", width, MAX_SIZE)),
            (("height",), lambda height: clip_side("height", height, MAX_SIZE))]


def _crossfade_rule():
    return (("mode", "motion", "conditioning_frames", "crossfade"),
            lambda mode, motion, conditioning_frames, crossfade: crossfade_fits(
                SVIMode.parse(mode), MOTION_CHOICES[motion], conditioning_frames, crossfade))


def _lora_options() -> list[str]:
    return [NO_LORA, *folder_paths.get_filename_list("loras")]


class SVIEncodeAnchor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIEncodeAnchor", display_name="SVI Encode Anchor", category="SVI/clips",
            search_aliases=["stable video infinity", "svi", "anchor", "reference image", "encode reference", "wan i2v start image"],
            description="VAE-encodes the reference image as the anchor latent every clip is conditioned on.",
            inputs=[
                io.Image.Input("image", tooltip="The reference image; the first of a batch is used."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (used by Wan 2.1 I2V and Wan 2.2 I2V A14B)."),
                *_size_inputs(),
                _resize_input(),
                io.Image.Input("end_image", optional=True, tooltip="An image for a clip to end on; resized like the reference."),
            ],
            outputs=[
                io.Latent.Output(display_name="anchor", tooltip="One latent frame: the encoded reference."),
                io.Image.Output(display_name="reference", tooltip="The reference resized to the clip size."),
                io.Image.Output(display_name="end", tooltip="end_image resized to the clip size, for SVI Conditioning's end_image."),
            ],
        )

    @classmethod
    def validate_inputs(cls, width, height, resize=None):
        return refuse_bad_inputs(cls, {"width": width, "height": height, "resize": resize}, _side_rules())

    @classmethod
    def execute(cls, image, vae, width, height, resize=ResizeMode.CROP.value, end_image=None) -> io.NodeOutput:
        anchor, reference = encode_anchor(vae, image, width, height, ResizeMode(resize))
        end = None if end_image is None else resize_image(end_image[:1], width, height, ResizeMode(resize))
        return io.NodeOutput({"samples": anchor}, reference, end)


class SVIMotionLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIMotionLatent", display_name="SVI Motion Latent", category="SVI/clips",
            search_aliases=["stable video infinity", "svi", "motion latent", "last frames", "continue video", "extend video"],
            description="The last 1-3 latent frames of a finished clip: the short-term memory of SVI 2.0 Pro. Never decoded.",
            inputs=[io.Latent.Input("clip_latent", tooltip="The sampled latent of the previous clip."), _motion_input()],
            outputs=[io.Latent.Output(display_name="motion")],
        )

    @classmethod
    def execute(cls, clip_latent, motion) -> io.NodeOutput:
        try:
            return io.NodeOutput({"samples": last_latent_frames(clip_latent["samples"], MOTION_CHOICES[motion])})
        except ValueError as error:
            raise SVIInputError(str(error)) from error


class SVIMotionFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIMotionFrames", display_name="SVI Motion Frames (1.0)", category="SVI/clips",
            search_aliases=["stable video infinity", "svi 1.0", "motion frames", "last frames", "continue video"],
            description="SVI 1.0: the last M decoded frames of a clip, re-encoded by SVI Conditioning for the next clip.",
            inputs=[
                io.Image.Input("frames", tooltip="The decoded previous clip."),
                io.Int.Input("count", default=5, min=1, max=80,
                             tooltip="M (official): 5 for Film and SVI 2.0 on Wan 2.1; 1 for Shot, Tom, Dance and SVI 2.0 on Wan 2.2."),
                io.Boolean.Input("round_to_8bit", default=True, optional=True,
                                 tooltip="Round to 8-bit values first, as the official code re-encodes uint8 frames."),
            ],
            outputs=[io.Image.Output(display_name="motion_frames")],
        )

    @classmethod
    def execute(cls, frames, count, round_to_8bit=True) -> io.NodeOutput:
        if count >= frames.shape[0]:
            raise SVIInputError(f"the clip has {frames.shape[0]} frames; cannot take the last {count}")
        return io.NodeOutput(_round_to_8bit(frames[-count:]) if round_to_8bit else frames[-count:])


class SVIConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIConditioning", display_name="SVI Conditioning", category="SVI/clips",
            search_aliases=["stable video infinity", "svi", "wan image to video", "i2v conditioning", "continue video", "extend video"],
            description="Builds Wan image-to-video conditioning from the anchor and the previous clip's motion, "
                        "with padding that is zero after latent normalisation and only the anchor frame masked.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="This clip's prompt."),
                io.Conditioning.Input("negative", tooltip="Used only when the sampler's cfg is above 1."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE; 1.0 modes re-encode the motion frames with it."),
                _mode_input(),
                io.Int.Input("length", default=CLIP_FRAMES, min=5, max=MAX_SIZE, step=4, tooltip="Frames per clip (4k+1; 81 = 5 s at 16 fps)."),
                io.Latent.Input("anchor", optional=True, tooltip="From SVI Encode Anchor (2.0 Pro)."),
                io.Latent.Input("motion", optional=True, tooltip="From SVI Motion Latent; leave empty for the first clip."),
                io.Image.Input("reference", optional=True, tooltip="The resized reference from SVI Encode Anchor (pixel modes; 2.0 Pro with an end image)."),
                io.Image.Input("motion_frames", optional=True, tooltip="From SVI Motion Frames (1.0 modes); empty for the first clip."),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True, tooltip="Wan 2.1 only: CLIP-vision of the first conditioning frame."),
                io.Image.Input("end_image", optional=True,
                               tooltip="The clip's last frame, at the clip size (SVI Encode Anchor's 'end'): first-last-frame "
                                       "conditioning as Wan's own node builds it. 2.0 Pro also needs the reference."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="latent", tooltip="The empty clip latent to sample."),
            ],
        )

    @classmethod
    def validate_inputs(cls, mode, length):
        return refuse_bad_inputs(cls, {"mode": current_mode(mode), "length": length},
                                 [(("length",), lambda frames: clip_length("length", frames))])

    @classmethod
    def execute(cls, positive, negative, vae, mode, length, anchor=None, motion=None, reference=None,
                motion_frames=None, clip_vision_output=None, end_image=None) -> io.NodeOutput:
        inputs = build_clip_inputs(
            vae, SVIMode.parse(mode), length, anchor=None if anchor is None else anchor["samples"],
            motion=None if motion is None else motion["samples"], reference=reference, motion_frames=motion_frames,
            end_image=end_image)
        return io.NodeOutput(condition(positive, inputs, clip_vision_output), condition(negative, inputs, clip_vision_output),
                             {"samples": inputs.empty_latent})


class SVILoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        lora_inputs = []
        for role, default_strength, tip in (
            ("svi", 1.0, "The SVI LoRA (any format: PEFT, pipe.dit, diffusion_model, kohya, or a PEFT adapter's adapter_model.safetensors)."),
            ("speed", 1.0, "A few-step distillation LoRA (e.g. lightx2v); authors advise 0.5 on the Wan 2.2 high-noise expert."),
            ("style", 1.0, "Any style LoRA; SVI Long Video can change its strength per prompt line (style=...)."),
        ):
            lora_inputs.append(io.Combo.Input(f"{role}_lora", options=_lora_options(), default=NO_LORA, tooltip=tip))
            lora_inputs.append(io.Float.Input(f"{role}_strength", default=default_strength, min=-10.0, max=10.0, step=0.01,
                                              tooltip=f"Strength of the {role} LoRA."))
        return io.Schema(
            node_id="SVILoraStack", display_name="SVI LoRA Stack", category="SVI/models",
            search_aliases=["stable video infinity", "svi lora", "lora stack", "lora loader", "lightx2v", "speed lora", "lightning lora"],
            description="Applies SVI, speed and style LoRAs at once through ComfyUI's LoRA patcher. Every tensor must "
                        "match the model; a LoRA for another model or with missing keys is an error, never ignored.",
            inputs=[io.Model.Input("model", tooltip="Wan 2.1 I2V, or one Wan 2.2 expert (use one stack per expert)."), *lora_inputs],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, svi_strength, speed_strength, style_strength):
        return refuse_bad_inputs(cls, {"svi_strength": svi_strength, "speed_strength": speed_strength,
                                       "style_strength": style_strength})

    @classmethod
    def execute(cls, model, svi_lora, svi_strength, speed_lora, speed_strength, style_lora, style_strength) -> io.NodeOutput:
        lines = []
        for role, name, strength in (("svi", svi_lora, svi_strength), ("speed", speed_lora, speed_strength),
                                     ("style", style_lora, style_strength)):
            if name == NO_LORA:
                continue
            path = folder_paths.get_full_path("loras", name)
            if path is None:
                raise SVIInputError(f"LoRA {name!r} is not in ComfyUI's loras folder")
            model, report = apply_lora(model, path, strength, name=name, reweightable=role == "style")
            lines.append(report.line())
        if not lines:
            raise SVIInputError("choose at least the SVI LoRA")
        return io.NodeOutput(model, "\n".join(lines), ui={"text": lines})


class SVIDriftControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIDriftControl", display_name="SVI Drift Control", category="SVI/video",
            search_aliases=["stable video infinity", "svi", "colour drift", "color drift", "color match", "colour correction",
                            "brightness drift"],
            description="Measures a decoded clip's colour drift (mean Lab difference to the reference) and corrects it with a "
                        "per-channel Lab mean/std match, eased over the clip so no step appears at the seam. Chain 'state' "
                        "into the next clip's node; in 1.0 modes feed the corrected frames to SVI Motion Frames.",
            inputs=[
                io.Image.Input("frames", tooltip="The decoded clip."),
                io.Image.Input("reference", tooltip="The resized reference (SVI Encode Anchor's 'reference')."),
                _mode_input(),
                _motion_input(),
                io.Int.Input("conditioning_frames", default=5, min=1, max=80, tooltip="Pixel modes: M, as in SVI Conditioning."),
                io.Combo.Input("drift", options=DRIFT_MODES, default=DriftMode.REFERENCE.value,
                               tooltip="off: measure only; match the reference; or match the previous clip where they meet."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="How far towards the target (1 = fully)."),
                DRIFT_STATE.Input("state", optional=True, tooltip="The previous clip's SVI Drift Control state; empty for the first clip."),
            ],
            outputs=[io.Image.Output(display_name="frames"), DRIFT_STATE.Output(display_name="state"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, mode, motion, conditioning_frames, drift, strength):
        return refuse_bad_inputs(cls, {"mode": current_mode(mode), "motion": motion, "conditioning_frames": conditioning_frames,
                                       "drift": drift, "strength": strength})

    @classmethod
    def execute(cls, frames, reference, mode, motion, conditioning_frames, drift, strength, state=None) -> io.NodeOutput:
        svi_mode = SVIMode.parse(mode)
        start, count = seam_for(svi_mode, motion_latent_frames=MOTION_CHOICES[motion],
                                conditioning_frames=conditioning_frames).repeated_span()
        controller = DriftController(reference[0], DriftSettings(mode=DriftMode(drift), strength=strength),
                                     conditioning_corrected=not svi_mode.uses_latent_motion, seam_start=start, seam_count=count)
        if state is not None:
            controller.restore(state)
        correction = controller.correct(frames)
        report = (f"drift (Delta-E of mean Lab colour to the reference): {correction.before.difference:.2f} -> "
                  f"{correction.after.difference:.2f}")
        return io.NodeOutput(correction.frames, controller.state(), report, ui={"text": [report]})


class SVITurboSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVITurboSampler", display_name="SVI Turbo Sampler", category="SVI/sampling",
            search_aliases=["stable video infinity", "svi", "turbo", "lightning", "4 step", "few step sampler", "wan 2.2 sampler", "lightx2v"],
            description="Sampling of one clip with a per-clip seed: few-step flow-matching Euler on the schedule's sigmas, "
                        "or any ComfyUI SAMPLER and SIGMAS; on Wan 2.2 the low-noise expert takes over below the boundary "
                        "sigma (or at switch_step), with its own cfg if set. ComfyUI's KSamplerAdvanced pair works too.",
            inputs=[
                io.Model.Input("model", tooltip="Wan 2.1 I2V, or the Wan 2.2 high-noise expert."),
                io.Conditioning.Input("positive", tooltip="This clip's conditioning from SVI Conditioning."),
                io.Conditioning.Input("negative", tooltip="Used only when cfg is above 1."),
                io.Latent.Input("latent", tooltip="The empty clip latent from SVI Conditioning."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="The run's seed; each clip derives its own from it and its clip index."),
                io.Int.Input("clip_index", default=0, min=0, max=100000, tooltip="Which clip this is (0 = first)."),
                *_sampling_inputs(),
                io.Model.Input("model_low_noise", optional=True, tooltip="Wan 2.2 A14B: the low-noise expert."),
                *_open_sampling_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, shift, boundary_sigma, cfg, cfg_low_noise=None, switch_step=None):
        return refuse_bad_inputs(cls, {"shift": shift, "boundary_sigma": boundary_sigma, "cfg": cfg,
                                       "cfg_low_noise": cfg_low_noise, "switch_step": switch_step})

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, clip_index, schedule, steps, shift, boundary_sigma, cfg,
                model_low_noise=None, cfg_low_noise=0.0, switch_step=-1, sampler=None, sigmas=None) -> io.NodeOutput:
        sigmas = schedule_sigmas(schedule, steps, shift) if sigmas is None else sigmas.float().cpu()
        cfg_low, switch = _open_sampling(cfg_low_noise, switch_step)
        progress = StepProgress(model, len(sigmas) - 1)
        samples = sample_clip(model, model_low_noise, positive, negative, latent["samples"], seed=clip_seed(seed, clip_index),
                              sigmas=sigmas, boundary=boundary_sigma, cfg=cfg, cfg_low=cfg_low, switch_step=switch,
                              sampler=sampler, step_callback=progress.step)
        return io.NodeOutput({"samples": samples})


class SVIJoinClips(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIJoinClips", display_name="SVI Join Clips", category="SVI/video",
            search_aliases=["stable video infinity", "svi", "join clips", "stitch clips", "concatenate video", "merge videos", "crossfade"],
            description="Appends the next clip, dropping the frames it re-creates at the seam (or cross-fading them).",
            inputs=[
                io.Image.Input("video", tooltip="The video so far (the first clip to start)."),
                _mode_input(),
                _motion_input(),
                io.Int.Input("conditioning_frames", default=5, min=1, max=80, tooltip="1.0 modes: M, the frames the next clip regenerates."),
                io.Int.Input("crossfade", default=0, min=0, max=80, tooltip="0 = hard cut; otherwise fade over this many overlapping frames."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip="Frame rate of the VIDEO output (Wan: 16)."),
                io.Image.Input("next_clip", optional=True, tooltip="The decoded next clip; empty passes the video through."),
            ],
            outputs=[io.Image.Output(display_name="frames"), io.Video.Output(display_name="video")],
        )

    @classmethod
    def validate_inputs(cls, mode, motion, conditioning_frames, crossfade, fps):
        return refuse_bad_inputs(cls, {"mode": current_mode(mode), "motion": motion, "conditioning_frames": conditioning_frames,
                                       "crossfade": crossfade, "fps": fps}, [_crossfade_rule()])

    @classmethod
    def execute(cls, video, mode, motion, conditioning_frames, crossfade, fps, next_clip=None) -> io.NodeOutput:
        seam = seam_for(SVIMode.parse(mode), motion_latent_frames=MOTION_CHOICES[motion], conditioning_frames=conditioning_frames)
        frames = video if next_clip is None else stitch_clips([video, next_clip], seam, crossfade)
        return io.NodeOutput(frames, InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, frame_rate=Fraction(fps))))


class SVILongVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVILongVideo", display_name="SVI Long Video", category="SVI/video",
            search_aliases=["long video", "infinite", "infinite video", "extend", "extend video", "stable video infinity", "svi", "wan long video", "video continuation", "multi prompt video"],
            description="Runs the whole SVI loop: one clip per prompt line (with per-line settings), each conditioned on the "
                        "anchor and the previous clip's motion, with optional drift control, end frames, SVI-Dance poses and "
                        "any ComfyUI sampler. Every finished clip is saved at once, so a stopped run resumes where it stopped.",
            inputs=[
                io.Model.Input("model", tooltip="Wan 2.1 I2V, or the Wan 2.2 high-noise expert, with its LoRAs applied."),
                io.Clip.Input("clip", tooltip="The umt5-xxl text encoder."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE: encodes the anchor, decodes every clip."),
                io.Image.Input("reference", tooltip="The reference image every clip is anchored to."),
                io.String.Input("prompts", multiline=True, default="a person walks along the beach\nthe person turns and waves\nthe camera pulls back to the sea",
                                tooltip="One prompt per line, one line per clip; after a '|' per-line settings: repeat=2 (clips "
                                        "of this line), style=0.6 (style LoRA strength), seed=123, end=image.png (end frame, from "
                                        "the input folder), drift=off|reference|seam. E.g. 'the sun sets | repeat=2 drift=off'."),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="Used only when cfg is above 1."),
                io.Combo.Input("prompt_overflow", options=[o.value for o in PromptOverflow], default=PromptOverflow.CYCLE.value,
                               tooltip="What clips past the last prompt line get."),
                io.Int.Input("num_clips", default=3, min=1, max=10000, tooltip="Clips to make; each adds about 5 s."),
                *_size_inputs(),
                io.Int.Input("length", default=CLIP_FRAMES, min=5, max=MAX_SIZE, step=4, tooltip="Frames per clip (4k+1)."),
                _mode_input(),
                _motion_input(),
                io.Int.Input("conditioning_frames", default=5, min=1, max=80, tooltip="1.0 modes: M re-encoded frames."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="The run's seed; clip k uses seed + 42 k."),
                *_sampling_inputs(),
                io.Int.Input("crossfade", default=0, min=0, max=80, tooltip="0 = hard cut at the seams."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip="Frame rate of the video (Wan: 16)."),
                io.String.Input("filename_prefix", default="svi/long_video", tooltip="Run folder under ComfyUI's output folder."),
                io.Boolean.Input("resume", default=True, tooltip="Continue a run with the same settings from its first missing clip."),
                io.Model.Input("model_low_noise", optional=True, tooltip="Wan 2.2 A14B: the low-noise expert with its LoRAs."),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="Wan 2.1 only: CLIP-vision model for the image branch."),
                io.Int.Input("prompt_repeat", default=1, min=1, max=1000, optional=True,
                             tooltip="Each prompt line makes this many clips in a row (official --prompt_repeat_times); a "
                                     "line's repeat= overrides it."),
                _resize_input(),
                io.Combo.Input("clip_vision_framing", options=list(CLIP_VISION_FRAMING), default=next(iter(CLIP_VISION_FRAMING)), optional=True,
                               tooltip="Wan 2.1: what CLIP vision sees of the conditioning frame; the official code squashes the "
                                       "whole frame to a square."),
                io.Boolean.Input("round_motion_to_8bit", default=True, optional=True,
                                 tooltip="Pixel modes: re-encode the motion frames as 8-bit values, as the official code does "
                                         "(and as a resumed run reads them back)."),
                io.Combo.Input("drift", options=DRIFT_MODES, default=DriftMode.OFF.value, optional=True,
                               tooltip="Colour drift control: match the reference, or match the previous clip where they meet. "
                                       "A line's drift=off lets that prompt change the light; later clips keep the new light."),
                io.Float.Input("drift_strength", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="How far drift control moves each clip towards its target (within per-clip limits)."),
                *_open_sampling_inputs(),
                io.Image.Input("end_image", optional=True, tooltip="The last clip ends on this image (first-last-frame "
                                                                   "conditioning); lines can set their own with end=."),
                io.Image.Input("pose_video", optional=True,
                               tooltip="Mode 1.0 Dance: the pose frames (e.g. a DWPose render), covering every clip."),
            ],
            outputs=[io.Video.Output(display_name="video"), io.Latent.Output(display_name="last_clip_latent"),
                     io.String.Output(display_name="run_folder")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, prompts, width, height, length, mode, motion, conditioning_frames, shift, boundary_sigma, cfg,
                        crossfade, fps, filename_prefix, prompt_repeat=None, resize=None, clip_vision_framing=None, drift=None,
                        drift_strength=None, cfg_low_noise=None, switch_step=None):
        values = {"prompts": prompts, "width": width, "height": height, "length": length, "mode": current_mode(mode),
                  "motion": motion, "conditioning_frames": conditioning_frames, "shift": shift, "boundary_sigma": boundary_sigma,
                  "cfg": cfg, "crossfade": crossfade, "fps": fps, "filename_prefix": filename_prefix,
                  "prompt_repeat": prompt_repeat, "resize": resize, "clip_vision_framing": clip_vision_framing, "drift": drift,
                  "drift_strength": drift_strength, "cfg_low_noise": cfg_low_noise, "switch_step": switch_step}
        output_dir = Path(folder_paths.get_output_directory())
        return refuse_bad_inputs(cls, values, [
            (("prompts",), value_error_rule("prompts", parse_schedule)),
            (("prompts",), end_image_problems),
            (("filename_prefix",), value_error_rule("filename_prefix", lambda prefix: safe_prefix_path(output_dir, prefix))),
            (("width", "height", "length"), lambda width, height, frames: clip_problems(
                width, height, frames, max_side=MAX_SIZE, memory_bytes=host_memory_bytes())),
            (("mode", "length", "motion", "conditioning_frames", "crossfade"),
             lambda mode, frames, motion, conditioning_frames, crossfade: seam_problems(
                 SVIMode(mode), frames, MOTION_CHOICES[motion], conditioning_frames, crossfade)),
        ])

    @classmethod
    def execute(cls, model, clip, vae, reference, prompts, negative_prompt, prompt_overflow, num_clips, width, height,
                length, mode, motion, conditioning_frames, seed, schedule, steps, shift, boundary_sigma, cfg, crossfade, fps,
                filename_prefix, resume, model_low_noise=None, clip_vision=None, prompt_repeat=1,
                resize=ResizeMode.CROP.value, clip_vision_framing=next(iter(CLIP_VISION_FRAMING)), round_motion_to_8bit=True,
                drift=DriftMode.OFF.value, drift_strength=1.0, cfg_low_noise=0.0, switch_step=-1, sampler=None, sigmas=None,
                end_image=None, pose_video=None) -> io.NodeOutput:
        cfg_low, switch = _open_sampling(cfg_low_noise, switch_step)
        settings = LongVideoSettings(
            prompts=prompts, negative_prompt=negative_prompt, prompt_overflow=PromptOverflow(prompt_overflow),
            num_clips=num_clips, width=width, height=height, clip_frames=length, mode=SVIMode.parse(mode),
            motion_latent_frames=MOTION_CHOICES[motion], conditioning_frames=conditioning_frames, seed=seed,
            schedule=schedule, steps=steps, shift=shift, boundary=boundary_sigma, cfg=cfg, crossfade=crossfade, fps=fps,
            prompt_repeat=prompt_repeat, resize=ResizeMode(resize), clip_vision_crop=CLIP_VISION_FRAMING[clip_vision_framing],
            round_motion_8bit=round_motion_to_8bit, drift=DriftMode(drift), drift_strength=drift_strength, cfg_low=cfg_low,
            switch_step=switch)
        result = run_long_video(settings, model=model, model_low=model_low_noise, clip=clip, vae=vae, reference=reference,
                                clip_vision=clip_vision, filename_prefix=filename_prefix, resume=resume,
                                node_id=cls.hidden.unique_id, sampler=sampler, sigmas=sigmas, end_image=end_image,
                                pose_video=pose_video)
        return io.NodeOutput(InputImpl.VideoFromFile(str(result.video_path)), {"samples": result.last_latent},
                             str(result.run_dir), ui=result.ui())


SVI_NODES = [SVIEncodeAnchor, SVIMotionLatent, SVIMotionFrames, SVIConditioning, SVILoraStack, SVITurboSampler,
             SVIDriftControl, SVIJoinClips, SVILongVideo]
