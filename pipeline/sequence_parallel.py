"""One clip across the GPUs of one host: Ulysses sequence parallelism in ComfyUI's Wan and a banded parallel VAE.

DiT. Every rank runs the same forward as ComfyUI's `WanModel._forward` / `forward_orig`, except that after the patch
embedding each rank keeps only its shard of the video tokens (and the matching rows of the RoPE table): every GEMM,
norm, modulation, RoPE and the cross-attention (each rank's queries against the whole text / image context) run on
1/degree of the tokens. Self-attention is the one place that needs the whole sequence: yunchang's all-to-all gives
each rank every token for degree-th of the heads, attention runs on them through whatever backend the model already
uses (ComfyUI's, or the SVI Fast Kernels' router), and a second all-to-all sends the tokens back. The head runs on the
shards, and rank 0 gathers the output tokens once per forward (one per sampling step at CFG 1). Padding tokens make
the shards equal and are dropped before attention, so the result equals one GPU's up to rounding.

The hooks live on a ModelPatcher clone: a DIFFUSION_MODEL wrapper (ComfyUI calls it around `_forward` during
sampling) and one object patch per block that marks the self-attention call for the attention override. Any sampler
(SVI Turbo Sampler, SVI Long Video, ComfyUI's own) runs through it unchanged on rank 0, which tells the workers what to
compute each step. Workers get the weights with every LoRA merged by ComfyUI's patcher, and, when SVI Fast Kernels
patched the model before this node, its settings, so each worker patches its own copy the same way.

VAE. Wan's VAE is causal in time with a per-layer feature cache, so a split in time would change the frames after
each cut. The split is spatial instead: each rank decodes (encodes) every frame of a band of rows along the longer
side, widened by a halo of rows on both sides, in time order with its own causal cache, so time stays exact; the
halo is cut off and rank 0 joins the bands. Its convolutions and channel RMSNorms are local; the one global step, the
middle attention block over each whole frame at latent resolution, gets the whole frame: every rank all-gathers the
ranks' own rows of its input and runs the block on the whole frame (cheap at latent resolution), keeping its band's
rows. What is left is the convolutions' reach past the halo: it shrinks geometrically with the halo (and grows slowly
with the frames, through the causal time cache); at 12 latent rows (96 pixels) Wan 2.1's VAE layout decodes 8 latent
frames within 4e-7 (relative L2, float32), the rounding floor that a whole-frame halo also gives
(tests/pipeline/test_sequence_parallel.py). A smaller halo is faster and approximate at the band edges.
"""

from __future__ import annotations

import copy
import logging
import types
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..svi.sequence_split import (Band, TokenShards, all_gather_rows, banded, degree_problem, row_bands,
                                  ulysses_attention)
from .parallel_workers import (ParallelWorkerError, WorkerGroup, broadcast_tensor, empty_like_meta, register, stop_all,
                               tensor_meta)

log = logging.getLogger(__name__)

SELF_ATTENTION = "svi_sequence_parallel_self_attention"  # set by the marked self-attention forward
SHARDS = "svi_sequence_parallel_shards"  # set by the parallel forward
WRAPPER_KEY = "svi_sequence_parallel"
MODELS_KEPT = 2  # Wan 2.2 A14B's two experts stay resident on every worker
DEFAULT_VAE_HALO = 12  # latent rows on each side of a band (96 pixels): a single decode's result up to rounding


class SequenceParallelError(ValueError):
    """A model or call the parallel forward cannot take; the message says what and why."""


def _plain_wan(wan) -> str:
    from comfy.ldm.wan.model import WanAttentionBlock, WanModel

    if type(wan) is not WanModel:
        return f"{type(wan).__name__} is not ComfyUI's plain WanModel (Wan 2.1 / 2.2 I2V and T2V are)"
    if wan.ref_conv is not None:
        return "models with a reference-image convolution are not supported"
    if any(type(block) is not WanAttentionBlock for block in wan.blocks):
        return "the model's blocks are not ComfyUI's WanAttentionBlock"
    return ""


