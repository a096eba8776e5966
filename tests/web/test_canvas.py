"""The canvas extension in a real browser: headless Chromium (Playwright) against a real ComfyUI server that serves its
real frontend (comfyui-frontend-package) with this pack loaded.

The shipped long-video workflow (example_workflows/svi_wan22_turbo_long_12clips.json, UI format, saved without the extension)
is turned into a 3-clip run on the tiny random-weight models, loaded into the page, edited through the pack's prompt
editor, queued with the Run button; the clip timeline must show three thumbnails and play a clip, the Save video node
must show the final video, the node help must show the pack's page, and the edited prompt must survive a reload.
Every shipped template also loads with no unknown node, draws its thumbnail, and the node search finds the pack's
nodes by their aliases ("long video", "infinite", "extend" find SVI Long Video).
Screenshots go to the test's tmp dir and to output/web_screenshots/.
"""

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from svi_infinity.demo.browser import CHROMIUM, CHROMIUM_ARGS, close_dialogs, open_app, render_thumbnail, search_nodes
from svi_infinity.demo.comfy_runtime import ComfyUIServer
from svi_infinity.demo.workflows import (MODEL_FILES, NOTE_TYPES, SHIPPED as SHIPPED_WORKFLOWS, WORKFLOWS_DIR, default_value, is_widget,
                                         ordered_inputs, widget_extras, with_tiny_models)

ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED = "svi_wan22_turbo_long_12clips"
EDITED = "EDITED: the camera circles the lighthouse at dusk"
SCREENSHOTS = ROOT / "output" / "web_screenshots"
LONG_VIDEO = "app.graph._nodes.find(n => n.type === 'SVILongVideo')"


def _require(condition: bool, reason: str) -> None:
    """Outside CI a missing browser stack skips with the reason; under CI (CI set) it fails, so CI always runs this."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}", pytrace=False)
        pytest.skip(reason)


# ---------------------------------------------------------------- the workflow: shipped UI file -> tiny 3-clip run

def widget_slots(info: dict) -> dict[str, int]:
    """Widget name -> its index in a node's widgets_values ('control after generate' and upload values take a slot)."""
    slots, index = {}, 0
    for name, spec, _ in ordered_inputs(info):
        if is_widget(spec):
            slots[name] = index
            index += 1 + len(widget_extras(spec, None))
    return slots


def tiny_ui_workflow(name: str, object_info: dict, tiny: dict, **sizes) -> dict:
    """A shipped UI-format workflow with the same swaps `with_tiny_models` makes in API format (tiny model files, speed
    LoRAs off, the stand-in text encoder, small clips), applied to each node's widgets_values."""
    workflow = copy.deepcopy(json.loads((WORKFLOWS_DIR / f"{name}.json").read_text()))
    graph_nodes = [node for node in workflow["nodes"] if node["type"] not in NOTE_TYPES]
    as_api = {str(node["id"]): {"class_type": node["type"],
                                "inputs": {k: node["widgets_values"][i] for k, i in widget_slots(object_info[node["type"]]).items()}}
              for node in graph_nodes}
    swapped = with_tiny_models(as_api, tiny, **sizes)
    for node in graph_nodes:
        new = swapped[str(node["id"])]
        slots = widget_slots(object_info[new["class_type"]])
        if new["class_type"] != node["type"]:
            node["type"] = new["class_type"]
            node["properties"]["Node name for S&R"] = new["class_type"]
            node["widgets_values"] = [None] * len(slots)
        specs = {name: spec for name, spec, _ in ordered_inputs(object_info[new["class_type"]])}
        for key, index in slots.items():  # a widget the swap leaves out keeps its default, as the canvas would show
            node["widgets_values"][index] = new["inputs"].get(key, default_value(specs[key]))
    return workflow


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def browser_server(comfy_runtime, tmp_path_factory):
    try:
        import comfyui_frontend_package  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        _require(False, f"the browser test needs comfyui-frontend-package and playwright (requirements-dev.txt): {error}")
    _require(Path(CHROMIUM).exists(), f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    base = tmp_path_factory.mktemp("browser_base")
    (base / "models").symlink_to(comfy_runtime.models_dir, target_is_directory=True)
    (base / "input").mkdir()
    shutil.copy(comfy_runtime.base_dir / "input" / "svi_reference.png", base / "input")
    server = ComfyUIServer(comfy_runtime.comfy_dir, base, comfy_runtime.custom_node_dirs, python=sys.executable,
                           serve_frontend=True)
    server.tiny = comfy_runtime.tiny_models
    try:
        server.wait_ready(timeout_s=180)
        status, _ = server.request("/settings/Comfy.TutorialCompleted", True)  # no first-run template browser
        assert status == 200
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright starts Chromium with a new empty profile of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1300})
        page.svi_errors = []
        page.on("pageerror", lambda error: page.svi_errors.append(f"page error: {error}"))
        page.on("console", lambda message: page.svi_errors.append(f"console: {message.text}")
                if message.type == "error" and ("svi" in message.text.lower() or "svi_infinity" in str(message.location)) else None)
        try:
            yield page
        finally:
            browser.close()


