"""A long run's folder on disk: every finished clip as soon as it exists, and a manifest to resume from.

Layout of `<output>/<prefix>_run_00001/`:
  run.json                    settings identity + one record per finished clip (with file hashes)
  clip_00000.latent.safetensors   the clip's final denoised latent (the next clip's motion comes from it)
  clip_00000.mkv              its decoded frames, lossless (x264 RGB, crf 0)
  clip_00000.jpg              a thumbnail
  clip_00000.mp4              a playable H.264 copy (for the canvas timeline)
  video.mp4                   the stitched video, grown clip by clip (a resume rebuilds it from the clip files)
  video_5_clips.mp4           a shorter video asked of a run whose video.mp4 holds more clips (video.mp4 is kept)
Every file is written under a temporary name and renamed into place, so a crash never leaves a
half-written clip that a resume would trust; a resume also re-hashes each clip before using it, and
removes the temporary files a killed process left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


MANIFEST_NAME = "run.json"
RUN_SUFFIX = re.compile(r"_run_(\d{5})$")
RUN_FOLDER_SUFFIX_LENGTH = len("_run_00001")
LONGEST_FILE_NAME = len(".clip_00000.latent.partial-4194304.safetensors")  # inside a run folder, temporaries included
PARTIAL = re.compile(r"^\..+\.partial-(\d+)(\.[^.]+)?$")
MANIFEST_VERSION = 1


class RunPathError(ValueError):
    """A filename prefix that would leave ComfyUI's output folder, or is not a usable name."""


class RunMismatch(ValueError):
    """Resume asked for, but the stored run was made with other settings."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_prefix_path(output_dir: Path, prefix: str) -> Path:
    """`output_dir / prefix`, refusing absolute paths, '..', and anything resolving outside output_dir."""
    cleaned = prefix.strip().replace("\\", "/")
    if not cleaned or cleaned.startswith("/") or re.match(r"^[A-Za-z]:", cleaned):
        raise RunPathError(f"filename_prefix must be a relative name inside the output folder, got {prefix!r}")
    parts = cleaned.split("/")
    if ".." in parts:
        raise RunPathError(f"filename_prefix {prefix!r} would write outside ComfyUI's output folder ('..' is not allowed)")
    if any(part in ("", ".") for part in parts) or any(ch in cleaned for ch in "\0:*?\"<>|"):
        raise RunPathError(f"filename_prefix {prefix!r} may only hold plain folder and file names (no special characters)")
    root = output_dir.resolve()
    target = (root / cleaned).resolve()
    if root != target and root not in target.parents:
        raise RunPathError(f"filename_prefix {prefix!r} would write outside ComfyUI's output folder")
    _check_name_lengths(root, target)
    return target


def _check_name_lengths(root: Path, target: Path) -> None:
    """The run folder `<target>_run_00001` and every file in it must be nameable on this file system."""
    existing = next(p for p in (root, *root.parents) if p.exists())
    name_max = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    path_max = os.pathconf(existing, "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    folders = target.relative_to(root).parts
    for index, part in enumerate(folders):
        length = len(part.encode()) + (RUN_FOLDER_SUFFIX_LENGTH if index == len(folders) - 1 else 0)
        if length > name_max:
            raise RunPathError(f"filename_prefix: the name {part[:40]!r}... is {len(part.encode())} bytes; with the run number "
                               f"a name may have at most {name_max - RUN_FOLDER_SUFFIX_LENGTH} bytes on this file system")
    longest = len(str(target).encode()) + RUN_FOLDER_SUFFIX_LENGTH + 1 + LONGEST_FILE_NAME
    if longest > path_max:
        raise RunPathError(f"filename_prefix is too long: the run's files would have paths of {longest} bytes, more than "
                           f"this file system's {path_max}")


def temporary_path(path: Path) -> Path:
    """A sibling name for writing before an atomic rename; keeps the extension so muxers pick the format."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def write_atomically(path: Path, write) -> None:
    """`write(partial)` under a temporary name, then renamed into place: readers never see half a file. A write that
    fails leaves no temporary file behind."""
    partial = temporary_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    write_atomically(path, lambda partial: partial.write_bytes(data))


