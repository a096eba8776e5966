"""SVI Long Video with per-clip schedules, drift control, end frames, the SVI 2.0 on Wan 2.2 seam and SVI-Dance, through
ComfyUI's executor on the tiny random-weight models."""

import json

import pytest
import torch

from svi_infinity.demo.tiny_models import pose_video_frames
from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models
from svi_infinity.svi.drift import LabStats
from svi_infinity.svi.video_io import read_frames

SCHEDULE = ("a woman walks along the beach | repeat=2 style=0.25\n"
            "she turns and waves | seed=777 end=svi_reference.png drift=off\n"
            "the camera pulls back | style=1.5 drift=seam")
LINE_OF_CLIP = [1, 1, 2, 3, 1]  # 5 clips: the 3 lines make 4, then the list cycles


def schedule_prompt(runtime, *, prefix, num_clips=5, resume=False, prompts=SCHEDULE, **inputs):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), runtime.tiny_models,
                              width=32, height=32, length=9, num_clips=num_clips)
    for node in prompt.values():
        if node["class_type"] == "SVILoraStack":  # a style LoRA on each expert (the SVI LoRA file again will do)
            node["inputs"].update(style_lora=node["inputs"]["svi_lora"], style_strength=0.5)
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]
    long_video.update({"filename_prefix": prefix, "resume": resume, "prompts": prompts, "drift": "match the reference", **inputs})
    return prompt


def run_dir_of(runtime, run):
    node = next(out for out in run.outputs.values() if "animated" in out and out["images"][0]["filename"] == "video.mp4")
    return runtime.output_dir / node["images"][0]["subfolder"]


def manifest(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def latents(run_dir, count):
    from safetensors.torch import load_file

    return [load_file(str(run_dir / f"clip_{i:05d}.latent.safetensors"))["samples"] for i in range(count)]


@pytest.fixture(scope="module")
def uninterrupted(comfy_runtime):
    run = comfy_runtime.run_prompt(schedule_prompt(comfy_runtime, prefix="svi_c/schedule_straight"))
    assert run.success, run.error
    return run_dir_of(comfy_runtime, run)


def test_per_clip_settings_are_applied_and_recorded(uninterrupted):
    clips = manifest(uninterrupted)["clips"]
    assert [c["line"] for c in clips] == LINE_OF_CLIP
    assert [c["style"] for c in clips] == [0.25, 0.25, None, 1.5, 0.25]
    assert [c["seed"] for c in clips] == [42, 84, 777, 42 + 3 * 42, 42 + 4 * 42]
    assert [c["end"] for c in clips] == [None, None, "svi_reference.png", None, None]
    assert [c["drift"] for c in clips] == [None, None, "off", "seam", None]
    assert all({"before", "after", "state", "correction_start", "correction_end"} <= set(c["drift_control"]) for c in clips)
    assert clips[2]["drift_control"]["correction_end"] == {"scale": [1.0, 1.0, 1.0], "offset": [0.0, 0.0, 0.0]}  # drift=off
    for clip in clips:
        assert clip["sampler"]["boundary"] == 0.875
    identity = manifest(uninterrupted)["identity"]
    assert identity["prompts"] == SCHEDULE and identity["end_images"].keys() == {"svi_reference.png"}


def test_a_resumed_schedule_run_matches_the_uninterrupted_one(comfy_runtime, uninterrupted):
    """Stopped during clip 3 (the line with its own seed, end frame and drift=off), resumed: the same five clips."""
    import comfy.model_management

    from svi_infinity.pipeline.long_video import CLIP_EVENT

    server, original = comfy_runtime.server, comfy_runtime.server.send_sync
    made = []

    def spy(event, data, sid=None):
        if event == CLIP_EVENT and data["status"] == "running":
            made.append(data["clip"])
            if data["clip"] == 2 and data.get("step") and stop["armed"]:
                comfy.model_management.interrupt_current_processing(True)
        return original(event, data, sid)

    stop = {"armed": True}
    server.send_sync = spy
    try:
        stopped = comfy_runtime.run_prompt(schedule_prompt(comfy_runtime, prefix="svi_c/schedule_resumed"))
        assert not stopped.success
        stop["armed"] = False
        made.clear()
        resumed = comfy_runtime.run_prompt(schedule_prompt(comfy_runtime, prefix="svi_c/schedule_resumed", resume=True))
    finally:
        server.send_sync = original
    assert resumed.success, resumed.error
    assert sorted(set(made)) == [2, 3, 4]
    run_dir = run_dir_of(comfy_runtime, resumed)
    for made_latent, expected in zip(latents(run_dir, 5), latents(uninterrupted, 5)):
        assert torch.equal(made_latent, expected)
    for index in range(5):
        assert (read_frames(run_dir / f"clip_{index:05d}.mkv") == read_frames(uninterrupted / f"clip_{index:05d}.mkv")).all()
    assert manifest(run_dir)["clips"][4]["drift_control"] == manifest(uninterrupted)["clips"][4]["drift_control"]


def test_the_style_strength_per_line_changes_the_clip(comfy_runtime, uninterrupted):
    """The same schedule with clip 1's style=0.25 removed (so the stack's 0.5): clip 1 differs; the style LoRA is really
    re-weighted."""
    run = comfy_runtime.run_prompt(schedule_prompt(comfy_runtime, prefix="svi_c/schedule_nostyle", num_clips=1,
                                                   prompts=SCHEDULE.replace(" style=0.25", "")))
    assert run.success, run.error
    plain = latents(run_dir_of(comfy_runtime, run), 1)[0]
    assert (plain - latents(uninterrupted, 1)[0]).abs().mean() > 1e-3


def test_resuming_with_a_changed_line_or_a_moved_end_image_is_refused(comfy_runtime, uninterrupted):
    changed = comfy_runtime.run_prompt(schedule_prompt(comfy_runtime, prefix="svi_c/schedule_straight", resume=True,
                                                       prompts=SCHEDULE.replace("seed=777", "seed=778")))
    assert not changed.success and "cannot resume" in changed.error["exception_message"]
    assert "prompts" in changed.error["exception_message"]

    def with_end_input(prompt):
        image = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
        next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]["end_image"] = [image, 0]
        return prompt

    first = comfy_runtime.run_prompt(with_end_input(schedule_prompt(comfy_runtime, prefix="svi_c/end_moves", num_clips=2,
                                                                    prompts="walk\nwave")))
    assert first.success, first.error
    assert [c["end"] for c in manifest(run_dir_of(comfy_runtime, first))["clips"]] == [None, "end_image input"]
    grown = comfy_runtime.run_prompt(with_end_input(schedule_prompt(comfy_runtime, prefix="svi_c/end_moves", num_clips=3,
                                                                    prompts="walk\nwave", resume=True)))
    assert not grown.success
    assert "clip 2 was made with end='end_image input' but now gets end=None" in grown.error["exception_message"]