# ---------------------------------------------------------------- page helpers

def frame_node(page, part: str = "top", scale: float = 1.0) -> None:
    """Scrolls the canvas to the long-video node's title (the Save video node beside it), or to its editor ('editor')."""
    page.evaluate("""([part, scale]) => {
        const node = %s;
        const editor = node.widgets.find((w) => w.name === 'svi_clip_editor');
        const y = part === 'editor' ? node.pos[1] + editor.y - 40 / scale : node.pos[1] - 150 / scale;
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset = [360 / scale - node.pos[0], -y];
        app.canvas.setDirty(true, true);
    }""" % LONG_VIDEO, [part, scale])
    page.wait_for_timeout(400)


def prompts_value(page) -> list[str]:
    return page.evaluate(f"() => {LONG_VIDEO}.widgets.find(w => w.name === 'prompts').value").split("\n")


def num_clips(page) -> int:
    return page.evaluate(f"() => {LONG_VIDEO}.widgets.find(w => w.name === 'num_clips').value")


def row_button(page, row: int, action: str):
    return page.locator(f".svi-row[data-clip='{row}'] button[data-action='{action}']")


def check_clip_ranges(page, object_info: dict) -> None:
    """The end of clip N in the editor's ranges is the length of the stitched video of N clips, for every mode, motion
    and clip length (the extension's helpers, imported in the page, against svi.seams.total_frames)."""
    from svi_infinity.svi.conditioning import SVIMode
    from svi_infinity.svi.seams import seam_for, total_frames

    required = object_info["SVILongVideo"]["input"]["required"]
    motions = required["motion"][1]["options"] if required["motion"][0] == "COMBO" else required["motion"][0]
    cases, expected = [], []
    for mode in SVIMode:
        for latent_frames, motion in enumerate(motions, start=1):
            for length, conditioning_frames in ((81, 5), (33, 9), (9, 5)):
                seam = seam_for(mode, motion_latent_frames=latent_frames, conditioning_frames=conditioning_frames)
                if length < seam.head_skip + 2 * seam.overlap:
                    continue
                cases.append({"length": length, "fps": 16, "mode": mode.value, "motion": motion,
                              "conditioningFrames": conditioning_frames})
                expected.append([total_frames(n, length, seam) for n in (1, 2, 12)])
    assert len(cases) >= 12
    ends = page.evaluate("""async ([url, cases]) => {
        const { clipRange } = await import(url);
        return cases.map((c) => [1, 2, 12].map((n) => Math.round(clipRange(n - 1, c)[1] * c.fps)));
    }""", [f"/extensions/{ROOT.name}/svi_infinity.js", cases])
    assert ends == expected, list(zip(cases, ends, expected))


# ---------------------------------------------------------------- the test

