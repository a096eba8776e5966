"""The canvas extension in a real browser: headless Chromium (Playwright) against a real ComfyUI server serving its
real frontend, with this pack loaded. Load a 3-clip long-video workflow, edit a prompt in the pack's editor, queue it
on the tiny models, watch three thumbnails and the saved video appear, reload and find the edited prompt kept."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from svi_infinity.demo.comfy_runtime import ComfyUIServer
from svi_infinity.demo.workflows import Graph, load_api_workflow, with_tiny_models

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EDITED = "EDITED: the camera circles the lighthouse at dusk"
SCREENSHOTS = ROOT / "output" / "web_screenshots"


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_server(comfy_runtime, tmp_path_factory):
    try:
        import comfyui_frontend_package  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as error:
        _require(False, f"browser test needs comfyui-frontend-package and playwright: {error}")
    _require(Path(CHROMIUM).exists(), "Debian's chromium is not installed (apt-get install chromium)")
    base = tmp_path_factory.mktemp("browser_base")
    (base / "models").symlink_to(comfy_runtime.models_dir, target_is_directory=True)
    (base / "input").mkdir()
    shutil.copy(comfy_runtime.base_dir / "input" / "svi_reference.png", base / "input")
    server = ComfyUIServer(comfy_runtime.comfy_dir, base, [ROOT, ROOT / "demo" / "stand_ins"], python=sys.executable,
                           serve_frontend=True)
    server.tiny = comfy_runtime.tiny_models
    try:
        server.wait_ready(timeout_s=180)
        yield server
    finally:
        server.stop()


def tiny_ui_workflow(server) -> dict:
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), server.tiny, width=32, height=32, length=9,
                              num_clips=3)
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")
    long_video["inputs"]["prompts"] = "a lighthouse on a cliff\nwaves crash below\nthe beam sweeps the sea"
    long_video["inputs"]["filename_prefix"] = "svi_browser/long_video"
    status, info = server.request("/object_info")
    assert status == 200
    return Graph.from_api(prompt).to_ui(info)


def close_dialogs(page) -> None:
    """A fresh browser profile gets the frontend's first-run template browser; close it as a user would."""
    dialogs = page.locator("[role=dialog]")
    for _ in range(5):
        if dialogs.count() == 0:
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    assert dialogs.count() == 0, "a dialog stays open over the canvas"


def test_prompt_editor_and_clip_timeline(browser_server, tmp_path):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    workflow = tiny_ui_workflow(browser_server)
    status, _ = browser_server.request("/settings/Comfy.TutorialCompleted", True)  # no first-run template browser
    assert status == 200
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(browser_server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=90_000)
        close_dialogs(page)
        page.evaluate("(wf) => window.app.loadGraphData(wf)", workflow)
        page.wait_for_timeout(500)
        close_dialogs(page)
        editor = page.locator(".svi-editor")
        editor.wait_for(timeout=30_000)
        rows = page.locator(".svi-prompt-row textarea")
        assert rows.count() == 3
        assert "0.0–0.6 s" in page.locator(".svi-range").first.inner_text()
        target = rows.nth(1)
        target.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(EDITED)
        target.blur()  # the editor commits a row on change, like a text field
        value = page.evaluate("() => window.app.graph._nodes.find(n => n.type === 'SVILongVideo').widgets"
                              ".find(w => w.name === 'prompts').value")
        assert value.split("\n")[1] == EDITED
        page.screenshot(path=str(SCREENSHOTS / "1_editor.png"))
        tmp_copy = tmp_path / "1_editor.png"
        shutil.copy(SCREENSHOTS / "1_editor.png", tmp_copy)

        page.evaluate("() => window.app.queuePrompt(0, 1)")
        page.wait_for_function("() => document.querySelectorAll('.svi-clip.done img').length === 3", timeout=180_000)
        page.wait_for_function("() => document.querySelectorAll('video').length > 0", timeout=60_000)
        page.locator(".svi-clip.done img").first.click()
        page.wait_for_function("() => document.querySelector('.svi-player video')", timeout=10_000)
        page.screenshot(path=str(SCREENSHOTS / "2_timeline.png"))

        history = json.loads(page.evaluate("async () => JSON.stringify(await (await fetch('/history')).json())"))
        entry = next(iter(history.values()))
        assert entry["status"]["status_str"] == "success"
        long_video_node = next(v for v in entry["prompt"][2].values() if v["class_type"] == "SVILongVideo")
        assert long_video_node["inputs"]["prompts"].split("\n")[1] == EDITED

        page.reload()
        page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes.length > 0", timeout=90_000)
        close_dialogs(page)
        page.locator(".svi-editor").wait_for(timeout=30_000)
        assert page.locator(".svi-prompt-row textarea").nth(1).input_value() == EDITED
        page.screenshot(path=str(SCREENSHOTS / "3_reloaded.png"))
        browser.close()
    assert not [e for e in errors if "svi" in e.lower()], errors
