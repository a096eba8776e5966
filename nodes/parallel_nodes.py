"""The node that runs one clip across the GPUs of this host (pipeline/sequence_parallel.py does the work)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pipeline.clips import SVIInputError
from ..pipeline.sequence_parallel import DEFAULT_VAE_HALO, model_problem, parallel_model, parallel_vae, runtime_for
from ..pipeline.parallel_workers import stop_all
from ..svi.sequence_split import ulysses_all_to_all

MAX_DEGREE = 8


def _devices() -> int | None:
    """GPUs this ComfyUI process can use, or None when it runs on the CPU (ranks are then CPU processes)."""
    import comfy.model_management

    if comfy.model_management.get_torch_device().type != "cuda":
        return None
    return torch.cuda.device_count()


class SVISequenceParallel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVISequenceParallel", display_name="SVI Sequence Parallel (multi-GPU)", category="SVI/speed",
            description="Runs every sampling step of a clip on several GPUs of this machine at once (Ulysses sequence "
                        "parallelism: each GPU takes a share of the video tokens, attention exchanges heads), and the VAE "
                        "decode and encode on bands of rows across the same GPUs. This ComfyUI process is rank 0; the "
                        "other ranks are worker processes started once and kept across prompts. The inputs stay as "
                        "they are; SVI Long Video, SVI Turbo Sampler and ComfyUI's samplers use the outputs unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="Wan 2.1 I2V, or the Wan 2.2 high-noise expert, with its LoRAs applied."),
                io.Int.Input("degree", default=2, min=1, max=MAX_DEGREE,
                             tooltip="GPUs per clip. Must divide the model's attention heads (Wan 14B: 40 heads, so 2, 4, "
                                     "5 or 8). 1 stops the workers and passes everything through."),
                io.Model.Input("model_low_noise", optional=True,
                               tooltip="Wan 2.2 A14B: the low-noise expert; both experts stay resident on every GPU."),
                io.Vae.Input("vae", optional=True, tooltip="The Wan 2.1 VAE: comes out decoding and encoding across the GPUs."),
                io.Int.Input("vae_halo", default=DEFAULT_VAE_HALO, min=0, max=256, optional=True,
                             tooltip="Latent rows each GPU's band of the VAE overlaps its neighbours by (12 = 96 pixels: one GPU's result up to rounding): "
                                     "larger is closer to a single decode, smaller is faster."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Model.Output(display_name="model_low_noise"),
                     io.Vae.Output(display_name="vae"), io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, degree):
        devices = _devices()
        if degree is not None and devices is not None and degree > devices:
            return f"degree {degree} needs {degree} GPUs; this ComfyUI process sees {devices}"
        return True

    @classmethod
    def execute(cls, model, degree, model_low_noise=None, vae=None, vae_halo=DEFAULT_VAE_HALO) -> io.NodeOutput:
        if degree == 1:
            stop_all()
            lines = ["degree 1: one GPU, nothing changed (any running workers were stopped)"]
            return io.NodeOutput(model, model_low_noise, vae, "\n".join(lines), ui={"text": lines})
        try:
            ulysses_all_to_all()
        except ImportError as error:
            raise SVIInputError(str(error)) from error
        devices = _devices()
        for role, patcher in (("model", model), ("model_low_noise", model_low_noise)):
            problem = model_problem(patcher, degree, devices) if patcher is not None else ""
            if problem:
                raise SVIInputError(f"{role}: {problem}")
        runtime = runtime_for(degree, cuda=devices is not None)
        runtime.ensure()
        lines = runtime.describe()
        outputs = [parallel_model(patcher, runtime) if patcher is not None else None for patcher in (model, model_low_noise)]
        if vae is not None:
            lines.append(f"VAE: bands of rows across the {degree} ranks, {vae_halo} latent rows of halo")
        return io.NodeOutput(*outputs, None if vae is None else parallel_vae(vae, runtime, vae_halo), "\n".join(lines),
                             ui={"text": lines})


PARALLEL_NODES = [SVISequenceParallel]
