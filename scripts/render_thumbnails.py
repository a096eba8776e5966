"""Draws every shipped UI workflow as ComfyUI's canvas shows it and saves example_workflows/<name>.jpg, the thumbnail the
template browser shows beside it (it asks for `<name>.jpg` next to `<name>.json`).

A real ComfyUI server serves its real frontend with this pack and ComfyUI-GGUF loaded; headless Chromium loads each
workflow, fits it to the view and takes the screenshot. The model folders hold empty files with the workflows' model
names and the input folder the reference image, so the canvas shows the graph as a user with the files sees it (no
missing-file marks); nothing is ever run.

Run: COMFYUI_PATH=/opt/ComfyUI COMFYUI_GGUF_PATH=/opt/ComfyUI-GGUF .venv/bin/python scripts/render_thumbnails.py [NAME ...]
(only the named workflows when given; needs Debian's chromium at /usr/bin/chromium and the dev requirements: playwright, comfyui-frontend-package)
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.demo import browser  # noqa: E402
from svi_infinity.demo.comfy_runtime import ComfyUIServer, find_comfyui, find_comfyui_gguf  # noqa: E402
from svi_infinity.demo.tiny_models import write_reference_image  # noqa: E402
from svi_infinity.demo.workflows import MODEL_FILES, REFERENCE_IMAGE, SHIPPED, WORKFLOWS_DIR  # noqa: E402


def main() -> int:
    from playwright.sync_api import sync_playwright

    names = sys.argv[1:] or list(SHIPPED)
    unknown = sorted(set(names) - set(SHIPPED))
    if unknown:
        sys.exit(f"not shipped workflows: {', '.join(unknown)}")
    gguf = find_comfyui_gguf()
    if gguf is None:
        sys.exit("ComfyUI-GGUF not found: set COMFYUI_GGUF_PATH (the GGUF workflow's loader comes from it)")
    with tempfile.TemporaryDirectory() as base_name:
        base = Path(base_name)
        for name, model in MODEL_FILES.items():
            (base / "models" / model.directory).mkdir(parents=True, exist_ok=True)
            (base / "models" / model.directory / name).touch()
        write_reference_image(base / "input" / REFERENCE_IMAGE)
        server = ComfyUIServer(find_comfyui(), base, [pack_alias.ROOT, gguf], serve_frontend=True)
        try:
            server.wait_ready(timeout_s=180)
            for setting, value in browser.THUMBNAIL_SETTINGS.items():
                status, _ = server.request(f"/settings/{setting}", value)
                assert status == 200, setting
            with sync_playwright() as playwright:
                chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM, headless=True,
                                                      args=browser.CHROMIUM_ARGS)
                page = chromium.new_page(viewport=browser.THUMBNAIL_VIEWPORT)
                browser.open_app(page, server.url)
                for name in names:
                    workflow = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
                    path = WORKFLOWS_DIR / f"{name}.jpg"
                    loaded = browser.render_thumbnail(page, workflow, path)
                    if loaded["unknown"] or loaded["nodes"] != len(workflow["nodes"]):
                        sys.exit(f"{name}: the canvas holds {loaded}, the file {len(workflow['nodes'])} nodes")
                    print(path.relative_to(pack_alias.ROOT))
                chromium.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
