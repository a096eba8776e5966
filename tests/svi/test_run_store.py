"""Run folders: names that cannot escape the output folder, numbering, identity checks, trusted clips only."""

import json

import pytest
import torch

from svi_infinity.svi.run_store import RunMismatch, RunPathError, RunStore, safe_prefix_path


@pytest.mark.parametrize("prefix", ["../x", "/abs/path", "a/../../b", "C:\\x", "a\0b", "a:b", "", "  "])
def test_prefix_cannot_escape(tmp_path, prefix):
    with pytest.raises(RunPathError):
        safe_prefix_path(tmp_path, prefix)


def test_prefix_inside_output(tmp_path):
    assert safe_prefix_path(tmp_path, "svi/run") == (tmp_path / "svi" / "run").resolve()


def write_frames(path):
    path.write_bytes(b"frames " + path.name.encode())


def test_numbering_resume_and_identity(tmp_path):
    first = RunStore.open(tmp_path, "svi/run", {"seed": 1}, resume=False)
    second = RunStore.open(tmp_path, "svi/run", {"seed": 1}, resume=False)
    assert (first.run_dir.name, second.run_dir.name) == ("run_run_00001", "run_run_00002")
    assert RunStore.open(tmp_path, "svi/run", {"seed": 1}, resume=True).run_dir == second.run_dir
    with pytest.raises(RunMismatch, match="seed"):
        RunStore.open(tmp_path, "svi/run", {"seed": 2}, resume=True)


def test_saved_clips_are_verified_by_hash(tmp_path):
    store = RunStore.open(tmp_path, "r", {"a": 1}, resume=False)
    for index in range(3):
        store.save_clip(index, torch.randn(1, 16, 2, 4, 4), write_frames, {"prompt": f"p{index}"}, b"jpeg")
    assert store.verified_clip_count() == 3
    assert not [p for p in store.run_dir.iterdir() if "partial" in p.name]
    assert [c["prompt"] for c in json.loads((store.run_dir / "run.json").read_text())["clips"]] == ["p0", "p1", "p2"]
    latent = store.latent_path(1)
    latent.write_bytes(latent.read_bytes()[: latent.stat().st_size // 2])
    assert store.verified_clip_count() == 1
    store.frames_path(0).unlink()
    assert store.verified_clip_count() == 0


def test_manifest_is_strict_json(tmp_path):
    """A NaN in a record fails the save loudly instead of writing a token strict JSON readers reject."""
    store = RunStore.open(tmp_path, "r", {"a": 1}, resume=False)
    with pytest.raises(ValueError, match="JSON compliant"):
        store.save_clip(0, torch.randn(1, 16, 2, 4, 4), write_frames, {"cfg": float("nan")}, b"jpeg")
    assert json.loads((store.run_dir / "run.json").read_text())["clips"] == []
    assert not [p for p in store.run_dir.iterdir() if "partial" in p.name]


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resume_removes_what_a_killed_process_left_half_written(tmp_path):
    import os

    store = RunStore.open(tmp_path, "r", {"a": 1}, resume=False)
    store.save_clip(0, torch.randn(1, 16, 2, 4, 4), write_frames, {"prompt": "p0"}, b"jpeg")
    killed = [store.run_dir / f".clip_00001.partial-{dead_pid()}.mkv", store.run_dir / f".video.partial-{dead_pid()}.mp4",
              store.run_dir / f".clip_00001.latent.partial-{os.getpid()}.safetensors"]
    live = store.run_dir / f".clip_00002.partial-{os.getppid()}.mkv"  # another live process may still be writing it
    for path in (*killed, live):
        path.write_bytes(b"half a file")
    resumed = RunStore.open(tmp_path, "r", {"a": 1}, resume=True)
    assert resumed.run_dir == store.run_dir
    assert not any(path.exists() for path in killed) and live.exists()
    assert resumed.verified_clip_count() == 1


def test_failed_write_leaves_no_temporary_file(tmp_path):
    from svi_infinity.svi.run_store import write_atomically

    def fail_half_way(partial):
        partial.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "clip.mkv", fail_half_way)
    assert list(tmp_path.iterdir()) == []


def test_a_shorter_video_never_replaces_a_longer_one(tmp_path):
    store = RunStore.open(tmp_path, "r", {"a": 1}, resume=False)
    for index in range(3):
        store.save_clip(index, torch.randn(1, 16, 2, 4, 4), write_frames, {"prompt": f"p{index}"}, b"jpeg")
    assert store.video_path_for(3) == store.video_path
    store.video_path.write_bytes(b"three clips")
    store.record_video(store.video_path, 3)
    assert store.video_path_for(2).name == "video_2_clips.mp4"
    assert store.video_path_for(3) == store.video_path_for(5) == store.video_path
    store.record_video(store.video_path_for(2), 2)  # the shorter one beside it leaves the record alone
    assert store.manifest()["video_clips"] == 3
