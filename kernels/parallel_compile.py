"""Compiling many TileLang kernels at once, across the CPU cores.

In one process the kernels build one after another: `dispatch.compiled()` holds a lock around each build, and most of
a build is TVM's lowering under the GIL. So each worker is a fresh Python process (this file run as a script, never a
fork of a process that holds CUDA and TVM's threads) that builds the jobs it is sent into TileLang's disk cache; the
calling process then loads each finished kernel from that cache (10-30 ms) while the others are still compiling, and
reports progress per kernel. A job a worker could not build, or all of them when no worker starts, is built in the
calling process as before, so its error (if any) surfaces there.

A job is (label, builder, args): `builder(*args)` is a module-level kernel function of this pack (e.g.
`rmsnorm.rms_norm_kernel`), pickled by reference, so the worker imports the pack under the caller's package name.

Starting a worker costs seconds (it imports torch and TileLang), so a job this pack has built into the same disk cache
before, with the same kernel sources and TileLang version (`BuiltIndex`), is loaded in the calling process first, and
workers start only for the rest: a warm install's kernels are all in well under a second.

`BackgroundCompile` runs the same on a daemon thread, so sampling can start while the kernels build. One compile runs
at a time in a process: a second (the other Wan 2.2 expert's kernel node, say) waits for the first and then loads
what it built from the disk cache instead of building the same kernels again beside it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = (__package__ or "").rpartition(".")[0]  # the pack's module name as its importer loaded it
REPLY = "svi-compile:"  # prefix of the worker's protocol lines (TileLang may print its own)
MAX_WORKERS = 8  # each worker holds torch + TileLang (~1 GB); more rarely helps a clip's dozen kernels
COMPILE_THREAD = "svi-kernel-compile"  # the name of a BackgroundCompile's thread
WORKER_NICENESS = 10  # workers (and the nvcc they run) yield the CPU to the process that is sampling meanwhile
_one_compile_at_a_time = threading.Lock()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Built:
    label: str
    seconds: float  # from submission until loaded in this process
    worker: int | None  # pid of the process that compiled it; None when this process did


class BuiltIndex:
    """The jobs this pack has built into a TileLang disk cache, under a namespace of the kernel sources (kernels/*.py)
    and TileLang's version, so an edited kernel or another TileLang counts as not built. One JSON file in the cache
    folder; a lost entry (two processes writing at once) only sends that job to a worker again, and an entry whose
    kernel TileLang's cache no longer holds is compiled in the calling process (slower, still correct)."""

    FILE = "svi_built_kernels.json"

    def __init__(self, cache: Path):
        self.path = cache / self.FILE
        self.namespace = self._namespace(Path(__file__).parent)
        try:
            self.keys = set(json.loads(self.path.read_text()).get(self.namespace, []))
        except (OSError, ValueError, AttributeError):
            self.keys = set()

    @staticmethod
    def _namespace(sources: Path) -> str:
        from importlib.metadata import PackageNotFoundError, version

        digest = hashlib.sha256()
        for source in sorted(sources.glob("*.py")):
            digest.update(source.read_bytes())
        try:
            digest.update(version("tilelang").encode())
        except PackageNotFoundError:
            pass
        return digest.hexdigest()[:16]

    @staticmethod
    def key(job: tuple) -> str:
        _, builder, args = job
        return f"{builder.__module__.rpartition('.')[2]}.{builder.__qualname__}{args!r}"

    def __contains__(self, job: tuple) -> bool:
        return self.key(job) in self.keys

    def save(self, jobs: list[tuple]) -> None:
        """Adds `jobs` (all loaded in this process) and writes the file (atomically: a temporary file renamed)."""
        self.keys.update(self.key(job) for job in jobs)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({self.namespace: sorted(self.keys)}))
            temporary.replace(self.path)
        except OSError as error:  # a read-only cache still works, it just starts workers next time
            log.info("SVI kernels: could not record the built kernels in %s: %s", self.path, error)


def default_workers(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(jobs, cores, MAX_WORKERS))


def _worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)  # the caller's packages (ComfyUI adds some)
    env["CUDA_VISIBLE_DEVICES"] = ""  # compiling needs no GPU (the target is fixed); no CUDA context per worker
    return env


class _Worker:
    """One worker process and the thread that feeds it jobs from the shared queue; every job it takes gets exactly one
    answer on `done`: (index, worker pid) when built, (index, None) when not."""

    def __init__(self, pending: queue.Queue, done: queue.Queue):
        self.process = subprocess.Popen([sys.executable, "-u", __file__, str(PACK_ROOT), PACKAGE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_worker_env())
        self.pending, self.done = pending, done
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _build(self, job: tuple) -> bool:
        try:
            message = base64.b64encode(pickle.dumps(job[1:])).decode()
        except (pickle.PicklingError, AttributeError, TypeError):  # not importable by reference: built by the caller
            return False
        try:
            self.process.stdin.write(message + "\n")
            self.process.stdin.flush()
            for line in self.process.stdout:
                if line.startswith(REPLY):
                    return line[len(REPLY):].startswith("ok")
        except (OSError, ValueError):  # the worker died or its pipe closed
            pass
        return False

    def _serve(self):
        try:
            alive = True
            while alive:
                try:
                    index, job = self.pending.get_nowait()
                except queue.Empty:
                    break
                alive = self._build(job)
                self.done.put((index, self.process.pid if alive else None))
        finally:  # also when this thread dies: the worker process ends with it
            try:
                self.process.stdin.close()
            except OSError:
                pass
            self.process.wait()


def compile_all(jobs: list[tuple], progress=None, workers: int | None = None, on_loaded=None) -> list[Built]:
    """Builds every job into this process's kernel cache, handing them to the workers in list order;
    `progress(done, total)` and `on_loaded(index in jobs)` after each kernel is loaded."""
    with _one_compile_at_a_time:
        return _compile_all(jobs, progress, workers, on_loaded)


def _compile_all(jobs: list[tuple], progress, workers: int | None, on_loaded) -> list[Built]:
    from .dispatch import cache_dir, tilelang_problem

    tilelang_problem()  # sets TILELANG_CACHE_DIR in the environment the workers inherit
    built_before = BuiltIndex(cache_dir())
    cached = {position for position, job in enumerate(jobs) if job in built_before}
    to_build = [(position, job) for position, job in enumerate(jobs) if position not in cached]
    workers = default_workers(len(to_build)) if workers is None else workers
    start = time.perf_counter()
    pending, done = queue.Queue(), queue.Queue()
    for item in to_build:
        pending.put(item)
    built, loaded = [], set()  # loaded: positions in jobs

    def load(index: int, worker: int | None):
        label, builder, args = jobs[index]
        builder(*args)  # from the disk cache when a worker built it, else compiled here
        built.append(Built(label, time.perf_counter() - start, worker))
        loaded.add(index)
        if on_loaded is not None:
            on_loaded(index)
        if progress is not None:
            progress(len(built), len(jobs))

    try:
        for position in sorted(cached):  # from the disk cache, in this process
            load(position, None)
        _build_in_workers(pending, done, load, workers if len(to_build) > 1 else 1)
        for position in range(len(jobs)):  # taken by a worker thread that died without answering: built here
            if position not in loaded:
                load(position, None)
    finally:
        built_before.save([jobs[position] for position in sorted(loaded)])
    return built


def _build_in_workers(pending: queue.Queue, done: queue.Queue, load, workers: int) -> None:
    """Feeds `pending` to `workers` worker processes and loads each job they finish; what none could build (or all,
    when `workers` is 1 or no worker starts) is built by `load` in this process."""
    total = pending.qsize()
    pool = []
    if workers > 1:
        try:
            pool = [_Worker(pending, done) for _ in range(workers)]
        except OSError:  # no interpreter to start: everything is built here
            pass
    answered = 0
    while pool and answered < total:
        try:
            load(*done.get(timeout=0.2))
            answered += 1
        except queue.Empty:
            if done.empty() and not any(worker.thread.is_alive() for worker in pool):
                break
    while not pending.empty():  # left when every worker died (or none started)
        load(pending.get()[0], None)


class BackgroundCompile:
    """`compile_all(jobs)` on a daemon thread. `finished` is set when the thread ends: every job loaded into this
    process, or the compile failed (`error` says why; the first job that fails ends it), so nothing waits on it
    forever. On that thread, before `finished` is set: `on_loaded(index in jobs)` after each job is loaded.

    Progress goes to the log, not to ComfyUI's ProgressBar: the server's progress hook, called from this thread, would
    show the steps on whichever node runs then (it finds the node in the caller's execution context, or takes the
    last one started) and would take the user's cancel for itself (it raises ComfyUI's interrupt and clears it)."""

    def __init__(self, jobs: list[tuple], workers: int | None = None, on_loaded=None):
        self.total = len(jobs)
        self.done = 0
        self.built: list[str] = []  # the labels, once every job is loaded
        self.error = ""
        self.finished = threading.Event()
        threading.Thread(target=self._run, args=(jobs, workers, on_loaded), name=COMPILE_THREAD, daemon=True).start()

    def _progress(self, done: int, total: int) -> None:
        self.done = done
        log.info("SVI kernels: %d/%d built in the background", done, total)

    def _run(self, jobs: list[tuple], workers: int | None, on_loaded) -> None:
        start = time.perf_counter()
        try:
            labels = [built.label for built in compile_all(jobs, self._progress, workers, on_loaded)]
            self.built = labels
            log.info("SVI kernels: %d kernels ready after %.1f s in the background", len(labels), time.perf_counter() - start)
        except Exception as error:  # kept for the report; the caller's kernels stay off
            self.error = f"{type(error).__name__}: {str(error)[:300]}"
            log.warning("SVI kernels: the background compile failed, ComfyUI's ops keep running: %s", self.error,
                        exc_info=True)
        finally:
            self.finished.set()


def _serve_jobs(root: str, package: str):
    """Worker main: imports the pack as `package`, builds each job read from stdin, answers one line per job."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(package, Path(root) / "__init__.py", submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)
    for line in sys.stdin:
        try:
            builder, args = pickle.loads(base64.b64decode(line))
            builder(*args)
            print(f"{REPLY}ok", flush=True)
        except Exception as error:  # reported back; the caller rebuilds the job itself and raises there
            print(f"{REPLY}error {type(error).__name__}: {error}".replace("\n", " "), flush=True)


def _lower_priority() -> None:
    """A background compile shares the CPU with ComfyUI's sampling thread, which launches the GPU's work: at a lower
    priority the workers take only the cores that thread leaves (Unix; elsewhere they run at the caller's)."""
    if hasattr(os, "nice"):
        try:
            os.nice(WORKER_NICENESS)
        except OSError:
            pass


if __name__ == "__main__":
    _lower_priority()
    _serve_jobs(sys.argv[1], sys.argv[2])