@dataclass
class RunStore:
    run_dir: Path

    @staticmethod
    def runs_for(output_dir: Path, prefix: str) -> list[Path]:
        base = safe_prefix_path(output_dir, prefix)
        if not base.parent.is_dir():
            return []
        runs = [p for p in base.parent.iterdir() if p.is_dir() and p.name.startswith(base.name) and RUN_SUFFIX.search(p.name)
                and p.name[: RUN_SUFFIX.search(p.name).start()] == base.name]
        return sorted(runs, key=lambda p: int(RUN_SUFFIX.search(p.name).group(1)))

    @classmethod
    def open(cls, output_dir: Path, prefix: str, identity: dict, *, resume: bool) -> "RunStore":
        """The newest run for `prefix` when resuming (it must match `identity`), else a new numbered run."""
        runs = cls.runs_for(output_dir, prefix)
        if resume and runs:
            store = cls(runs[-1])
            store.check_identity(identity)
            store.remove_stale_partials()
            return store
        base = safe_prefix_path(output_dir, prefix)
        number = int(RUN_SUFFIX.search(runs[-1].name).group(1)) + 1 if runs else 1
        store = cls(base.parent / f"{base.name}_run_{number:05d}")
        store.run_dir.mkdir(parents=True, exist_ok=False)
        store._write_manifest({"version": MANIFEST_VERSION, "identity": identity, "clips": []})
        return store

    # files
    def latent_path(self, index: int) -> Path:
        return self.run_dir / f"clip_{index:05d}.latent.safetensors"

    def frames_path(self, index: int) -> Path:
        return self.run_dir / f"clip_{index:05d}.mkv"

    def thumbnail_path(self, index: int) -> Path:
        return self.run_dir / f"clip_{index:05d}.jpg"

    def preview_path(self, index: int) -> Path:
        return self.run_dir / f"clip_{index:05d}.mp4"

    def clip_files(self, index: int) -> dict[str, str]:
        """The names of a finished clip's thumbnail and playable preview, for the canvas timeline."""
        return {"thumbnail": self.thumbnail_path(index).name, "preview": self.preview_path(index).name}

    @property
    def video_path(self) -> Path:
        return self.run_dir / "video.mp4"

    def video_path_for(self, num_clips: int) -> Path:
        """video.mp4, unless it already holds more clips than `num_clips`: a shorter video never replaces a longer one,
        it goes beside it."""
        manifest = self.manifest()
        held = manifest.get("video_clips", len(manifest["clips"]))  # runs made before this was recorded: all their clips
        if self.video_path.is_file() and held > num_clips:
            return self.run_dir / f"video_{num_clips}_clips.mp4"
        return self.video_path

    def record_video(self, path: Path, num_clips: int) -> None:
        """Notes how many clips video.mp4 holds, for `video_path_for`."""
        if path == self.video_path:
            manifest = self.manifest()
            manifest["video_clips"] = num_clips
            self._write_manifest(manifest)

    def remove_stale_partials(self) -> list[Path]:
        """Deletes temporary files that a process no longer running (or this one, in an earlier failed attempt) left."""
        removed = []
        for path in self.run_dir.iterdir():
            match = PARTIAL.match(path.name)
            if match and (int(match.group(1)) == os.getpid() or not _process_alive(int(match.group(1)))):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # manifest
    def manifest(self) -> dict:
        try:
            return json.loads((self.run_dir / MANIFEST_NAME).read_text())
        except (OSError, ValueError) as error:
            raise RunMismatch(f"{self.run_dir} has no readable {MANIFEST_NAME} ({error}); start a new run with resume off") from error

    def _write_manifest(self, manifest: dict) -> None:
        # strict JSON: a NaN or infinity in a record is a bug to surface, never a token other readers reject
        atomic_write_bytes(self.run_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode())

    def check_identity(self, identity: dict) -> None:
        stored = self.manifest().get("identity", {})
        differing = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        if differing:
            details = "; ".join(f"{k}: run has {stored.get(k)!r}, graph has {identity.get(k)!r}" for k in differing[:4])
            raise RunMismatch(
                f"cannot resume {self.run_dir.name}: it was made with other settings ({', '.join(differing)}). {details}. "
                "Turn resume off to start a new run, or restore the run's settings.")

    # clips
    def save_clip(self, index: int, latent: torch.Tensor, write_frames, record: dict, thumbnail_jpeg: bytes | None = None,
                  write_preview=None) -> None:
        """Writes the clip's files (each atomically), then adds its record, with hashes, to the manifest.

        `write_frames(path)` writes the lossless frames a resume rebuilds the video from; `write_preview(path)`
        an optional playable copy.
        """
        write_atomically(self.latent_path(index), lambda partial: save_file(
            {"samples": latent.contiguous().cpu()}, str(partial), metadata={"clip_index": str(index)}))
        if thumbnail_jpeg is not None:
            atomic_write_bytes(self.thumbnail_path(index), thumbnail_jpeg)
        writers = [(write_frames, self.frames_path(index))]
        if write_preview is not None:
            writers.append((write_preview, self.preview_path(index)))
        with ThreadPoolExecutor(len(writers)) as pool:  # the encoders run side by side (each clip's frames are few)
            for done in [pool.submit(write_atomically, path, write) for write, path in writers]:
                done.result()
        manifest = self.manifest()
        clips = [c for c in manifest["clips"] if c["index"] < index]
        clips.append({**record, "index": index, "latent_sha256": sha256_file(self.latent_path(index)),
                      "frames_sha256": sha256_file(self.frames_path(index))})
        manifest["clips"] = clips
        self._write_manifest(manifest)

    def verified_clip_count(self) -> int:
        """How many clips, from the first, are on disk intact (hashes match); later ones are not trusted."""
        count = 0
        for expected_index, clip in enumerate(sorted(self.manifest()["clips"], key=lambda c: c["index"])):
            if clip["index"] != expected_index:
                break
            latent, frames = self.latent_path(expected_index), self.frames_path(expected_index)
            if not (latent.is_file() and frames.is_file()):
                break
            if sha256_file(latent) != clip["latent_sha256"] or sha256_file(frames) != clip["frames_sha256"]:
                break
            count += 1
        return count

    def load_latent(self, index: int) -> torch.Tensor:
        return load_file(str(self.latent_path(index)))["samples"]
