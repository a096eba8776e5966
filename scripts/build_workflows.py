"""Writes workflows/*.json (UI and API format) and web/docs/*.md from demo/workflows.py, using a real ComfyUI's node definitions.

Run: COMFYUI_PATH=/opt/ComfyUI .venv/bin/python scripts/build_workflows.py
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.demo.comfy_runtime import InProcessComfyUI, find_comfyui  # noqa: E402
from svi_infinity.demo.workflows import write_node_docs, write_shipped_workflows  # noqa: E402

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as base:
        InProcessComfyUI(find_comfyui(), Path(base), [pack_alias.ROOT])
        import nodes

        pack_nodes = [name for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("SVI")]
        for path in write_shipped_workflows() + write_node_docs(pack_nodes):
            print(path.relative_to(pack_alias.ROOT))
