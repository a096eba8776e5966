"""Swapping the kernels into a Wan model: on a ModelPatcher clone, never on the original.

Attention goes through ComfyUI's `optimized_attention_override` (the hook every attention backend
honours); each self-attention block's q/k preparation (RMSNorm, then RoPE) becomes one fused
kernel through an object patch of that block's forward, and the cross-attention q/k norms become
the RMSNorm kernel. LoRA patches and weight casting stay ComfyUI's: the patched code calls the
same Linear modules and casts the norm weights to the input like ComfyUI's RMSNorm does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from . import attention as attention_kernels
from .dispatch import Decision, device_problem, tilelang_problem
from .rmsnorm import rms_norm, rms_norm_rope

log = logging.getLogger(__name__)
ATTENTION_BACKENDS = ("auto", "cudnn", "tilelang")


@dataclass
class KernelReport:
    """Which kernels are active and why any is not; counts what actually ran, per op and backend."""

    active: list[str] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)
    ran: Counter = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)

    def record(self, decision: Decision) -> None:
        self.ran[(decision.op, decision.backend)] += 1
        if decision.reason:
            self.reasons[decision.op] = decision.reason

    def lines(self) -> list[str]:
        lines = [f"active: {item}" for item in self.active] + [f"not active: {item}" for item in self.inactive]
        lines += [f"ran: {op} via {backend} x{count}" + (f" ({self.reasons[op]})" if op in self.reasons and backend != "tilelang" else "")
                  for (op, backend), count in sorted(self.ran.items())]
        return lines


def _hopper_problem(model_patcher) -> str:
    device = model_patcher.load_device
    if not torch.cuda.is_available() or getattr(device, "type", str(device)) != "cuda":
        return "no CUDA device: ComfyUI runs this model on the CPU"
    probe = torch.empty(1, device=device, dtype=torch.bfloat16)
    return device_problem(probe)


def _cast_weight(module, like: torch.Tensor) -> torch.Tensor:
    import comfy.model_management

    return comfy.model_management.cast_to(module.weight, dtype=like.dtype, device=like.device)


def _attention_router(backend: str, report: KernelReport):
    """ComfyUI attention override: Wan's plain calls go to the kernel dispatch, anything else to ComfyUI's own."""

    def route(comfy_attention, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
              **kwargs):
        if mask is not None or skip_reshape or skip_output_reshape or q.ndim != 3:
            report.record(Decision("attention", "comfyui", "masked or pre-shaped call"))
            return comfy_attention(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                                   skip_output_reshape=skip_output_reshape, **kwargs)
        out, decision = attention_kernels.attention(q, k, v, heads, backend)
        report.record(decision)
        return out

    return route


def _fused_self_attention_forward(block, report: KernelReport):
    """WanSelfAttention.forward with q/k made by the fused RMSNorm+RoPE kernel (same math, one pass each)."""
    import comfy.ldm.wan.model as wan  # its module-level optimized_attention honours the attention override

    def forward(x, freqs, transformer_options={}):
        patches = transformer_options.get("patches", {})
        b, s = x.shape[:2]
        n, d = block.num_heads, block.head_dim
        q, decision = rms_norm_rope(block.q(x), _cast_weight(block.norm_q, x), block.norm_q.eps, freqs, n)
        report.record(decision)
        k, decision = rms_norm_rope(block.k(x), _cast_weight(block.norm_k, x), block.norm_k.eps, freqs, n)
        report.record(decision)
        out = wan.optimized_attention(q.view(b, s, n * d), k.view(b, s, n * d), block.v(x).view(b, s, n * d), heads=n,
                                      transformer_options=transformer_options)
        for patch in patches.get("attn1_patch", []):
            out = patch({"x": out, "q": q, "k": k, "transformer_options": transformer_options})
        return block.o(out)

    return forward


def _rms_norm_forward(module, report: KernelReport):
    """A Wan RMSNorm module's forward through the RMSNorm dispatch (the module, and so its weight, stays in place)."""

    def forward(x):
        out, decision = rms_norm(x, _cast_weight(module, x), module.eps)
        report.record(decision)
        return out

    return forward


