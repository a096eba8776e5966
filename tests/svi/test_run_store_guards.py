"""The run store's guards: atomic files, no stale later clips after a re-save, no way out of the output folder."""

import hashlib
import json
import os

import pytest
import torch

from svi_infinity.svi.run_store import RunPathError, RunStore, safe_prefix_path


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def renames(monkeypatch):
    """Every os.replace (Path.replace goes through it): destination -> hash of what was renamed there, last wins."""
    real_replace = os.replace
    seen = {}

    def recording_replace(source, destination, *args, **kwargs):
        digest = sha256(source)
        real_replace(source, destination, *args, **kwargs)
        seen[os.path.realpath(destination)] = digest

    monkeypatch.setattr(os, "replace", recording_replace)
    return seen


def frames_writer(content: bytes):
    def write(path):
        with open(path, "wb") as handle:
            handle.write(content[: len(content) // 2])
            handle.flush()
            handle.write(content[len(content) // 2:])

    return write


def save(store, index, *, tag="first"):
    generator = torch.Generator().manual_seed(index + (100 if tag != "first" else 0))
    store.save_clip(index, torch.randn(1, 16, 2, 4, 4, generator=generator), frames_writer(f"frames {index} {tag}".encode() * 50),
                    {"prompt": f"clip {index} {tag}"}, f"jpeg {index} {tag}".encode(), frames_writer(f"mp4 {index} {tag}".encode() * 50))


def test_every_run_folder_file_is_renamed_into_place_whole(tmp_path, renames):
    """Each file in the run folder arrived by a rename of a finished temporary file and was not touched after it, so a
    reader (or a crash) never sees half of it. Breakage caught: any run-folder file written straight to its name."""
    store = RunStore.open(tmp_path, "svi/atomic", {"seed": 1}, resume=False)
    for index in range(3):
        save(store, index)
    save(store, 1, tag="again")
    files = sorted(store.run_dir.iterdir())
    assert {p.name for p in files} >= {"run.json", "clip_00000.latent.safetensors", "clip_00000.mkv", "clip_00000.jpg",
                                       "clip_00000.mp4"}
    for path in files:
        assert os.path.realpath(path) in renames, f"{path.name} was written in place, not renamed into it"
        assert sha256(path) == renames[os.path.realpath(path)], f"{path.name} changed after it was renamed into place"


def test_resaving_clip_k_drops_the_records_of_later_clips(tmp_path):
    """A clip made again (e.g. it failed its hash check) invalidates every later clip, whose motion came from the old
    one: their records go, so a resume makes them again although their files are still on disk."""
    store = RunStore.open(tmp_path, "svi/resave", {"seed": 1}, resume=False)
    for index in range(4):
        save(store, index)
    assert store.verified_clip_count() == 4
    save(store, 1, tag="again")
    clips = json.loads((store.run_dir / "run.json").read_text())["clips"]
    assert [c["index"] for c in clips] == [0, 1]
    assert [c["prompt"] for c in clips] == ["clip 0 first", "clip 1 again"]
    assert store.frames_path(3).is_file() and store.verified_clip_count() == 2
    save(store, 0, tag="again")
    assert store.verified_clip_count() == 1


@pytest.fixture
def output_with_links(tmp_path):
    output, outside = tmp_path / "output", tmp_path / "outside"
    (output / "svi").mkdir(parents=True)
    outside.mkdir()
    (output / "escape").symlink_to(outside, target_is_directory=True)
    (output / "svi" / "escape").symlink_to(outside, target_is_directory=True)
    (output / "inside").symlink_to(output / "svi", target_is_directory=True)
    return output, outside


@pytest.mark.parametrize("prefix", ["escape/run", "svi/escape/run", "escape"])
def test_prefix_resolving_outside_the_output_folder_is_refused(output_with_links, prefix):
    """A symlink inside the output folder that points outside it: the name is harmless, its resolved path is not.
    Breakage caught: the resolved-path containment check removed."""
    output, outside = output_with_links
    with pytest.raises(RunPathError, match="outside"):
        safe_prefix_path(output, prefix)
    with pytest.raises(RunPathError):
        RunStore.open(output, prefix, {"seed": 1}, resume=False)
    assert not list(outside.iterdir())


def test_prefix_through_a_symlink_that_stays_inside_is_accepted(output_with_links):
    output, _ = output_with_links
    store = RunStore.open(output, "inside/run", {"seed": 1}, resume=False)
    assert store.run_dir.resolve().parent == (output / "svi").resolve()