def model_problem(model_patcher, degree: int, devices: int | None) -> str:
    """'' when `degree` ranks can run this MODEL, else why not."""
    wan = getattr(model_patcher.model, "diffusion_model", None)
    problem = _plain_wan(wan) if wan is not None else "not a diffusion model"
    return problem or degree_problem(wan.num_heads, degree, devices)


def call_problem(timestep, time_dim_concat, transformer_options: dict, kwargs: dict) -> str:
    """'' when a forward call uses only what the workers can reproduce, else what it uses."""
    if timestep.ndim != 1:
        return "per-token timesteps (Wan 2.2 TI2V 5B) are not supported"
    if time_dim_concat is not None:
        return "time_dim_concat conditioning is not supported"
    extra = sorted(name for name, value in kwargs.items() if value is not None)
    if extra:
        return f"conditioning inputs {extra} are not supported"
    for name in ("patches", "patches_replace"):
        if any(transformer_options.get(name, {}).values()):
            return f"model {name} ({sorted(transformer_options[name])}) from other nodes cannot run on the workers"
    return ""


def mark_self_attention(forward):
    """A self-attention forward whose attention call carries the mark the Ulysses override looks for."""

    def marked(x, freqs, transformer_options={}):
        return forward(x, freqs, transformer_options={**transformer_options, SELF_ATTENTION: True})

    marked.svi_sequence_parallel = True
    return marked


def marks_problem(model_patcher) -> str:
    """'' when every block's self-attention still carries the mark (a node applied after this one may have replaced
    it, and then rank 0 would attend its shard alone while the workers wait for the all-to-all)."""
    for index in range(len(model_patcher.model.diffusion_model.blocks)):
        patch = model_patcher.object_patches.get(f"diffusion_model.blocks.{index}.self_attn.forward")
        if not getattr(patch, "svi_sequence_parallel", False):
            return ("a node after SVI Sequence Parallel replaced the self-attention of block "
                    f"{index}: connect SVI Fast Kernels (or any model patch) before SVI Sequence Parallel")
    return ""


def ulysses_override(previous=None):
    """ComfyUI attention override: marked self-attention calls of a parallel forward go through Ulysses, every other
    call (cross-attention, or a forward that is not parallel) to `previous` or ComfyUI's own attention."""

    def attend_with(func, kwargs):
        def attend(q, k, v, heads, **more):
            if previous is not None:
                return previous(func, q, k, v, heads, **kwargs, **more)
            return func(q, k, v, heads, **kwargs, **more)

        return attend

    def override(func, q, k, v, heads, **kwargs):
        options = kwargs.get("transformer_options") or {}
        sharding = options.get(SHARDS)
        attend = attend_with(func, kwargs)
        if sharding is None or not options.get(SELF_ATTENTION) or kwargs.get("mask") is not None or q.ndim != 3:
            return attend(q, k, v, heads)
        return ulysses_attention(attend, q, k, v, heads, sharding)

    return override


def sequence_parallel_forward(wan, x, timestep, context, clip_fea, transformer_options: dict, *, rank: int, degree: int):
    """`WanModel._forward` on this rank's token shard; rank 0 returns the whole output, the others None."""
    import comfy.ldm.common_dit
    from comfy.ldm.wan.model import sinusoidal_embedding_1d

    bs, _, t, h, w = x.shape
    x = comfy.ldm.common_dit.pad_to_patch_size(x, wan.patch_size)
    freqs = wan.rope_encode(t, h, w, device=x.device, dtype=x.dtype, transformer_options=transformer_options)
    x = wan.patch_embedding(x.float()).to(x.dtype)
    grid_sizes = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    e = wan.time_embedding(sinusoidal_embedding_1d(wan.freq_dim, timestep.flatten()).to(dtype=x[0].dtype))
    e = e.reshape(timestep.shape[0], -1, e.shape[-1])
    e0 = wan.time_projection(e).unflatten(2, (6, wan.dim))
    context = wan.text_embedding(context)
    context_img_len = None
    if clip_fea is not None:
        if wan.img_emb is not None:
            context = torch.concat([wan.img_emb(clip_fea), context], dim=1)
        context_img_len = clip_fea.shape[-2]

    shards = TokenShards(x.shape[1], degree, rank)
    options = {**transformer_options, "grid_sizes": grid_sizes, "total_blocks": len(wan.blocks), "block_type": "double",
               SHARDS: shards, "optimized_attention_override": ulysses_override(transformer_options.get("optimized_attention_override"))}
    x, freqs = shards.local(x), shards.local(freqs)
    for index, block in enumerate(wan.blocks):
        options["block_index"] = index
        x = block(x, e=e0, freqs=freqs, context=context, context_img_len=context_img_len, transformer_options=options)
    x = shards.gather(wan.head(x, e))
    if x is None:
        return None
    return wan.unpatchify(x, grid_sizes)[:, :, :t, :h, :w]


