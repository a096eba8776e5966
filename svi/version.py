"""The pack's version. It is written once, in pyproject.toml's [project] table (the registry reads it there, without
running code); this reads it from that file, which ships with the pack."""

from __future__ import annotations

import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def project_version(pyproject_text: str) -> str:
    """The `version = "..."` line of the [project] table (before the next table starts)."""
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", pyproject_text + "\n[", re.MULTILINE | re.DOTALL)
    version = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.MULTILINE)
    if not version:
        raise ValueError(f"no version in the [project] table of {PYPROJECT}")
    return version.group(1)


PACK_VERSION = project_version(PYPROJECT.read_text(encoding="utf-8"))
