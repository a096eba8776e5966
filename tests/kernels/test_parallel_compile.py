"""Kernels compiled in worker processes end up in this process's cache, with a progress step per kernel."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: TileLang needs it to compile CUDA kernels")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    from svi_infinity.kernels import dispatch

    monkeypatch.setenv("TILELANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_compiled", {})
    return dispatch


def _jobs():
    from svi_infinity.kernels.rmsnorm import rms_norm_kernel

    return [(f"RMSNorm {rows}", rms_norm_kernel, (rows, 256, torch.bfloat16, 1e-6)) for rows in (16, 24, 40)]


def test_workers_compile_and_this_process_loads_every_kernel(fresh_cache, tmp_path):
    from svi_infinity.kernels.parallel_compile import compile_all

    steps = []
    built = compile_all(_jobs(), progress=lambda done, total: steps.append((done, total)), workers=2)
    assert sorted(b.label for b in built) == ["RMSNorm 16", "RMSNorm 24", "RMSNorm 40"]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    workers = {b.worker for b in built}
    assert None not in workers and os.getpid() not in workers and len(workers) <= 2  # built by the worker processes
    assert all(("rms_norm", rows, 256, torch.bfloat16, 1e-6) in fresh_cache._compiled for rows in (16, 24, 40))
    assert any(tmp_path.rglob("*.cubin"))  # through TileLang's disk cache


def test_without_workers_everything_is_built_here(fresh_cache, monkeypatch):
    from svi_infinity.kernels.parallel_compile import compile_all

    monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # no interpreter to start a worker with
    steps = []
    built = compile_all(_jobs()[:2], progress=lambda done, total: steps.append((done, total)), workers=2)
    assert [b.worker for b in built] == [None, None] and steps == [(1, 2), (2, 2)]
    assert ("rms_norm", 16, 256, torch.bfloat16, 1e-6) in fresh_cache._compiled


def test_a_background_compile_loads_every_kernel_then_says_so(fresh_cache):
    from svi_infinity.kernels.parallel_compile import BackgroundCompile

    loaded = []
    background = BackgroundCompile(_jobs()[:2], workers=1, on_loaded=lambda index: loaded.append(set(fresh_cache._compiled)))
    assert background.finished.wait(timeout=120)
    assert (background.error, background.done, background.total) == ("", 2, 2)
    assert background.built == ["RMSNorm 16", "RMSNorm 24"]
    assert {("rms_norm", rows, 256, torch.bfloat16, 1e-6) for rows in (16, 24)} <= loaded[-1]  # loaded before finished


def test_kernels_built_before_are_loaded_here_without_starting_a_worker(fresh_cache, monkeypatch):
    """A warm install: what this pack built into the disk cache before (same kernel sources, same TileLang) loads in
    this process at once; no worker process (seconds to start) is started for it."""
    from svi_infinity.kernels import parallel_compile

    jobs = _jobs()[:2]
    assert {b.worker for b in parallel_compile.compile_all(jobs, workers=2)} != {None}  # the first time: workers
    monkeypatch.setattr(fresh_cache, "_compiled", {})  # as a new process starts
    monkeypatch.setattr(parallel_compile, "_Worker", lambda *args: pytest.fail("a worker was started"))
    loaded = []
    built = parallel_compile.compile_all(jobs, workers=2, on_loaded=loaded.append)
    assert [b.worker for b in built] == [None, None] and loaded == [0, 1]
    assert {("rms_norm", rows, 256, torch.bfloat16, 1e-6) for rows in (16, 24)} <= set(fresh_cache._compiled)


def test_a_changed_kernel_source_sends_the_jobs_to_the_workers_again(fresh_cache, monkeypatch):
    from svi_infinity.kernels import parallel_compile

    jobs = _jobs()[1:]
    parallel_compile.compile_all(jobs, workers=2)
    monkeypatch.setattr(fresh_cache, "_compiled", {})
    monkeypatch.setattr(parallel_compile.BuiltIndex, "_namespace", staticmethod(lambda sources: "edited kernels"))
    assert None not in {b.worker for b in parallel_compile.compile_all(jobs, workers=2)}


def test_the_index_namespace_follows_the_kernel_sources(tmp_path):
    from svi_infinity.kernels import parallel_compile

    for source in Path(parallel_compile.__file__).parent.glob("*.py"):
        shutil.copy(source, tmp_path)
    before = parallel_compile.BuiltIndex._namespace(tmp_path)
    assert parallel_compile.BuiltIndex._namespace(tmp_path) == before
    rmsnorm = tmp_path / "rmsnorm.py"
    rmsnorm.write_text(rmsnorm.read_text() + "\n# an edited kernel\n")
    assert parallel_compile.BuiltIndex._namespace(tmp_path) != before


def test_a_job_no_worker_can_import_is_built_here(fresh_cache):
    """A builder that is not importable by reference (here a local function) cannot go to a worker process; it is built
    in this process instead of being lost."""
    from svi_infinity.kernels.parallel_compile import compile_all

    calls = []

    def local_builder(name):
        calls.append(name)

    built = compile_all([("first", local_builder, ("first",)), ("second", local_builder, ("second",))], workers=2)
    assert sorted(b.label for b in built) == ["first", "second"] and {b.worker for b in built} == {None}
    assert sorted(calls) == ["first", "second"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_job_whose_worker_thread_died_is_built_here(fresh_cache, monkeypatch):
    """A worker thread that dies between taking a job and answering (here: every one) loses no kernel."""
    from svi_infinity.kernels import parallel_compile

    def die(worker, job):
        raise RuntimeError("the worker's pipe broke in an unexpected way")

    monkeypatch.setattr(parallel_compile._Worker, "_build", die)
    built = parallel_compile.compile_all(_jobs()[:2], workers=2)
    assert sorted(b.label for b in built) == ["RMSNorm 16", "RMSNorm 24"] and {b.worker for b in built} == {None}
    assert {("rms_norm", rows, 256, torch.bfloat16, 1e-6) for rows in (16, 24)} <= set(fresh_cache._compiled)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="process priorities are a Unix feature")
def test_workers_run_at_a_lower_cpu_priority_than_the_caller():
    """A worker (and the nvcc it starts) yields the CPU to the process that samples while the kernels compile."""
    import queue
    import time

    from svi_infinity.kernels import parallel_compile

    worker = parallel_compile._Worker(queue.Queue(), queue.Queue())  # no jobs: the worker ends once its stdin closes
    deadline = time.monotonic() + 30
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    seen = mine
    while worker.process.poll() is None and time.monotonic() < deadline:
        try:
            seen = os.getpriority(os.PRIO_PROCESS, worker.process.pid)
        except ProcessLookupError:
            break
        if seen != mine:
            break
        time.sleep(0.01)
    worker.thread.join(timeout=30)
    assert seen == min(mine + parallel_compile.WORKER_NICENESS, 19)