def model_recipe(model_config) -> dict:
    """What a worker needs to build the same (empty) model as rank 0's: ComfyUI's model-config class (by name), its
    unet config and dtypes. Plain data: ComfyUI's model-config objects do not pickle."""
    import comfy.supported_models

    name = type(model_config).__name__
    if getattr(comfy.supported_models, name, None) is not type(model_config):
        raise SequenceParallelError(f"model config {name} is not one of ComfyUI's supported models")
    if vars(model_config).get("custom_operations") is not None:
        raise SequenceParallelError("models loaded with custom operations (e.g. GGUF) cannot be rebuilt on the workers")
    return {"class": name, "unet_config": dict(model_config.unet_config),
            "manual_cast_dtype": vars(model_config).get("manual_cast_dtype"), "optimizations": dict(model_config.optimizations)}


def build_empty_model(recipe: dict):
    """ComfyUI's model of `recipe` on the meta device (no memory), with ComfyUI's own ops and dtype choice."""
    import comfy.supported_models

    unet_config = dict(recipe["unet_config"])
    dtype = unet_config.pop("dtype", None)
    model_config = getattr(comfy.supported_models, recipe["class"])(unet_config)
    model_config.set_inference_dtype(dtype, recipe["manual_cast_dtype"])
    model_config.optimizations = recipe["optimizations"]
    return model_config.get_model({}, "", device="meta")


def effective_weights(model_patcher):
    """(name, tensor) of the diffusion model as it computes now: LoRA and other weight patches merged by ComfyUI's
    own patcher (in place when the model is loaded whole, else computed here the way 'Save Checkpoint' does)."""
    model = model_patcher.model
    for name, value in model.diffusion_model.state_dict().items():
        key = f"diffusion_model.{name}"
        if key in model_patcher.patches and key not in model_patcher.backup:
            value = model_patcher.patch_weight_to_device(key, device_to=model_patcher.load_device, return_weight=True)
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise SequenceParallelError(f"{name} is a {type(value).__name__} (quantized weights are not supported); "
                                        "load the model in fp16/bf16/fp8 without quantization")
        yield name, value.detach()


@dataclass
class WorkerState:
    """What a worker holds between commands: the models and VAEs rank 0 sent, by key."""

    rank: int
    degree: int
    device: torch.device
    models: OrderedDict = field(default_factory=OrderedDict)
    vaes: dict = field(default_factory=dict)


def _load_model(state: WorkerState, plain: dict, tensors: dict) -> None:
    import comfy.utils

    for key in plain["drop"]:
        state.models.pop(key, None)
    base_model = build_empty_model(plain["recipe"])
    wan = base_model.diffusion_model
    for name, *meta in plain["params"]:
        weight = empty_like_meta(meta, state.device)
        broadcast_tensor(weight, state.device)
        # in the dtype ComfyUI built the model for, as rank 0's ops cast a weight stored in another dtype
        comfy.utils.set_attr_param(wan, name, weight.to(comfy.utils.get_attr(wan, name).dtype))
    left = [name for name, p in [*wan.named_parameters(), *wan.named_buffers()] if p.is_meta]
    if left:
        raise SequenceParallelError(f"rank 0 sent no values for {left[:5]}")
    options = {}
    if plain["kernels"] is not None:  # the SVI Fast Kernels node ran on rank 0's model: patch this copy the same way
        options = _accelerated(base_model, state.device, plain["kernels"])
    for block in wan.blocks:
        block.self_attn.forward = mark_self_attention(block.self_attn.forward)
    state.models[plain["key"]] = (wan.eval(), options)


