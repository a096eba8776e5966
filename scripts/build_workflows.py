"""Writes example_workflows/*.json (UI and API format) and web/docs/*.md from demo/workflows.py, using a real ComfyUI's
node definitions (ComfyUI-GGUF's too, for the GGUF workflow's loader).

Run: COMFYUI_PATH=/opt/ComfyUI COMFYUI_GGUF_PATH=/opt/ComfyUI-GGUF .venv/bin/python scripts/build_workflows.py
Then scripts/render_thumbnails.py draws the template browser's thumbnails.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.demo.comfy_runtime import InProcessComfyUI, find_comfyui, find_comfyui_gguf  # noqa: E402
from svi_infinity.demo.workflows import write_node_docs, write_shipped_workflows  # noqa: E402

if __name__ == "__main__":
    gguf = find_comfyui_gguf()
    if gguf is None:
        sys.exit("ComfyUI-GGUF not found: set COMFYUI_GGUF_PATH (the GGUF workflow is written from its loader's definition)")
    with tempfile.TemporaryDirectory() as base:
        InProcessComfyUI(find_comfyui(), Path(base), [pack_alias.ROOT, gguf])
        import nodes

        pack_nodes = [name for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("SVI")]
        for path in write_shipped_workflows() + write_node_docs(pack_nodes):
            print(path.relative_to(pack_alias.ROOT))
