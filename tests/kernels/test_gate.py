"""The kernel gate: TileLang kernels run only on Hopper (compute capability exactly 9.0) with a compile that works.
Every other GPU, and a Hopper without a compiler, keeps ComfyUI's path and says why. The decision is fed the
capability and the compile probe's answer, so each GPU is tested here without faking CUDA."""

import pytest

from svi_infinity.kernels import dispatch

OTHER_GPUS = [(8, 9), (10, 0), (12, 0)]  # Ada (RTX 4090), Blackwell datacentre (B200), Blackwell consumer (RTX 5090)
NO_COMPILER = "TileLang cannot compile kernels here: RuntimeError: nvcc not found"


class Probe:
    """A compile probe with a fixed answer that counts how often it was asked."""

    def __init__(self, answer: str):
        self.answer, self.calls = answer, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.answer


@pytest.mark.parametrize("capability", OTHER_GPUS, ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_no_other_gpu_gets_the_kernels_and_none_compiles_anything(capability):
    probe = Probe("")
    reason = dispatch.tilelang_gate(capability, probe)
    assert reason.startswith(f"compute capability {capability[0]}.{capability[1]}:") and "Hopper" in reason
    assert probe.calls == 0


def test_hopper_with_a_working_compile_gets_the_kernels():
    probe = Probe("")
    assert dispatch.tilelang_gate((9, 0), probe) == ""
    assert probe.calls == 1


def test_hopper_without_a_compiler_keeps_comfyuis_path_and_says_why():
    assert dispatch.tilelang_gate((9, 0), Probe(NO_COMPILER)) == NO_COMPILER


def test_no_cuda_device():
    probe = Probe("")
    assert dispatch.tilelang_gate(None, probe).startswith("no CUDA device")
    assert probe.calls == 0


def test_the_device_gate_asks_this_machines_capability_and_probe(monkeypatch):
    """kernel_gate (what the ops, the kernel node and the fast VAE ask) is tilelang_gate with the device's capability
    and the machine's compile probe."""
    probe = Probe(NO_COMPILER)
    monkeypatch.setattr(dispatch, "compile_problem", probe)
    monkeypatch.setattr(dispatch, "capability_of", lambda device: {"cuda:0": (9, 0), "cuda:1": (12, 0)}.get(str(device)))
    assert dispatch.kernel_gate("cuda:0") == NO_COMPILER and probe.calls == 1
    assert dispatch.kernel_gate("cuda:1").startswith("compute capability 12.0") and probe.calls == 1
    assert dispatch.kernel_gate("cpu").startswith("no CUDA device")
    assert dispatch.capability_of("cpu") is None