def test_a_missing_end_image_or_a_bad_line_is_refused_before_running(comfy_runtime):
    from svi_infinity.demo.comfy_runtime import PromptInvalid

    for prompts, phrase in (("walk\nwave | end=nowhere.png", "line 2: end image 'nowhere.png' is not in ComfyUI's input folder"),
                            ("walk\nwave | style=0.5 sed=3", "line 2 ('wave | style=0.5 sed=3'): unknown setting 'sed'")):
        with pytest.raises(PromptInvalid) as error:
            comfy_runtime.run_prompt(schedule_prompt(comfy_runtime, prefix="svi_c/refused", prompts=prompts))
        assert phrase in json.dumps(error.value.node_errors)
    assert not list((comfy_runtime.output_dir / "svi_c").glob("refused_run_*"))


def official_svi20_wan22(clips):
    return torch.cat([clips[0], *(clip[1:] for clip in clips[1:])])


def test_svi20_on_wan22_run_joins_clips_by_the_official_rule(comfy_runtime):
    """Mode 2.0 on Wan 2.2, M = 1: every clip is conditioned on the previous clip's last decoded frame, and the final
    video is clip 0 + clip k[1:] (inference_svi_2.0.py), frame by frame."""
    prompt = schedule_prompt(comfy_runtime, prefix="svi_c/wan22_svi20", num_clips=3, prompts="walk\nwave\nsea",
                             mode="2.0 on Wan 2.2 (last frame, reference padding, next clip's first frame dropped)",
                             conditioning_frames=1, drift="off")
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    run_dir = run_dir_of(comfy_runtime, run)
    clips = [read_frames(run_dir / f"clip_{i:05d}.mkv") for i in range(3)]
    final = read_frames(run_dir / "video.mp4")
    official = official_svi20_wan22(clips)
    assert final.shape[0] == official.shape[0] == 9 + 8 * 2
    # video.mp4 is H.264: each of its frames is nearest to the clip frame the official rule puts there
    sources = [(k, f) for k, clip in enumerate(clips) for f in range(clip.shape[0])]
    pool = torch.cat(clips)
    nearest = [sources[int(((pool - frame).abs().mean(dim=(1, 2, 3))).argmin())] for frame in final]
    expected = [(0, f) for f in range(9)] + [(1, f) for f in range(1, 9)] + [(2, f) for f in range(1, 9)]
    clip_1_first_copies_clip_0_last = (clips[1][0] - clips[0][-1]).abs().mean()
    assert nearest[:9] == expected[:9] and nearest[9:] == expected[9:], (nearest, float(clip_1_first_copies_clip_0_last))


@pytest.fixture(scope="module")
def pose_files(comfy_runtime):
    """Two pose videos (animated PNG, which LoadImage reads as a frame batch): 25 frames cover 3 clips of 9 with M = 1."""
    from PIL import Image

    names = {}
    for name, phase, count in (("pose_a.png", 0.0, 25), ("pose_b.png", 1.7, 25), ("pose_short.png", 0.0, 24)):
        frames = (pose_video_frames(count, 40, 40, phase=phase) * 255).round().to(torch.uint8)
        frames[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)  # no two frames alike: APNG would merge equal frames
        frames = frames.numpy()
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(comfy_runtime.output_dir.parent / "input" / name, save_all=True, append_images=images[1:], duration=62)
        names[name] = name
    return names


