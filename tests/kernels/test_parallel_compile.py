"""Kernels compiled in worker processes end up in this process's cache, with a progress step per kernel."""

import os
import shutil
import sys

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
    background = BackgroundCompile(_jobs()[:2], workers=1, on_success=lambda: loaded.append(set(fresh_cache._compiled)))
    assert background.finished.wait(timeout=120)
    assert (background.error, background.done, background.total) == ("", 2, 2)
    assert background.built == ["RMSNorm 16", "RMSNorm 24"]
    assert {("rms_norm", rows, 256, torch.bfloat16, 1e-6) for rows in (16, 24)} <= loaded[0]  # loaded before success
