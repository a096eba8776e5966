"""The worker processes of a sequence-parallel group: started once, kept across prompts, stopped without leftovers.

Process model. ComfyUI's server process is rank 0: it holds the MODEL and the VAE as ComfyUI loaded them, runs the
sampler, the run store and every node as on one GPU, and uses its own GPU for its share of each forward. Ranks
1..degree-1 are plain Python processes on the other GPUs (or CPU processes with gloo, for tests) started with
`subprocess` (not multiprocessing's spawn, which would re-run ComfyUI's main.py in each child). Each imports
ComfyUI's model code from the same folder and gets the weights from rank 0 over the group itself (broadcasts), with
the LoRAs already merged by ComfyUI's own patcher, so a worker needs no model files, folders or LoRA loading.

Transport. Commands (small headers: which op, shapes, plain values) go through the group's TCPStore, so an idle
worker waits on the store rather than inside a collective (an idle NCCL collective would hit the watchdog's
timeout); tensors go through torch.distributed broadcasts and gathers (NCCL on GPUs, gloo on CPUs).

Failure. A monitor thread in the server watches every worker; when one exits, the group is aborted (NCCL) or the
pending gloo collective fails on the closed connection, the prompt ends with an error naming the rank and its last
log lines, the other workers are stopped and the next use starts a fresh group. Workers exit by themselves when the
server process is gone (they poll their parent), so a killed server leaves no GPU memory held.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

WORKER_ENV = "SVI_PARALLEL_WORKER"
# The H200 hosts require NVLink multicast off; every rank's environment carries these.
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
STORE_WAIT = datetime.timedelta(hours=1)
DTYPES = {str(t): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                              torch.uint8, torch.int8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)}


class ParallelWorkerError(RuntimeError):
    """A worker of the group failed or exited; the group is stopped and the next use starts a new one."""


def tensor_meta(tensor: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name): how a header describes a tensor (plain data: the workers import the pack under another
    name, so headers carry no pack classes)."""
    return tuple(tensor.shape), str(tensor.dtype)


def empty_like_meta(meta: tuple[tuple[int, ...], str], device) -> torch.Tensor:
    shape, dtype = meta
    return torch.empty(shape, dtype=DTYPES[dtype], device=device)