def test_prompt_editor_clip_timeline_and_node_help(browser_server, page, tmp_path):
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def screenshot(name: str) -> None:
        page.screenshot(path=str(shots / name))

    status, object_info = browser_server.request("/object_info")
    assert status == 200
    workflow = tiny_ui_workflow(SHIPPED, object_info, browser_server.tiny, width=32, height=32, length=9, num_clips=3)
    long_video = next(node for node in workflow["nodes"] if node["type"] == "SVILongVideo")
    slots = widget_slots(object_info["SVILongVideo"])
    shipped_prompts = long_video["widgets_values"][slots["prompts"]].split("\n")
    prompts = shipped_prompts[:3]
    long_video["widgets_values"][slots["prompts"]] = "\n".join(prompts)
    long_video["widgets_values"][slots["filename_prefix"]] = "svi_browser/long_video"
    assert long_video["widgets_values"][slots["num_clips"]] == 3

    try:
        open_app(page, browser_server.url)
        page.evaluate("(workflow) => window.app.loadGraphData(workflow)", workflow)
        close_dialogs(page)
        page.locator(".svi-root").wait_for(timeout=30_000)
        frame_node(page, "editor")

        # The editor's time ranges follow the stitcher's frame accounting (svi/seams.py) in every mode.
        check_clip_ranges(page, object_info)

        # One row per clip with its time range (9-frame clips at 16 fps; each later clip adds 4 new frames).
        rows = page.locator(".svi-row textarea")
        assert rows.count() == 3
        assert [rows.nth(i).input_value() for i in range(3)] == prompts
        assert [page.locator(".svi-range").nth(i).inner_text() for i in range(3)] == ["0–0.6 s", "0.6–0.8 s", "0.8–1.1 s"]

        # Add, duplicate, reorder and remove through the editor; num_clips follows the rows it matched.
        page.locator(".svi-add").click()
        assert rows.count() == 4 and num_clips(page) == 4 and prompts_value(page) == [*prompts, prompts[2]]
        row_button(page, 3, "remove").click()
        row_button(page, 0, "duplicate").click()
        assert prompts_value(page) == [prompts[0], *prompts] and num_clips(page) == 4
        row_button(page, 2, "up").click()
        assert prompts_value(page) == [prompts[0], prompts[1], prompts[0], prompts[2]]
        row_button(page, 0, "down").click()
        assert prompts_value(page) == [prompts[1], prompts[0], prompts[0], prompts[2]]
        row_button(page, 0, "down").click()
        row_button(page, 2, "remove").click()
        assert prompts_value(page) == prompts and num_clips(page) == 3 and rows.count() == 3

        # Edit clip 2 by typing into its row.
        rows.nth(1).click()
        page.keyboard.press("Control+A")
        page.keyboard.type(EDITED)
        rows.nth(1).blur()
        expected = [prompts[0], EDITED, prompts[2]]
        assert prompts_value(page) == expected
        assert page.evaluate("() => window.app.graph._nodes.length") == len(workflow["nodes"]), "typing must not edit the graph"
        frame_node(page, "top")
        screenshot("1_editor.png")

        # The value is the node's own widget: the UI format stores it where a graph without the extension reads it,
        # and the API format sends it as the plain prompt list.
        saved = page.evaluate(f"() => {LONG_VIDEO}.serialize()")
        assert len(saved["widgets_values"]) == len(long_video["widgets_values"])
        assert saved["widgets_values"][slots["prompts"]] == "\n".join(expected)
        api_prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        api_long_video = next(node for node in api_prompt.values() if node["class_type"] == "SVILongVideo")
        assert api_long_video["inputs"]["prompts"] == "\n".join(expected)

        # Queue with the Run button and watch the timeline (every state it draws is recorded).
        page.evaluate("""() => {
            window.__sviSeen = new Set();
            new MutationObserver(() => {
                for (const cell of document.querySelectorAll('.svi-cell'))
                    window.__sviSeen.add(cell.className + ' ' + cell.textContent);
            }).observe(document.body, { subtree: true, childList: true, attributes: true });
        }""")
        frame_node(page, "top", 0.85)
        page.locator("[data-testid=queue-button]").click()
        try:  # a moment with a clip done and the next one stepping, if the tiny run is not too quick for it
            page.wait_for_function("() => document.querySelector('.svi-cell.done img') && document.querySelector('.svi-cell.running')",
                                   timeout=20_000, polling=50)
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")  # node resized
            screenshot("2_running.png")
        except Exception:  # noqa: BLE001 - the running state itself is asserted from the recorded states below
            pass
        page.wait_for_function("() => [...document.querySelectorAll('.svi-cell.done img')].filter(i => i.complete && i.naturalWidth > 0)"
                               ".length === 3", timeout=120_000)
        seen = page.evaluate("() => [...window.__sviSeen]")
        assert any("running" in s and "step 1/4" in s for s in seen), seen
        assert any("pending" in s for s in seen), seen
        assert any(s.startswith("svi-cell saving") for s in seen), seen  # decoded, written while the next clip samples

        # The Save video node fills in with the final video, and it plays in the browser.
        page.wait_for_function("""() => {
            const save = app.graph._nodes.find(n => n.type === 'SaveVideo');
            const video = save?.widgets?.find(w => w.element?.querySelector?.('video'))?.element.querySelector('video');
            return video && video.src.includes('long_video') && video.readyState >= 1 && video.videoWidth === 32;
        }""", timeout=60_000)
        # A click on a thumbnail plays that clip.
        page.locator(".svi-cell.done").nth(1).click()
        page.wait_for_function("() => { const v = document.querySelector('.svi-player video');"
                               " return v && v.src.includes('clip_00001') && v.readyState >= 2 && v.videoWidth === 32; }", timeout=20_000)
        assert EDITED in page.locator(".svi-player").inner_text()
        assert page.locator(".svi-timeline").inner_text().count("done") >= 1
        screenshot("3_timeline.png")

        history = browser_server.request("/history")[1]
        entry = next(iter(history.values()))
        assert entry["status"]["status_str"] == "success", entry["status"]
        ran = next(v for v in entry["prompt"][2].values() if v["class_type"] == "SVILongVideo")
        assert ran["inputs"]["prompts"] == "\n".join(expected)

        # The node help shows the pack's page for the node (web/docs/SVILongVideo.md).
        frame_node(page, "top")
        page.evaluate(f"() => {{ app.canvas.deselectAll?.(); app.canvas.selectNode({LONG_VIDEO}); app.canvas.setDirty(true, true); }}")
        page.locator("[data-testid=info-button]").click()
        page.get_by_text("Runs the whole SVI loop").first.wait_for(timeout=20_000)
        screenshot("4_node_help.png")

        # After a reload the frontend restores the workflow, and the edited prompt is in the editor and the widget.
        page.reload()
        page.wait_for_function(f"() => window.app && window.app.graph && {LONG_VIDEO}", timeout=90_000)
        close_dialogs(page)
        page.locator(".svi-row textarea").nth(2).wait_for(timeout=30_000)
        frame_node(page, "top")
        assert [rows.nth(i).input_value() for i in range(rows.count())] == expected
        assert prompts_value(page) == expected
        screenshot("5_reloaded.png")
        assert not page.svi_errors, page.svi_errors
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for shot in shots.glob("*.png"):
            shutil.copy(shot, SCREENSHOTS / shot.name)