def _accelerated(base_model, device, settings: dict) -> dict:
    """Applies kernels/model_patch.py's patches, with rank 0's settings, to this worker's model for good (the
    worker's model has no other user); returns the transformer options they add (the attention router)."""
    import comfy.model_patcher
    import comfy.utils

    from ..kernels.model_patch import accelerate_model

    patched, report = accelerate_model(comfy.model_patcher.ModelPatcher(base_model, load_device=device, offload_device=device),
                                       **settings)
    for name, value in patched.object_patches.items():
        comfy.utils.set_attr(base_model, name, value)
    log.info("SVI sequence parallel worker kernels: %s", "; ".join(report.lines()))
    return dict(patched.model_options.get("transformer_options", {}))


def _forward(state: WorkerState, plain: dict, tensors: dict) -> None:
    wan, options = state.models[plain["key"]]
    if plain["rope_options"] is not None:
        options = {**options, "rope_options": plain["rope_options"]}
    sequence_parallel_forward(wan, tensors["x"], tensors["timestep"], tensors["context"],
                              tensors.get("clip_fea"), options, rank=state.rank, degree=state.degree)


def _load_vae(state: WorkerState, plain: dict, tensors: dict) -> None:
    import comfy.sd

    state.vaes.clear()
    state.vaes[plain["key"]] = comfy.sd.VAE(sd={name: t.cpu() for name, t in tensors.items()})


