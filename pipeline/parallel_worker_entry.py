"""Entry point of a sequence-parallel worker process (pipeline/parallel_workers.py starts it with this file's path).

The pack is imported as a package by its folder (ComfyUI loads it under a name of its own; a worker needs only the
pack's pipeline and svi modules, not the node registry), then the worker loop runs.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

PACKAGE = "svi_infinity_worker"


def main() -> None:
    root = Path(json.loads(os.environ["SVI_PARALLEL_WORKER"])["pack_root"])
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    from svi_infinity_worker.pipeline import parallel_workers, sequence_parallel

    parallel_workers.worker_main(sequence_parallel)


if __name__ == "__main__":
    main()
