"""The run folder of a real SVI Long Video run: every file renamed into place whole, and no way out through a symlink."""

import hashlib
import os


from svi_infinity.demo.comfy_runtime import PromptInvalid


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_every_file_of_a_run_is_renamed_into_place_whole(comfy_runtime, glue, monkeypatch):
    """Clip files, manifest, thumbnails, previews and the final video, written on the pack's worker threads too.
    Breakage caught: any of them written straight to its final name."""
    real_replace = os.replace
    renamed = {}

    def recording_replace(source, destination, *args, **kwargs):
        digest = sha256(source)
        real_replace(source, destination, *args, **kwargs)
        renamed[os.path.realpath(destination)] = digest

    monkeypatch.setattr(os, "replace", recording_replace)
    prompt, _ = glue.long_video_prompt(comfy_runtime, prefix="svi_glue/atomic", num_clips=2)
    run_dir = glue.run_dir_of(comfy_runtime, glue.run_ok(comfy_runtime, prompt))
    files = sorted(run_dir.iterdir())
    assert {"video.mp4", "run.json", "clip_00001.mkv", "clip_00001.latent.safetensors"} <= {p.name for p in files}
    for path in files:
        assert os.path.realpath(path) in renamed, f"{path.name} was written in place, not renamed into it"
        assert sha256(path) == renamed[os.path.realpath(path)], f"{path.name} changed after it was renamed into place"


def test_prefix_through_a_symlink_out_of_the_output_folder_writes_nothing_there(comfy_runtime, glue, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = comfy_runtime.output_dir / "svi_glue_link"
    link.symlink_to(outside, target_is_directory=True)
    try:
        prompt, _ = glue.long_video_prompt(comfy_runtime, prefix="svi_glue_link/run", num_clips=1)
        try:
            run = comfy_runtime.run_prompt(prompt)
        except PromptInvalid as refused:
            assert "filename_prefix" in str(refused.node_errors)
        else:
            assert not run.success and "outside" in run.error["exception_message"]
        assert not list(outside.iterdir())
    finally:
        link.unlink()