@contextmanager
def whole_frame_attention(coder, bands: list[Band], rank: int, axis: int, scale: float):
    """Within the block, each attention block of the VAE's `coder` (its input: this rank's band, rows along `axis`,
    `scale` rows per row of the coder's input) runs on the whole frame gathered from every rank's own rows, and
    returns its band's rows: the same values a single decode computes there."""
    from comfy.ldm.wan.vae import AttentionBlock

    band = bands[rank]
    blocks = [m for m in coder.modules() if isinstance(m, AttentionBlock)]

    def whole_frame(block):
        own_forward = type(block).forward

        def forward(x, *args, **kwargs):
            whole = all_gather_rows(x, axis, bands, rank, scale)
            out = own_forward(block, whole, *args, **kwargs)
            return out.narrow(axis, round(band.start * scale), x.shape[axis])

        return forward

    for block in blocks:
        block.forward = whole_frame(block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def _banded_coder(vae, op: str, plain: dict, bands: list[Band], rank: int, code):
    """`code(band)` (the VAE's decode or encode of one band) with its attention blocks seeing the whole frame."""
    model = getattr(vae, "svi_plain_vae", vae).first_stage_model
    coder = model.decoder if op == "decode" else model.encoder
    feature_axis = plain["in_axis"] if op == "decode" else plain["in_axis"] + 1  # features [B, C, T, H, W]

    def run(band):
        with whole_frame_attention(coder, bands, rank, feature_axis, plain["attention_scale"]):
            return code(band)

    return run


def _vae_bands(state: WorkerState, plain: dict, tensors: dict) -> None:
    from .fast_vae import decode_frames, encode_frames

    vae = state.vaes[plain["key"]]
    bands = [Band(*band) for band in plain["bands"]]
    code = (lambda band: decode_frames(vae, band)) if plain["op"] == "decode" else (lambda band: encode_frames(vae, band))
    banded(_banded_coder(vae, plain["op"], plain, bands, state.rank, code), tensors["input"], in_axis=plain["in_axis"],
           out_axis=plain["out_axis"], scale=plain["scale"], bands=bands, rank=state.rank, device=state.device)


def _peak_memory(state: WorkerState, plain: dict, tensors: dict) -> None:
    gather_peak_memory(state.rank, state.degree, state.device)


def gather_peak_memory(rank: int, degree: int, device) -> list[float] | None:
    """Every rank's peak allocated GPU memory (GiB) since the last call, on rank 0 (0 on CPU ranks)."""
    import torch.distributed as dist

    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    parts = [torch.empty_like(peak) for _ in range(degree)] if rank == 0 else None
    dist.gather(peak, parts, dst=0)
    return [round(part.item(), 2) for part in parts] if parts is not None else None


HANDLERS = {"load_model": _load_model, "forward": _forward, "load_vae": _load_vae, "vae_bands": _vae_bands,
            "peak_memory": _peak_memory}


class ParallelRuntime:
    """Rank 0's side: the worker group of one degree, started on first use and again after a failure, and what the
    workers hold."""

    def __init__(self, degree: int, *, cuda: bool):
        self.degree, self.cuda = degree, cuda
        self.group: WorkerGroup | None = None
        self.models: OrderedDict[str, None] = OrderedDict()
        self.vae_key: str | None = None

    def ensure(self) -> WorkerGroup:
        if self.group is None or not self.group.running:
            if self.group is not None:
                self.group.stop(graceful=False)
            stop_all()  # torch.distributed has one default group per process: a group of another degree ends here
            self.models.clear()
            self.vae_key = None
            self.group = WorkerGroup(self.degree, cuda=self.cuda)
            self.group.start()
            register(self.group)
        return self.group

    def describe(self) -> list[str]:
        backend = "NCCL on GPUs" if self.cuda else "gloo on CPU processes (for testing: no speed-up)"
        lines = [f"degree {self.degree}: Ulysses sequence parallel over {self.degree} ranks, {backend}"]
        return lines + (self.group.describe() if self.group is not None and self.group.running else ["not running"])

    def _sync_model(self, group: WorkerGroup, model_patcher) -> str:
        key = f"{id(model_patcher.model)}:{model_patcher.patches_uuid}"
        if key in self.models:
            self.models.move_to_end(key)
            return key
        drop = list(self.models)[: max(0, len(self.models) + 1 - MODELS_KEPT)]
        for old in drop:
            del self.models[old]
        # Shapes and dtypes as the weights will arrive (a patched weight keeps its parameter's dtype).
        params = [(name, *tensor_meta(t)) for name, t in model_patcher.model.diffusion_model.state_dict().items()]
        from ..kernels.model_patch import SETTINGS_ATTACHMENT

        group.send("load_model", {"key": key, "recipe": model_recipe(model_patcher.model.model_config), "params": params,
                                  "drop": drop, "kernels": model_patcher.get_attachment(SETTINGS_ATTACHMENT)})
        for _, tensor in effective_weights(model_patcher):
            broadcast_tensor(tensor.contiguous(), group.device)
        self.models[key] = None
        return key

    def forward(self, model_patcher, wan, x, timestep, context, clip_fea, transformer_options: dict):
        group = self.ensure()
        with group.collective():
            key = self._sync_model(group, model_patcher)
            group.send("forward", {"key": key, "rope_options": transformer_options.get("rope_options")},
                       {"x": x, "timestep": timestep, "context": context, "clip_fea": clip_fea})
            return sequence_parallel_forward(wan, x, timestep, context, clip_fea, transformer_options, rank=0,
                                             degree=self.degree)

    def _sync_vae(self, group: WorkerGroup, vae) -> str:
        key = str(id(vae.first_stage_model))
        if key != self.vae_key:
            group.send("load_vae", {"key": key}, dict(vae.first_stage_model.state_dict()))
            self.vae_key = key
        return key

    def vae_bands(self, vae, op: str, tensor: torch.Tensor, halo: int) -> torch.Tensor:
        """`vae.decode(samples)` / `vae.encode(pixels)` with each rank on a band of rows (see the module docstring)."""
        if op == "decode":
            ratio = vae.spacial_compression_decode()
            in_axis = -2 if tensor.shape[-2] >= tensor.shape[-1] else -1  # latent [B, C, T, h, w]
            out_axis, scale, align, halo_rows = in_axis - 1, ratio, 1, halo  # frames [B, F, H, W, 3]
        else:
            ratio = vae.spacial_compression_encode()
            tensor = vae.vae_encode_crop_pixels(tensor)
            in_axis = -3 if tensor.shape[-3] >= tensor.shape[-2] else -2  # pixels [F, H, W, 3]
            out_axis, scale, align, halo_rows = in_axis + 1, 1 / ratio, ratio, halo * ratio  # latent [1, C, T, h, w]
        bands = row_bands(tensor.shape[in_axis], self.degree, halo_rows, align)
        plain = {"op": op, "in_axis": in_axis, "out_axis": out_axis, "scale": scale,
                 "attention_scale": 1 if op == "decode" else 1 / ratio,  # the attention runs at latent resolution
                 "bands": [(b.start, b.stop, b.keep_start, b.keep_stop) for b in bands]}
        group = self.ensure()
        code = _banded_coder(vae, op, plain, bands, 0, vae.decode if op == "decode" else vae.encode)
        with group.collective():
            plain["key"] = self._sync_vae(group, vae)
            group.send("vae_bands", plain, {"input": tensor})
            out = banded(code, tensor, in_axis=in_axis, out_axis=out_axis, scale=scale, bands=bands, rank=0,
                         device=group.device)
        return out.to(vae.output_device)

    def peak_memory(self) -> list[float]:
        """Peak allocated GPU memory of every rank (GiB) since the last call (benchmarks)."""
        group = self.ensure()
        with group.collective():
            group.send("peak_memory")
            return gather_peak_memory(0, self.degree, group.device)

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop()
            self.group = None


def _wrapper(runtime: ParallelRuntime, fallback_patcher):
    def wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        problem = call_problem(timestep, time_dim_concat, transformer_options, kwargs)
        if problem:
            raise SequenceParallelError(f"sequence parallel: {problem}")
        model_patcher = fallback_patcher.model.current_patcher or fallback_patcher
        problem = marks_problem(model_patcher)
        if problem:
            raise SequenceParallelError(f"sequence parallel: {problem}")
        return runtime.forward(model_patcher, executor.class_obj, x, timestep, context, clip_fea, transformer_options)

    return wrapper


def parallel_model(model_patcher, runtime: ParallelRuntime):
    """A clone of `model_patcher` whose forward runs on the runtime's ranks (the original is untouched)."""
    import comfy.patcher_extension

    clone = model_patcher.clone()
    for index, block in enumerate(model_patcher.model.diffusion_model.blocks):
        name = f"diffusion_model.blocks.{index}.self_attn.forward"
        previous = clone.object_patches.get(name) or types.MethodType(type(block.self_attn).forward, block.self_attn)
        clone.add_object_patch(name, mark_self_attention(previous))
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _wrapper(runtime, clone))
    return clone


def parallel_vae(vae, runtime: ParallelRuntime, halo: int = DEFAULT_VAE_HALO):
    """A shallow copy of a ComfyUI VAE whose decode and encode run banded on the runtime's ranks (tiled decodes and the
    VAE object the rest of the graph shares are left as they are)."""
    plain = getattr(vae, "svi_plain_vae", vae)
    parallel = copy.copy(plain)
    parallel.decode = lambda samples_in, vae_options={}: (runtime.vae_bands(plain, "decode", samples_in, halo)
                                                          if not vae_options else plain.decode(samples_in, vae_options))
    parallel.encode = lambda pixel_samples: runtime.vae_bands(plain, "encode", pixel_samples, halo)
    return parallel


_RUNTIMES: dict[tuple[int, bool], ParallelRuntime] = {}


def runtime_for(degree: int, *, cuda: bool) -> ParallelRuntime:
    """The process's runtime of this degree (one per degree; only one group runs at a time)."""
    return _RUNTIMES.setdefault((degree, cuda), ParallelRuntime(degree, cuda=cuda))


__all__ = ["ParallelRuntime", "ParallelWorkerError", "SequenceParallelError", "model_problem", "parallel_model",
           "parallel_vae", "runtime_for", "sequence_parallel_forward"]
