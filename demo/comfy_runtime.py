"""Finding and starting the real ComfyUI runtime outside its own main.py (tests, demo, benchmarks).

ComfyUI is not a pip package: it is located on disk, put on sys.path, and initialised in the
order its import-time globals require (folder_paths reads args.base_directory and
model_management reads args.cpu when first imported).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

TESTED_COMFYUI_VERSION = "0.33.0"
CLIENT_ID = "svi-tests"  # the websocket client id prompts are queued under (in process and over HTTP)
PACK_ROOT = Path(__file__).resolve().parent.parent


class ComfyUINotFound(RuntimeError):
    pass


def find_comfyui(pack_root: Path = PACK_ROOT) -> Path:
    """$COMFYUI_PATH, else the grandparent when the pack sits in ComfyUI/custom_nodes/."""
    env_path = os.environ.get("COMFYUI_PATH", "")
    grandparent = pack_root.parent.parent
    for candidate in (Path(env_path) if env_path else None, grandparent):
        if candidate is not None and (candidate / "comfy" / "model_detection.py").is_file() and (candidate / "main.py").is_file():
            return candidate.resolve()
    raise ComfyUINotFound(
        f"ComfyUI not found: set COMFYUI_PATH to a ComfyUI v{TESTED_COMFYUI_VERSION} folder "
        f"(now {env_path or 'unset'}), or place this pack in ComfyUI/custom_nodes/ (its grandparent is {grandparent})."
    )


COMFYUI_GGUF_COMMIT = "795e45156ece99afbc3efef911e63fcb46e6a20d"  # the city96/ComfyUI-GGUF commit the tests run against


def find_comfyui_gguf() -> Path | None:
    """city96's ComfyUI-GGUF pack (its UnetLoaderGGUF loads the GGUF workflows' experts) at $COMFYUI_GGUF_PATH (default
    /opt/ComfyUI-GGUF), or None."""
    path = Path(os.environ.get("COMFYUI_GGUF_PATH") or "/opt/ComfyUI-GGUF")
    if (path / "nodes.py").is_file() and (path / "loader.py").is_file():
        return path.resolve()
    return None


def comfyui_version(comfy_dir: Path) -> str:
    text = (comfy_dir / "comfyui_version.py").read_text()
    return text.split("__version__", 1)[1].split('"')[1]


def make_base_directory(base: Path) -> Path:
    """The folders ComfyUI expects under --base-directory."""
    for sub in ("models", "input", "output", "temp", "user", "custom_nodes", "frontend"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class PromptRun:
    """What one executed prompt left behind: success, ComfyUI's status messages and UI outputs."""
    prompt_id: str
    success: bool
    outputs: dict
    messages: list = field(default_factory=list)

    @property
    def error(self) -> dict | None:
        for event, data in self.messages:
            if event in ("execution_error", "execution_interrupted"):
                return {"event": event, **data}
        return None


def import_comfy(comfy_dir: Path, base_dir: Path, *, cpu: bool = True) -> None:
    """ComfyUI's model, sampling and folder modules, configured for `base_dir` (no executor, server or nodes)."""
    make_base_directory(base_dir)
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    import comfy.options  # noqa: F401  (keeps ComfyUI's own argv parsing disabled)
    from comfy.cli_args import args

    args.cpu = cpu
    args.base_directory = str(base_dir)
    args.disable_api_nodes = True
    args.front_end_root = str(base_dir / "frontend")
    args.database_url = "sqlite:///:memory:"
    args.preview_method = "none"

    import folder_paths  # noqa: F401
    import comfy.model_management  # noqa: F401


