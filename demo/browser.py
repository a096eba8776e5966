"""ComfyUI's real frontend in headless Chromium (Playwright): opening the app, loading a workflow, drawing thumbnails.

Used by the browser test (tests/web/test_canvas.py) and by scripts/render_thumbnails.py, which writes the template
browser's example_workflows/<name>.jpg from the graph as the canvas draws it.
"""

from __future__ import annotations

import re
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
THUMBNAIL_VIEWPORT = {"width": 1600, "height": 1000}
THUMBNAIL_CLIP = {"x": 60, "y": 40, "width": 1540, "height": 880}  # the canvas without the side bar, tabs and zoom bar
THUMBNAIL_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                      "LiteGraph.Canvas.MinFontSizeForLOD": 0}  # draw every node in full at any zoom


def keep_on_this_machine(page) -> None:
    """Aborts every request the page makes to anything but the local server (the frontend asks model download URLs
    for their size when files are missing; this machine has no network and the tests send no traffic out)."""
    page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://"), lambda route: route.abort())


def open_app(page, url: str) -> None:
    keep_on_this_machine(page)
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=90_000)
    close_dialogs(page)


def close_dialogs(page) -> None:
    """Closes any dialog over the canvas (first run, missing models) as a user would."""
    dialogs = page.locator("[role=dialog]")
    for _ in range(5):
        if dialogs.count() == 0:
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    assert dialogs.count() == 0, "a dialog stays open over the canvas"


def load_workflow(page, workflow: dict) -> dict:
    """Loads a UI-format workflow as a user's drop would, fits it to the view; returns what the canvas holds: the node
    count and the node types the frontend does not know (a missing node pack)."""
    page.evaluate("(workflow) => window.app.loadGraphData(workflow)", workflow)
    close_dialogs(page)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    page.wait_for_timeout(500)
    return page.evaluate("""() => ({
        nodes: app.graph._nodes.length,
        unknown: app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
    })""")


def render_thumbnail(page, workflow: dict, path: Path) -> dict:
    """The workflow's graph as the canvas draws it, saved as a JPEG (the template browser's thumbnail format)."""
    loaded = load_workflow(page, workflow)
    page.screenshot(path=str(path), type="jpeg", quality=80, clip=THUMBNAIL_CLIP)
    return loaded


def search_nodes(page, query: str) -> list[str]:
    """What the node search box (the one a double click on the canvas opens) lists for `query`, in order."""
    search_box = page.locator("input[aria-controls=results-list]")
    page.evaluate("() => app.extensionManager.command.execute('Workspace.SearchBox.Toggle')")
    search_box.wait_for(timeout=10_000)
    search_box.fill(query)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=result-item]').length > 0", timeout=10_000)
    page.wait_for_timeout(500)  # the list settles once the last keystroke's search is in
    names = page.evaluate("() => [...document.querySelectorAll('[data-testid=result-item]')]"
                          ".map(item => item.innerText.split('\\n')[0].trim())")
    page.keyboard.press("Escape")
    search_box.wait_for(state="hidden", timeout=5000)
    return names
