"""Harness for the glue tests: the model calls ComfyUI's sampler makes, recorded on real tiny models.

`RecordModelCalls` is a test-only node that clones the MODEL it gets and sets ComfyUI's own
`model_function_wrapper` on the clone, so every call the sampler makes into the diffusion model (the
sigma, the noisy input, `c_concat` / `c_crossattn` as ComfyUI built them, the denoised output) is
recorded with the name of the expert that ran it. `CaptureLatent` is an output node that keeps a
LATENT. Both are registered for one test only, and every recorder node carries a fresh token so
ComfyUI's cache never serves a graph from an earlier test.
"""

import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models
from svi_infinity.svi.run_store import RunStore


@dataclass
class ModelCall:
    expert: str
    sigma: float
    x: torch.Tensor  # the noisy latent the sampler hands the model (model space)
    c_concat: torch.Tensor | None  # [B, 4 mask + 16 latent, T, h, w], after ComfyUI's process_latent_in
    c_crossattn: torch.Tensor | None
    clip_fea: torch.Tensor | None  # Wan 2.1's CLIP-vision tokens
    denoised: torch.Tensor


@dataclass
class Recorder:
    token: str
    calls: list[ModelCall] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # expert name -> the recording ModelPatcher clone
    latents: dict = field(default_factory=dict)  # CaptureLatent key -> samples

    def experts_and_sigmas(self) -> list[tuple[str, float]]:
        return [(call.expert, round(call.sigma, 4)) for call in self.calls]


_ACTIVE: list[Recorder] = []


def _tensor(value):
    return value.detach().float().cpu().clone() if isinstance(value, torch.Tensor) else None


class RecordModelCalls:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "expert": ("STRING", {"default": "high"}), "token": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "record"
    CATEGORY = "SVI/testing"

    def record(self, model, expert, token):
        recorder = _ACTIVE[-1]
        assert token == recorder.token, "a recorder node from another test ran"
        patched = model.clone()

        def wrapper(apply_model, args):
            out = apply_model(args["input"], args["timestep"], **args["c"])
            c = args["c"]
            recorder.calls.append(ModelCall(expert, float(args["timestep"].flatten()[0]), _tensor(args["input"]),
                                            _tensor(c.get("c_concat")), _tensor(c.get("c_crossattn")), _tensor(c.get("clip_fea")),
                                            _tensor(out)))
            return out

        patched.set_model_unet_function_wrapper(wrapper)
        recorder.models[expert] = patched
        return (patched,)


class CaptureLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "key": ("STRING", {"default": "latent"}), "token": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "SVI/testing"

    def capture(self, samples, key, token):
        _ACTIVE[-1].latents[key] = samples["samples"].detach().float().cpu().clone()
        return {}


@contextmanager
def recording():
    """Registers the two test nodes for the duration of the block and yields a fresh Recorder."""
    import nodes

    active = Recorder(uuid.uuid4().hex)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(nodes.NODE_CLASS_MAPPINGS, "SVITestRecordModelCalls", RecordModelCalls)
        patch.setitem(nodes.NODE_CLASS_MAPPINGS, "SVITestCaptureLatent", CaptureLatent)
        _ACTIVE.append(active)
        try:
            yield active
        finally:
            _ACTIVE.remove(active)


@pytest.fixture
def recorder(comfy_runtime):
    with recording() as active:
        yield active


def comfy_node(class_type: str):
    """A node class as ComfyUI registered it (its own nodes, called directly as the independent side of a check)."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[class_type]


def record_experts(prompt: dict, recorder: Recorder, consumer_classes=("SVILongVideo", "SVITurboSampler")) -> dict:
    """Routes the MODEL inputs of every sampling node through a recorder node named after the expert."""
    wrapped = {}
    for node in list(prompt.values()):
        if node["class_type"] not in consumer_classes:
            continue
        for name, expert in (("model", "high"), ("model_low_noise", "low")):
            source = node["inputs"].get(name)
            if source is None:
                continue
            key = (tuple(source), expert)
            if key not in wrapped:
                node_id = f"rec_{expert}_{len(wrapped)}"
                prompt[node_id] = {"class_type": "SVITestRecordModelCalls",
                                   "inputs": {"model": source, "expert": expert, "token": recorder.token}}
                wrapped[key] = [node_id, 0]
            node["inputs"][name] = wrapped[key]
    return prompt


def long_video_prompt(runtime, recorder: Recorder | None = None, *, workflow="svi_wan22_turbo_long_12clips", prefix,
                      num_clips=2, length=9, size=32, **inputs) -> tuple[dict, dict]:
    """The shipped long-video workflow on the tiny models; returns (prompt, the SVI Long Video node's inputs)."""
    prompt = with_tiny_models(load_api_workflow(workflow), runtime.tiny_models, width=size, height=size, length=length,
                              num_clips=num_clips)
    node = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")
    node["inputs"].update({"filename_prefix": prefix, "resume": False, **inputs})
    if recorder is not None:
        record_experts(prompt, recorder)
    return prompt, node["inputs"]


def run_ok(runtime, prompt):
    run = runtime.run_prompt(prompt)
    assert run.success, run.error
    return run


def run_dir_of(runtime, run) -> Path:
    entry = next(out for out in run.outputs.values() if out.get("images") and out["images"][0]["filename"] == "video.mp4")
    return runtime.output_dir / entry["images"][0]["subfolder"]


def saved_latent(run_dir: Path, index: int) -> torch.Tensor:
    """Clip `index`'s final latent as the run folder holds it (VAE space)."""
    return load_file(str(RunStore(run_dir).latent_path(index)))["samples"].float()


def calls_per_clip(recorder: Recorder, num_clips: int) -> list[list[ModelCall]]:
    calls = recorder.calls
    assert len(calls) % num_clips == 0, f"{len(calls)} model calls for {num_clips} clips"
    per_clip = len(calls) // num_clips
    return [calls[k * per_clip:(k + 1) * per_clip] for k in range(num_clips)]


@pytest.fixture(scope="session")
def tiny_vae(comfy_runtime):
    """The tiny Wan 2.1 VAE loaded by ComfyUI's own VAE class, outside any graph."""
    import comfy.sd
    import comfy.utils

    path = comfy_runtime.models_dir / "vae" / comfy_runtime.tiny_models["vae"]
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


@pytest.fixture(scope="session")
def wan21_latent_format(comfy_runtime):
    import comfy.latent_formats

    return comfy.latent_formats.Wan21()


def load_image(path: Path) -> torch.Tensor:
    """An image file as ComfyUI's LoadImage gives it: [1, H, W, 3] float in 0..1."""
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="session")
def glue():
    """The helpers above, for test modules (pytest's importlib mode cannot import a conftest)."""
    return SimpleNamespace(long_video_prompt=long_video_prompt, record_experts=record_experts, run_ok=run_ok,
                           run_dir_of=run_dir_of, saved_latent=saved_latent, calls_per_clip=calls_per_clip,
                           load_image=load_image, recording=recording, comfy_node=comfy_node)