def broadcast_tensor(tensor: torch.Tensor, device) -> None:
    """Rank 0's `tensor` into every rank's tensor of the same shape (in place), through `device` (NCCL: a GPU)."""
    if tensor.device == torch.device(device):
        dist.broadcast(tensor, src=0)
        return
    staged = tensor.to(device)
    dist.broadcast(staged, src=0)
    if dist.get_rank() != 0:
        tensor.copy_(staged)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class WorkerGroup:
    """Ranks 1..degree-1 as child processes of this (the server) process, which is rank 0."""

    def __init__(self, degree: int, *, cuda: bool):
        self.degree = degree
        self.backend = "nccl" if cuda else "gloo"
        self.cuda = cuda
        self.device = torch.device("cpu")
        self.processes: list[subprocess.Popen] = []
        self.log_dir: Path | None = None
        self.store = None
        self.sequence = 0
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.store is not None and self.failure is None

    def worker_devices(self) -> list[str]:
        """CUDA_VISIBLE_DEVICES entries for ranks 1.. : the visible devices other than this process's own."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else [str(i) for i in range(torch.cuda.device_count())]
        own = self.device.index or 0
        return [ids[i] for i in range(len(ids)) if i != own][: self.degree - 1]

    def describe(self) -> list[str]:
        lines = [f"rank 0: this ComfyUI process (pid {os.getpid()}) on {self.device}"]
        devices = self.worker_devices() if self.cuda else ["cpu"] * (self.degree - 1)
        for rank, (process, device) in enumerate(zip(self.processes, devices), start=1):
            where = f"GPU {device}" if self.cuda else "the CPU"
            lines.append(f"rank {rank}: worker pid {process.pid} on {where}")
        return lines

    def start(self) -> None:
        import comfy.model_management

        if self.cuda:
            self.device = comfy.model_management.get_torch_device()
            torch.cuda.set_device(self.device)
            os.environ.update(NVLINK_MULTICAST_OFF)
            os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"  # raise in this thread; never tear down the server
        if dist.is_initialized():
            raise ParallelWorkerError("torch.distributed is already initialised in this process by something else")
        self.store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False, timeout=STORE_WAIT)
        self.log_dir = Path(tempfile.mkdtemp(prefix="svi-parallel-"))
        comfy_dir = Path(comfy.model_management.__file__).resolve().parent.parent
        pack_root = Path(__file__).resolve().parent.parent
        devices = self.worker_devices() if self.cuda else [None] * (self.degree - 1)
        if len(devices) < self.degree - 1:
            raise ParallelWorkerError(f"degree {self.degree} needs {self.degree} GPUs; this process sees {len(devices) + 1}")
        try:
            for rank, device in enumerate(devices, start=1):
                self.processes.append(self._spawn(rank, device, comfy_dir, pack_root))
            self._wait_ready()
            dist.init_process_group(self.backend, store=dist.PrefixStore("group", self.store), rank=0,
                                    world_size=self.degree, timeout=COLLECTIVE_TIMEOUT)
        except BaseException:
            self._kill()
            self.store = None
            shutil.rmtree(self.log_dir, ignore_errors=True)
            raise
        self._monitor = threading.Thread(target=self._watch, name="svi-parallel-monitor", daemon=True)
        self._monitor.start()
        log.info("SVI sequence parallel: %s", "; ".join(self.describe()))

    def _spawn(self, rank: int, device: str | None, comfy_dir: Path, pack_root: Path) -> subprocess.Popen:
        env = {**os.environ, **NVLINK_MULTICAST_OFF, WORKER_ENV: json.dumps({
            "rank": rank, "degree": self.degree, "backend": self.backend, "port": self.store.port,
            "parent": os.getpid(), "comfy_dir": str(comfy_dir), "pack_root": str(pack_root)})}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        out = open(self.log_dir / f"rank{rank}.log", "wb")
        try:
            return subprocess.Popen([sys.executable, str(Path(__file__).with_name("parallel_worker_entry.py"))],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(range(1, self.degree))
        while waiting:
            self._raise_if_a_worker_exited()
            waiting = {rank for rank in waiting if not self.store.check([f"ready/{rank}"])}
            if time.monotonic() > deadline:
                tails = "\n".join(f"rank {rank}: {_log_tail(self.log_dir / f'rank{rank}.log', 5)}" for rank in sorted(waiting))
                raise ParallelWorkerError(f"workers {sorted(waiting)} did not start within {START_TIMEOUT_S:.0f} s:\n{tails}")
            time.sleep(0.05)

    def _exit_report(self, rank: int, process: subprocess.Popen) -> str:
        error = self.store.get(f"error/{rank}").decode() if self.store is not None and self.store.check([f"error/{rank}"]) else ""
        tail = error or _log_tail(self.log_dir / f"rank{rank}.log")
        return f"worker rank {rank} (pid {process.pid}) exited with code {process.returncode}" + (f":\n{tail}" if tail else "")

    def _raise_if_a_worker_exited(self) -> None:
        for rank, process in enumerate(self.processes, start=1):
            if process.poll() is not None:
                raise ParallelWorkerError(self._exit_report(rank, process))

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for rank, process in enumerate(self.processes, start=1):
                if process.poll() is not None and not self._stopping.is_set():
                    self.failure = self._exit_report(rank, process)
                    log.error("SVI sequence parallel: %s", self.failure)
                    if self.backend == "nccl":  # a collective waiting for the dead rank returns with an error
                        dist.distributed_c10d._abort_process_group()
                    return

    def send(self, op: str, plain: dict | None = None, tensors: dict[str, torch.Tensor | None] | None = None) -> None:
        """Rank 0: one command to every worker (header through the store, tensors by broadcast)."""
        tensors = {name: t for name, t in (tensors or {}).items() if t is not None}
        header = {"op": op, "plain": plain or {}, "tensors": {name: tensor_meta(t) for name, t in tensors.items()}}
        self.store.set(f"cmd/{self.sequence}", pickle.dumps(header))
        self.sequence += 1
        for name in sorted(tensors):
            broadcast_tensor(tensors[name].contiguous(), self.device)

    @contextmanager
    def collective(self):
        """Wraps rank 0's part of a command: any error (a dead worker, OOM, an interrupt mid-way) leaves the ranks out
        of step, so the group is stopped and the error says why; the next use starts a new group. ComfyUI checks for
        an interrupt in every op, so a stop pressed between steps is raised here, before the workers are involved,
        and the group stays up; one that lands inside a forward stops the group like any other error."""
        import comfy.model_management

        if self.failure is not None:
            raise ParallelWorkerError(self._failed_message())
        comfy.model_management.throw_exception_if_processing_interrupted()
        try:
            yield
        except BaseException as error:
            time.sleep(0.5)  # let the monitor see a worker that died in the collective that failed here
            message = self._failed_message() if self.failure else None
            self.stop(graceful=False)
            if message:
                raise ParallelWorkerError(message) from error
            raise

    def _failed_message(self) -> str:
        return (f"the sequence-parallel group stopped: {self.failure}\nThe group was shut down; the next prompt "
                "starts it again.")

    def stop(self, *, graceful: bool = True, timeout_s: float = 20.0) -> None:
        """Ends every worker (asked to exit, then terminated, then killed) and this process's side of the group."""
        if self.store is None:
            return
        self._stopping.set()
        if graceful and self.failure is None:
            try:
                self.send("stop")
            except Exception:  # a broken store: the workers are terminated below
                log.exception("SVI sequence parallel: could not ask the workers to stop")
        self._kill(timeout_s if graceful else 2.0)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # an aborted NCCL group may refuse a second teardown; it is gone either way
                log.exception("SVI sequence parallel: destroying the process group")
        self.store = None
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=2)
        shutil.rmtree(self.log_dir, ignore_errors=True)  # a failure's log lines are in its error message

    def _kill(self, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _watch_parent(parent: int) -> None:
    """A worker ends itself when the server process is gone, even while blocked in a collective."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def _bootstrap_comfyui(comfy_dir: str, cpu: bool) -> None:
    """ComfyUI's model modules in this worker, configured like the server's (CPU or the one visible GPU)."""
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.options  # noqa: F401  (keeps ComfyUI's argv parsing off)
    from comfy.cli_args import args

    args.cpu = cpu
    import comfy.model_management  # noqa: F401


def worker_main(handlers_module) -> None:
    """A worker's life: join the group, then run commands until 'stop' (or until the server is gone)."""
    config = json.loads(os.environ[WORKER_ENV])
    rank = config["rank"]
    threading.Thread(target=_watch_parent, args=(config["parent"],), daemon=True).start()
    cuda = config["backend"] == "nccl"
    _bootstrap_comfyui(config["comfy_dir"], cpu=not cuda)
    if cuda:
        torch.cuda.set_device(0)
    else:  # CPU ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config["degree"]))
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    store = dist.TCPStore(HOST, config["port"], is_master=False, timeout=STORE_WAIT)
    store.set(f"ready/{rank}", "1")
    dist.init_process_group(config["backend"], store=dist.PrefixStore("group", store), rank=rank,
                            world_size=config["degree"], timeout=COLLECTIVE_TIMEOUT)
    state = handlers_module.WorkerState(rank=rank, degree=config["degree"], device=device)
    sequence = 0
    try:
        while True:
            header = _next_command(store, sequence)
            sequence += 1
            if header["op"] == "stop":
                break
            tensors = {}
            for name in sorted(header["tensors"]):
                tensors[name] = empty_like_meta(header["tensors"][name], device)
                dist.broadcast(tensors[name], src=0)
            with torch.inference_mode():
                handlers_module.HANDLERS[header["op"]](state, header["plain"], tensors)
    except BaseException as error:
        import traceback

        store.set(f"error/{rank}", f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}")
        raise
    dist.destroy_process_group()


def _next_command(store, sequence: int) -> dict:
    while True:
        try:
            return pickle.loads(store.get(f"cmd/{sequence}"))
        except dist.DistStoreError:  # an hour without a command: keep waiting (the parent watch ends an orphan)
            continue


_GROUP_LOCK = threading.Lock()
_ACTIVE: list[WorkerGroup] = []


def stop_all() -> None:
    """Stops every group this process started (at exit, and before a group of another degree starts)."""
    with _GROUP_LOCK:
        while _ACTIVE:
            _ACTIVE.pop().stop()


def register(group: WorkerGroup) -> None:
    with _GROUP_LOCK:
        _ACTIVE.append(group)


atexit.register(stop_all)
