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