class InProcessComfyUI:
    """Real ComfyUI (executor, validation, node registry) in this process, on the CPU, no HTTP."""

    def __init__(self, comfy_dir: Path, base_dir: Path, custom_node_dirs: list[Path], *, cpu: bool = True):
        self.comfy_dir = comfy_dir
        self.custom_node_dirs = list(custom_node_dirs)
        self.base_dir = make_base_directory(base_dir)
        import_comfy(comfy_dir, self.base_dir, cpu=cpu)
        import folder_paths
        import execution
        import nodes
        import server

        self.folder_paths = folder_paths
        self.nodes = nodes
        self.execution = execution
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.server = server.PromptServer(self.loop)
        self.loop.run_until_complete(nodes.init_public_apis())
        self.loop.run_until_complete(nodes.init_builtin_extra_nodes())
        for node_dir in custom_node_dirs:
            self.load_custom_nodes(node_dir)
        self.progress: list[tuple[str | None, int, int, bool]] = []
        self.on_progress = None
        import comfy.utils

        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC,
            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
        )

    def load_custom_nodes(self, node_dir: Path) -> None:
        """Loads one more custom node pack (as ComfyUI's startup does for each folder in custom_nodes/)."""
        loaded = self.loop.run_until_complete(self.nodes.load_custom_node(str(node_dir), module_parent="custom_nodes"))
        if not loaded:
            raise RuntimeError(f"ComfyUI failed to load the custom node pack at {node_dir} (see the log above)")

    def _progress_hook(self, value, total, preview, prompt_id=None, node_id=None):
        """Stands in for main.py's hook: records (node, value, total, has preview) and honours interrupts like it."""
        import comfy.model_management
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        self.progress.append((node_id, value, total, preview is not None))
        if self.on_progress is not None:
            self.on_progress(node_id, value, total)
        comfy.model_management.throw_exception_if_processing_interrupted()

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return Path(self.folder_paths.get_output_directory())

    def validate(self, prompt: dict) -> tuple[bool, dict | None, list, dict]:
        """ComfyUI's own validation: (valid, error, output node ids, per-node errors)."""
        return self.loop.run_until_complete(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run_prompt(self, prompt: dict, *, extra_data: dict | None = None) -> PromptRun:
        """Validates and runs `prompt` as queued by the client CLIENT_ID (as the frontend queues), unless `extra_data`
        says otherwise."""
        valid, error, outputs, node_errors = self.validate(prompt)
        if not valid:
            raise PromptInvalid(error, node_errors)
        prompt_id = str(uuid.uuid4())
        extra_data = {"client_id": CLIENT_ID, **(extra_data or {})}
        self.loop.run_until_complete(self.executor.execute_async(prompt, prompt_id, extra_data, outputs))
        return PromptRun(prompt_id, self.executor.success, self.executor.history_result.get("outputs", {}) if self.executor.success else {},
                         list(self.executor.status_messages))


class PromptInvalid(ValueError):
    def __init__(self, error, node_errors):
        super().__init__(f"{error}; node errors: {node_errors}")
        self.error = error
        self.node_errors = node_errors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyUIServer:
    """ComfyUI's real main.py as a child process on 127.0.0.1, stopped by pid within a bounded time."""

    def __init__(self, comfy_dir: Path, base_dir: Path, custom_node_dirs: list[Path], *, python: str = sys.executable,
                 serve_frontend: bool = False, cpu: bool = True, extra_args: tuple[str, ...] = ()):
        """`serve_frontend` serves the installed comfyui-frontend-package; otherwise an empty page (API only). `cpu`
        False: ComfyUI picks its GPU and memory management as a user's server does (`extra_args`, e.g. --reserve-vram,
        go to main.py as given)."""
        self.comfy_dir = comfy_dir
        self.base_dir = make_base_directory(base_dir)
        for node_dir in custom_node_dirs:
            link = self.base_dir / "custom_nodes" / node_dir.name
            if not link.exists():
                link.symlink_to(node_dir, target_is_directory=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "server.log"
        self._log = open(self.log_path, "wb")
        frontend = [] if serve_frontend else ["--front-end-root", str(self.base_dir / "frontend")]
        self.process = subprocess.Popen(
            [python, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base_dir), *frontend,
             "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--preview-method", "none", *extra_args],
            cwd=comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/system_stats", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI server not ready after {timeout_s} s:\n{self.log()}")

    def request(self, path: str, body: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict]:
        """GET (or POST with a JSON body); returns (HTTP status, parsed JSON), also for 4xx answers."""
        import json
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def queue_prompt(self, prompt: dict, client_id: str = CLIENT_ID) -> tuple[int, dict]:
        return self.request("/prompt", {"prompt": prompt, "client_id": client_id})

    def wait_for_history(self, prompt_id: str, timeout_s: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, history = self.request(f"/history/{prompt_id}")
            if status == 200 and prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server died:\n{self.log()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        self._log.close()
        return self.process.returncode


class WebsocketClient:
    """A real websocket client of a ComfyUIServer (as a browser tab is), recording every JSON message it receives with
    the time it arrived (time.perf_counter)."""

    def __init__(self, server, client_id: str):
        import threading

        self.url = f"{server.url.replace('http://', 'ws://')}/ws?clientId={client_id}"
        self.messages: list[dict] = []
        self.arrived: list[float] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self.connected.wait(30):
            raise TimeoutError(f"could not connect to {self.url}")

    def _run(self) -> None:
        import asyncio

        import aiohttp

        async def listen() -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as socket:
                self.connected.set()
                while not self._stop.is_set():
                    try:
                        message = await socket.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(message.json())
                        self.arrived.append(time.perf_counter())
                    elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

        asyncio.run(listen())

    def close(self) -> list[dict]:
        self._stop.set()
        self._thread.join(10)
        return self.messages
