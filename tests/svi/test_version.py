"""One version string: pyproject.toml's (what the registry reads), and the code reads that one."""

import sys
from pathlib import Path

import pytest

from svi_infinity.svi.version import PACK_VERSION, PYPROJECT, project_version

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE_SUFFIXES = {".py", ".js", ".toml", ".txt", ".cfg", ".sh"}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib (the independent TOML reader) is Python 3.11+")
def test_the_code_reads_pyprojects_version():
    import tomllib

    assert PACK_VERSION == tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def test_the_version_is_written_nowhere_else():
    """No source file but pyproject.toml spells the version out (a second copy would drift from the registry's)."""
    literal = f'"{PACK_VERSION}"'
    copies = [path.relative_to(ROOT) for path in ROOT.rglob("*") if path.suffix in SOURCE_SUFFIXES and path.is_file()
              and not any(part.startswith((".venv", ".git")) for part in path.relative_to(ROOT).parts)
              and path != PYPROJECT and literal in path.read_text(errors="replace")]
    assert copies == []


def test_only_the_project_tables_version_counts():
    text = '[tool.other]\nversion = "9.9.9"\n\n[project]\nname = "x"\nversion = "1.2.3"\n\n[tool.comfy]\nversion = "7"\n'
    assert project_version(text) == "1.2.3"
    with pytest.raises(ValueError):
        project_version('[project]\nname = "x"\n[tool.comfy]\nversion = "7"\n')
