"""Long runs lose nothing: interrupt and resume, damaged clip files, manifest mismatch, flat memory over 100 clips."""

import json
import sys
import threading

import psutil
import torch
import pytest

from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models
from svi_infinity.pipeline.long_video import CLIP_EVENT
from svi_infinity.svi.conditioning import SVIMode
from svi_infinity.svi.seams import seam_for, stitch_clips
from svi_infinity.svi.video_io import read_frames


def long_video_prompt(runtime, *, prefix, num_clips, resume=False, seed=11, length=9, size=32):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), runtime.tiny_models,
                              width=size, height=size, length=length, num_clips=num_clips)
    node = next(k for k, v in prompt.items() if v["class_type"] == "SVILongVideo")
    prompt[node]["inputs"].update(filename_prefix=prefix, resume=resume, seed=seed)
    return prompt


def run_dir_of(runtime, run):
    node = next(out for out in run.outputs.values() if "animated" in out and out["images"][0]["filename"] == "video.mp4")
    return runtime.output_dir / node["images"][0]["subfolder"]


@pytest.fixture
def clip_events(comfy_runtime, monkeypatch):
    """Records the pack's per-clip messages; a test may set `on_done` to act when a clip is on disk, `on_step` when a
    clip reports a finished sampling step."""
    server = comfy_runtime.server
    original = server.send_sync
    events = []

    def spy(event, data, sid=None):
        if event == CLIP_EVENT:
            events.append(dict(data))
            if data["status"] == "done" and spy.on_done is not None:
                spy.on_done(data)
            if data["status"] == "running" and data.get("step") and spy.on_step is not None:
                spy.on_step(data)
        return original(event, data, sid)

    spy.on_done = spy.on_step = None
    spy.events = events
    monkeypatch.setattr(server, "send_sync", spy)
    return spy


def test_interrupt_after_clip_2_of_5_then_resume_matches_uninterrupted(comfy_runtime, clip_events):
    import comfy.model_management

    reference = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/uninterrupted", num_clips=5))
    assert reference.success, reference.error
    reference_dir = run_dir_of(comfy_runtime, reference)

    def interrupt_in_third(data):  # the stop button pressed while clip 3 samples, clip 2 perhaps still being saved
        if data["clip"] == 2:
            comfy.model_management.interrupt_current_processing(True)

    clip_events.on_step = interrupt_in_third
    stopped = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/interrupted", num_clips=5))
    assert not stopped.success and stopped.error["event"] == "execution_interrupted"
    run_dir = next((comfy_runtime.output_dir / "svi_t").glob("interrupted_run_*"))
    manifest = json.loads((run_dir / "run.json").read_text())
    assert [c["index"] for c in manifest["clips"]] == [0, 1]
    assert sorted(p.name for p in run_dir.glob("clip_*.mkv")) == ["clip_00000.mkv", "clip_00001.mkv"]
    assert not list(run_dir.glob(".*partial*")) and not (run_dir / "video.mp4").exists()

    clip_events.on_step = None
    clip_events.events.clear()
    resumed = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/interrupted", num_clips=5, resume=True))
    assert resumed.success, resumed.error
    assert run_dir_of(comfy_runtime, resumed) == run_dir
    made = sorted({e["clip"] for e in clip_events.events if e["status"] == "running"})
    assert made == [2, 3, 4]
    clips, reference_clips = [[read_frames(d / f"clip_{i:05d}.mkv") for i in range(5)] for d in (run_dir, reference_dir)]
    for made, expected in zip(clips, reference_clips):
        assert (made == expected).all()  # the lossless archives the final video is built from: bit-exact
    stitched = stitch_clips(clips, seam_for(SVIMode.PRO_LATENT))
    assert (stitched == stitch_clips(reference_clips, seam_for(SVIMode.PRO_LATENT))).all()
    final, expected = read_frames(run_dir / "video.mp4"), read_frames(reference_dir / "video.mp4")
    assert final.shape[0] == expected.shape[0] == stitched.shape[0] == 9 + 4 * 4
    # video.mp4 is lossy H.264; x264 here rarely differs run to run by a few levels on random-noise frames
    assert (final - expected).abs().mean() < 2 / 255 and (final - stitched).abs().mean() < 0.1


def test_clip_is_saved_while_the_next_one_samples(comfy_runtime, clip_events, monkeypatch):
    """Clip 1's files are written off the main thread: its save can wait for clip 2's first step (a save on the
    sampling thread would wait in vain), and the run still ends with every clip and the whole video."""
    import nodes

    package = nodes.NODE_CLASS_MAPPINGS["SVILongVideo"].__module__.rsplit(".nodes.", 1)[0]
    run_store = sys.modules[f"{package}.svi.run_store"]
    real_save_clip = run_store.RunStore.save_clip
    second_clip_sampling = threading.Event()
    seen = {}

    def on_step(data):
        if data["clip"] == 1:
            second_clip_sampling.set()

    def save_once_clip_2_samples(self, index, *args, **kwargs):
        if index == 0:
            seen["thread"] = threading.current_thread()
            seen["clip 2 sampled meanwhile"] = second_clip_sampling.wait(timeout=60)
        return real_save_clip(self, index, *args, **kwargs)

    clip_events.on_step = on_step
    monkeypatch.setattr(run_store.RunStore, "save_clip", save_once_clip_2_samples)
    run = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/overlap", num_clips=3))
    assert run.success, run.error
    assert seen["clip 2 sampled meanwhile"] and seen["thread"] is not threading.main_thread()
    run_dir = run_dir_of(comfy_runtime, run)
    assert [c["index"] for c in json.loads((run_dir / "run.json").read_text())["clips"]] == [0, 1, 2]
    assert len(read_frames(run_dir / "video.mp4")) == 9 + 4 * 2
    statuses = [(e["clip"], e["status"]) for e in clip_events.events if e["status"] in ("saving", "done")]
    assert statuses.index((0, "saving")) < statuses.index((0, "done"))