def dance_prompt(runtime, *, prefix, pose):
    prompt = with_tiny_models(load_api_workflow("svi_wan21_long_12clips"), runtime.tiny_models, width=32, height=32,
                              length=9, num_clips=3)
    stack = next(v for v in prompt.values() if v["class_type"] == "SVILoraStack")["inputs"]
    stack["svi_lora"] = runtime.tiny_models["dance_lora_wan21"]
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]
    long_video.update(filename_prefix=prefix, mode="1.0 Dance (pixel motion, reference padding, pose video)",
                      conditioning_frames=1, prompts="the person is dancing", resume=False)
    if pose is not None:
        prompt["pose"] = {"class_type": "LoadImage", "inputs": {"image": pose}}
        long_video["pose_video"] = ["pose", 0]
    return prompt


def test_svi_dance_run_with_a_pose_video(comfy_runtime, pose_files):
    first = comfy_runtime.run_prompt(dance_prompt(comfy_runtime, prefix="svi_c/dance_a", pose="pose_a.png"))
    assert first.success, first.error
    run_dir = run_dir_of(comfy_runtime, first)
    assert len(read_frames(run_dir / "video.mp4")) == 9 + 8 * 2
    assert manifest(run_dir)["identity"]["pose_video_sha256"]
    other = comfy_runtime.run_prompt(dance_prompt(comfy_runtime, prefix="svi_c/dance_b", pose="pose_b.png"))
    assert other.success, other.error
    moved = [float((a - b).abs().mean()) for a, b in zip(latents(run_dir, 3), latents(run_dir_of(comfy_runtime, other), 3))]
    assert min(moved) > 1e-3  # the pose steers every clip


@pytest.mark.parametrize("pose, phrase", [
    ("pose_short.png", "the pose video has 24 frames but 3 clips of 9 frames (each later one continuing the previous "
                       "one's last 1) need 25"),
    (None, "pose_video: mode 1.0 Dance (pixel motion, reference padding, pose video) needs the pose video"),
])
def test_svi_dance_without_enough_pose_is_refused_before_sampling(comfy_runtime, pose_files, pose, phrase):
    run = comfy_runtime.run_prompt(dance_prompt(comfy_runtime, prefix="svi_c/dance_refused", pose=pose))
    assert not run.success and phrase in run.error["exception_message"]
    assert not list((comfy_runtime.output_dir / "svi_c").glob("dance_refused_run_*"))


def test_pixel_modes_continue_from_the_corrected_8bit_frames_and_get_their_end_image(comfy_runtime, monkeypatch):
    """Shot mode with drift control: the frames clip k re-encodes are clip k-1's saved (corrected, 8-bit) last M frames,
    and only the clip whose line sets end= gets an end image."""
    import sys

    import nodes

    package = nodes.NODE_CLASS_MAPPINGS["SVILongVideo"].__module__.rsplit(".nodes.", 1)[0]
    module = sys.modules[f"{package}.pipeline.long_video"]
    real = module.build_clip_inputs
    calls = []

    def spy(*args, **kwargs):
        calls.append({k: None if kwargs.get(k) is None else kwargs[k].clone() for k in ("motion_frames", "end_image")})
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "build_clip_inputs", spy)
    prompt = with_tiny_models(load_api_workflow("svi_wan21_long_12clips"), comfy_runtime.tiny_models, width=32, height=32,
                              length=17, num_clips=3)
    inputs = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]
    inputs.update(filename_prefix="svi_c/shot_drift", drift="match the reference", prompts="walk\nwave | end=svi_reference.png\nsea")
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    run_dir = run_dir_of(comfy_runtime, run)
    saved = [read_frames(run_dir / f"clip_{i:05d}.mkv") for i in range(3)]
    assert calls[0]["motion_frames"] is None
    for k in (1, 2):
        assert torch.equal(calls[k]["motion_frames"], saved[k - 1][-5:])
    records = [c["drift_control"] for c in manifest(run_dir)["clips"]]
    assert any(r["correction_end"] != {"scale": [1.0, 1.0, 1.0], "offset": [0.0, 0.0, 0.0]} for r in records)  # it acted
    for frames, record in zip(saved, records):  # what was saved (and carried on) is the corrected clip
        mean = LabStats.of(frames).mean
        assert torch.allclose(mean, torch.tensor(record["after"]["mean_lab"], dtype=mean.dtype), atol=0.3)
    assert any(abs(r["before"]["delta_e"] - r["after"]["delta_e"]) > 1 for r in records)
    assert [c["end_image"] is not None for c in calls] == [False, True, False]
    assert calls[1]["end_image"].shape == (1, 32, 32, 3)
