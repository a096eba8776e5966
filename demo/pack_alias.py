"""Imports this repository as the package `svi_infinity`, whatever its folder is called.

ComfyUI loads the pack under a name derived from its path; tests, the demo and benchmarks need
a stable name instead. Importing the root package is cheap: it only defines the entrypoint.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "svi_infinity"
ROOT = Path(__file__).resolve().parent.parent


def import_pack():
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]