def test_per_line_settings_and_old_mode_names(browser_server, page):
    """Each row shows its prompt, its settings and the clips it makes (repeat=2 spans two); a line that does not parse says
    why; typing settings writes the node's own text; a workflow saved with the old 'Shot/Dance/Talk' mode name loads with
    the current name."""
    old_mode = "1.0 Shot/Dance/Talk (pixel motion, reference padding)"
    status, object_info = browser_server.request("/object_info")
    assert status == 200
    workflow = tiny_ui_workflow("svi_wan21_long_12clips", object_info, browser_server.tiny, width=32, height=32, length=9,
                                num_clips=4)
    long_video = next(node for node in workflow["nodes"] if node["type"] == "SVILongVideo")
    slots = widget_slots(object_info["SVILongVideo"])
    lines = ["a woman walks | repeat=2 style=0.6", "she waves | seed=7 end=svi_reference.png", "the sea | sed=1"]
    long_video["widgets_values"][slots["prompts"]] = "\n".join(lines)
    long_video["widgets_values"][slots["mode"]] = old_mode
    open_app(page, browser_server.url)
    page.evaluate("(workflow) => window.app.loadGraphData(workflow)", workflow)
    close_dialogs(page)
    page.locator(".svi-root").wait_for(timeout=30_000)
    frame_node(page, "editor")

    assert page.evaluate(f"() => {LONG_VIDEO}.widgets.find(w => w.name === 'mode').value") == \
        "1.0 Shot / 2.0 on Wan 2.1 (pixel motion, reference padding)"
    rows = page.locator(".svi-row textarea")
    assert [rows.nth(i).input_value() for i in range(3)] == ["a woman walks", "she waves", "the sea"]
    settings = page.locator(".svi-row .svi-settings")
    assert [settings.nth(i).input_value() for i in range(3)] == ["repeat=2 style=0.6", "seed=7 end=svi_reference.png", "sed=1"]
    assert [page.locator(".svi-clip-no").nth(i).inner_text() for i in range(3)] == ["Clips 1–2", "Clip 3", "Clip 4"]
    assert page.locator(".svi-row[data-clip='0'] .svi-chip").all_inner_texts() == ["repeat 2", "style 0.6"]
    assert "line 3: unknown setting 'sed'" in page.locator(".svi-row[data-clip='2'] .svi-row-error").inner_text()

    settings.nth(2).fill("drift=off")
    assert prompts_value(page) == [*lines[:2], "the sea | drift=off"]
    assert page.locator(".svi-row[data-clip='2'] .svi-row-error").is_hidden()
    rows.nth(0).fill("a woman runs")
    assert prompts_value(page)[0] == "a woman runs | repeat=2 style=0.6"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "6_line_settings.png"))
    api_prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    sent = next(node for node in api_prompt.values() if node["class_type"] == "SVILongVideo")["inputs"]
    assert sent["mode"] == "1.0 Shot / 2.0 on Wan 2.1 (pixel motion, reference padding)"
    assert sent["prompts"] == "a woman runs | repeat=2 style=0.6\nshe waves | seed=7 end=svi_reference.png\nthe sea | drift=off"
    assert not page.svi_errors, page.svi_errors