def test_damaged_clip_is_regenerated_not_used(comfy_runtime, clip_events):
    first = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/damaged", num_clips=3))
    assert first.success, first.error
    run_dir = run_dir_of(comfy_runtime, first)
    original = read_frames(run_dir / "clip_00001.mkv")
    damaged = run_dir / "clip_00001.mkv"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    clip_events.events.clear()
    again = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/damaged", num_clips=3, resume=True))
    assert again.success, again.error
    assert sorted({e["clip"] for e in clip_events.events if e["status"] == "running"}) == [1, 2]
    assert (read_frames(damaged) == original).all()


def test_resume_with_other_settings_is_refused(comfy_runtime):
    first = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/mismatch", num_clips=2))
    assert first.success, first.error
    refused = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/mismatch", num_clips=2, resume=True, seed=12))
    assert not refused.success
    message = refused.error["exception_message"]
    assert "cannot resume" in message and "seed" in message


def test_hundred_clips_keep_memory_flat(comfy_runtime, clip_events):
    process = psutil.Process()
    samples = {}

    def measure(data):
        samples[data["clip"]] = process.memory_info().rss

    clip_events.on_done = measure
    run = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/hundred", num_clips=100, size=32))
    assert run.success, run.error
    assert len(read_frames(run_dir_of(comfy_runtime, run) / "video.mp4")) == 9 + 4 * 99
    growth_mib = (samples[99] - samples[19]) / 2**20
    print(f"RSS clip 20: {samples[19] / 2**20:.0f} MiB, clip 100: {samples[99] / 2**20:.0f} MiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 40


def test_out_of_memory_says_what_to_change_and_keeps_finished_clips(comfy_runtime, monkeypatch):
    """A CUDA out-of-memory error in clip 2 (raised in place of the sampler: a CPU cannot run out of GPU memory)."""
    import sys

    import nodes

    package = nodes.NODE_CLASS_MAPPINGS["SVILongVideo"].__module__.rsplit(".nodes.", 1)[0]
    long_video_module = sys.modules[f"{package}.pipeline.long_video"]
    real_sample_clip = long_video_module.sample_clip
    calls = []

    def sample_until_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_sample_clip(*args, **kwargs)

    monkeypatch.setattr(long_video_module, "sample_clip", sample_until_out_of_memory)
    run = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/oom", num_clips=3))
    assert not run.success
    message = run.error["exception_message"]
    assert "out of GPU memory on clip 2 of 3" in message and "resume" in message and "width/height" in message
    run_dir = next((comfy_runtime.output_dir / "svi_t").glob("oom_run_*"))
    assert [c["index"] for c in json.loads((run_dir / "run.json").read_text())["clips"]] == [0]


def test_resume_with_fewer_clips_keeps_the_longer_video(comfy_runtime, clip_events):
    """A finished 3-clip run asked again for 2 clips (resume on): nothing is sampled, video.mp4 with 3 clips stays as it
    is, and the 2-clip video is written beside it and returned."""
    full = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/shorter", num_clips=3))
    assert full.success, full.error
    run_dir = run_dir_of(comfy_runtime, full)
    longer = (run_dir / "video.mp4").read_bytes()
    clip_events.events.clear()
    shorter = comfy_runtime.run_prompt(long_video_prompt(comfy_runtime, prefix="svi_t/shorter", num_clips=2, resume=True))
    assert shorter.success, shorter.error
    assert not [e for e in clip_events.events if e["status"] == "running"]
    assert (run_dir / "video.mp4").read_bytes() == longer
    assert len(read_frames(run_dir / "video.mp4")) == 9 + 4 * 2
    shown = next(out for out in shorter.outputs.values() if "animated" in out)["images"][0]
    assert shown["filename"] == "video_2_clips.mp4" and len(read_frames(run_dir / "video_2_clips.mp4")) == 9 + 4
    assert len(json.loads((run_dir / "run.json").read_text())["clips"]) == 3


def test_every_distinct_prompt_is_encoded_once_before_sampling(comfy_runtime, clip_events, monkeypatch):
    """5 clips cycling through 3 prompts: the text encoder runs 4 times (3 prompts and the negative), all before the first
    sampling step, so on a small card it is not swapped back in at each new prompt."""
    import nodes

    encoder_class = type(nodes.NODE_CLASS_MAPPINGS["SVIStandInTextEncoderLoader"].execute(
        clip_name="random", type="wan").result[0])
    timeline = []
    real_encode = encoder_class.encode_from_tokens_scheduled

    def recording_encode(self, tokens, **kwargs):
        timeline.append(("encode", tokens))
        return real_encode(self, tokens, **kwargs)

    monkeypatch.setattr(encoder_class, "encode_from_tokens_scheduled", recording_encode)
    clip_events.on_step = lambda data: timeline.append(("step", data["clip"]))
    prompt = long_video_prompt(comfy_runtime, prefix="svi_t/encode_once", num_clips=5)
    inputs = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]
    inputs.update(prompts="first shot\nsecond shot\nthird shot", negative_prompt="blurry")
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    encoded = [text for kind, text in timeline if kind == "encode"]
    assert sorted(encoded) == ["blurry", "first shot", "second shot", "third shot"]
    first_step = timeline.index(("step", 0))
    assert all(kind == "encode" for kind, _ in timeline[:first_step]) and len(timeline[:first_step]) == 4