def accelerate_model(model_patcher, *, attention: bool = True, norms: bool = True, attention_backend: str = "auto"):
    """Returns (clone with the kernels swapped in where they can run, KernelReport). The original is untouched."""
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}")
    clone = model_patcher.clone()
    report = KernelReport()
    hopper = _hopper_problem(model_patcher)
    tilelang = tilelang_problem()
    diffusion_model = model_patcher.model.diffusion_model
    blocks = getattr(diffusion_model, "blocks", None)
    if blocks is None or not hasattr(blocks[0], "self_attn"):
        report.inactive.append("all kernels: not a Wan diffusion model")
        return clone, report

    if not attention:
        report.inactive.append("attention: switched off")
    elif hopper:
        report.inactive.append(f"attention: {hopper}")
    else:
        transformer_options = clone.model_options.setdefault("transformer_options", {})
        transformer_options["optimized_attention_override"] = _attention_router(attention_backend, report)
        report.active.append(f"attention router ({attention_backend}: TileLang where it measured faster, else cuDNN)")

    if not norms:
        report.inactive.append("RMSNorm / RMSNorm+RoPE: switched off")
    elif hopper or tilelang:
        report.inactive.append(f"RMSNorm / RMSNorm+RoPE: {hopper or tilelang}")
    else:
        for index, block in enumerate(blocks):
            clone.add_object_patch(f"diffusion_model.blocks.{index}.self_attn.forward",
                                   _fused_self_attention_forward(block.self_attn, report))
            for name in ("norm_q", "norm_k", "norm_k_img"):
                module = getattr(block.cross_attn, name, None)
                if isinstance(module, torch.nn.Module) and hasattr(module, "eps"):
                    # forward, not the module: ComfyUI applies object patches before weight patches (LoRAs) by path
                    clone.add_object_patch(f"diffusion_model.blocks.{index}.cross_attn.{name}.forward",
                                           _rms_norm_forward(module, report))
        report.active.append(f"fused RMSNorm+RoPE in {len(blocks)} self-attention blocks, RMSNorm kernel in cross-attention")
    for line in report.lines():
        log.info("SVI kernels: %s", line)
    return clone, report


def precompile(model_patcher, width: int, height: int, frames: int, *, batches: tuple[int, ...] = (1,), norms: bool = True,
               attention_backend: str | None = "auto", text_tokens: int = 512, image_tokens: int = 257,
               progress=None) -> list[str]:
    """Compiles the kernels a clip of this size will call, before the first step (TileLang shapes are static, batch
    included: 1 for CFG 1, 2 when ComfyUI batches cond and uncond). Later runs load them from TileLang's disk cache.
    `attention_backend` None: attention is not routed, so no attention kernel is needed."""
    from .attention import flash_attention_kernel, wants_tilelang
    from .rmsnorm import rms_norm_kernel, rms_norm_rope_kernel

    model = model_patcher.model
    diffusion_model = model.diffusion_model
    dim, heads = diffusion_model.dim, diffusion_model.num_heads
    head_dim = dim // heads
    eps = diffusion_model.blocks[0].self_attn.norm_q.eps
    dtype = getattr(model, "manual_cast_dtype", None) or model_patcher.model_dtype()
    dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    context = (tokens, text_tokens) + ((image_tokens,) if getattr(diffusion_model, "img_emb", None) is not None else ())
    jobs = []
    for batch in batches:
        if norms:
            jobs.append((f"RMSNorm+RoPE {batch}x{tokens}", lambda b=batch: rms_norm_rope_kernel(b, tokens, dim, head_dim, dtype, eps)))
            jobs += [(f"RMSNorm {batch * rows} rows", lambda n=batch * rows: rms_norm_kernel(n, dim, dtype, eps)) for rows in context]
        if attention_backend is not None:
            jobs += [(f"attention {batch}x{tokens} over {kv}",
                      lambda b=batch, kv=kv: flash_attention_kernel(b, heads, tokens, kv, head_dim, dtype))
                     for kv in context if wants_tilelang(kv, head_dim, attention_backend)]
    done = []
    for index, (name, job) in enumerate(jobs):
        job()
        done.append(name)
        if progress is not None:
            progress(index + 1, len(jobs))
    return done