def test_every_template_loads_draws_and_the_search_finds_the_pack_nodes(browser_server, page, tmp_path, comfyui_gguf):
    """Each shipped UI workflow loads with every node known to the frontend (ComfyUI-GGUF's loader included) and draws
    a thumbnail like the shipped one; the node search box finds the pack's nodes by their search aliases. The tiny
    model folders lack the real files, so the frontend asks the files' download URLs for their sizes: the page's
    security policy refuses those requests (nothing leaves the machine), and those refusals are the only errors
    allowed."""
    open_app(page, browser_server.url)
    for name in SHIPPED_WORKFLOWS:
        workflow = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
        loaded = render_thumbnail(page, workflow, tmp_path / f"{name}.jpg")
        assert loaded == {"nodes": len(workflow["nodes"]), "unknown": []}, name
        assert (tmp_path / f"{name}.jpg").stat().st_size > 10_000
    page.evaluate("() => { app.graph.clear(); app.canvas.setDirty(true, true); }")
    assert search_nodes(page, "long video")[0] == "SVI Long Video"
    assert "SVI Long Video" in search_nodes(page, "infinite")[:3]
    assert "SVI Long Video" in search_nodes(page, "extend")  # behind nodes whose own names start with "Extend"
    assert "SVI Long Video" in search_nodes(page, "extend video")[:5]
    assert search_nodes(page, "tilelang")[0] == "SVI Fast Kernels (Hopper)"
    assert search_nodes(page, "stitch clips")[0] == "SVI Join Clips"
    assert "SVI LoRA Stack" in search_nodes(page, "lightx2v")[:2]
    refused = [e for e in page.svi_errors if "Content Security Policy" in e and any(m.url in e for m in MODEL_FILES.values())]
    assert not [e for e in page.svi_errors if e not in refused], page.svi_errors
