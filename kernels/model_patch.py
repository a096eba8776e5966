"""Swapping the kernels into a Wan model: on a ModelPatcher clone, never on the original.

Attention goes through ComfyUI's `optimized_attention_override` (the hook every attention backend
honours); each self-attention block's q/k preparation (RMSNorm, then RoPE) becomes one fused
kernel through an object patch of that block's forward, and the cross-attention q/k norms become
the RMSNorm kernel. Each transformer block's forward is object-patched too, so its residual
updates, LayerNorms and modulations run as three fused passes plus a vectorised last residual
update (kernels/layernorm.py) and the FFN's GELU runs in its first GEMM's epilogue. LoRA patches
and weight casting stay ComfyUI's: the patched code calls the same Linear modules and casts the
norm weights to the input like ComfyUI's ops do.

Every patched forward first checks its report's gate for the kernels it calls (one per KERNEL_GROUPS entry): while
they compile in the background (`precompile_in_background`) it runs ComfyUI's own code, and attention goes to cuDNN,
which needs no compile; so no patched forward calls a kernel before every kernel of its group is loaded. The groups
open one by one, the norms first: they are the quick builds and most of the step's gain.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

import torch

from . import attention as attention_kernels
from . import attention_8bit, dispatch, fp8_gemm, parallel_compile
from .dispatch import STILL_COMPILING, Decision
from .fp8_gemm import Fp8Rows, quantize_rows, row_quant_kernel, scaled_linear
from .layernorm import NormPlan, gated_residual, gated_residual_kernel, layer_norm, layer_norm_kernel
from .rmsnorm import rms_norm, rms_norm_rope

log = logging.getLogger(__name__)
ATTENTION_BACKENDS = ("auto", "cudnn", "tilelang")
SETTINGS_ATTACHMENT = "svi_fast_kernels"  # accelerate_model's arguments, so a worker process can patch its copy alike
BF16 = "bf16"
EIGHT_BIT = "8-bit (SageAttention-2-style)"  # INT8 Q.K^T, FP8 P.V: kernels/attention_8bit.py
ATTENTION_PRECISIONS = (BF16, EIGHT_BIT)
FP8_GEMMS = "fp8 (per-token scales)"  # the block's eight big GEMMs in e4m3: kernels/fp8_gemm.py
GEMM_PRECISIONS = (BF16, FP8_GEMMS)
UNTIL_READY = "ComfyUI's ops and cuDNN attention run"  # what the patched forwards run while the gate is closed
IN_BACKGROUND = "in the background (ComfyUI's ops until ready)"  # precompile_in_background
BEFORE_FIRST_STEP = "before the first step"  # precompile, blocking
PRECOMPILE_MODES = (IN_BACKGROUND, BEFORE_FIRST_STEP)
NORM_KERNELS = "norms"  # RMSNorm, RMSNorm+RoPE, the fused block passes, fp8 rows: the patched block forwards
ATTENTION_KERNELS = "attention"  # the bf16 and 8-bit attention kernels: the attention router
VAE_KERNELS = "VAE norms"  # the fast VAE's RMSNorm+SiLU
KERNEL_GROUPS = (NORM_KERNELS, ATTENTION_KERNELS, VAE_KERNELS)  # gates, in the order a background compile builds them
_GROUP_OF_MODULE = {"attention": ATTENTION_KERNELS, "attention_8bit": ATTENTION_KERNELS, "vae_norm": VAE_KERNELS}


def kernel_group(builder) -> str:
    """The gate a compile job's kernel opens, by the kernels/ module that builds it (the norms for any other)."""
    return _GROUP_OF_MODULE.get(builder.__module__.rpartition(".")[2], NORM_KERNELS)


def _open_gates() -> dict[str, threading.Event]:
    gates = {group: threading.Event() for group in KERNEL_GROUPS}
    for gate in gates.values():
        gate.set()
    return gates


@dataclass
class KernelReport:
    """Which kernels are active and why any is not; counts what actually ran, per op and backend."""

    active: list[str] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)
    attention_backend: str | None = None  # what the router was given (None: attention not routed)
    attention_precision: str = BF16  # what the router runs where it can
    gemm_precision: str = BF16  # what the fused blocks run their GEMMs in where they can
    ran: Counter = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)
    # per KERNEL_GROUPS entry, set: the patched forwards may call that group's kernels; cleared while a background
    # compile builds them, and kept cleared after it failed
    gates: dict[str, threading.Event] = field(default_factory=_open_gates)
    background_compile: parallel_compile.BackgroundCompile | None = None

    def waiting(self) -> list[str]:
        """The kernel groups whose gate is still closed, in KERNEL_GROUPS order."""
        return [group for group in KERNEL_GROUPS if not self.gates[group].is_set()]

    def record(self, decision: Decision) -> None:
        self.ran[(decision.op, decision.backend)] += 1
        if decision.reason:
            self.reasons[decision.op] = decision.reason

    def still_compiling(self, *ops: str) -> bool:
        """Whether a background compile still holds the norms' gate (the patched forwards' kernels); if so, records
        `ops` as run by ComfyUI meanwhile."""
        if self.gates[NORM_KERNELS].is_set():
            return False
        for op in ops:
            self.record(Decision(op, "comfyui", STILL_COMPILING))
        return True

    def lines(self) -> list[str]:
        lines = [f"active: {item}" for item in self.active] + [f"not active: {item}" for item in self.inactive]
        lines += self._compile_lines()
        lines += [f"ran: {op} via {backend} x{count}" + (f" ({self.reasons[op]})" if op in self.reasons and not backend.startswith("tilelang") else "")
                  for (op, backend), count in sorted(self.ran.items())]
        return lines

    def _compile_lines(self) -> list[str]:
        background = self.background_compile
        if background is None:
            return []
        waiting = self.waiting()
        if not waiting:
            return [f"precompiled in the background: {', '.join(background.built)}"]
        if background.error:
            return [f"compile failed: {background.error}; for the {' and '.join(waiting)} kernels {UNTIL_READY} instead"]
        return [f"kernels compiling in the background: {background.done}/{background.total} built; until the "
                f"{' and '.join(waiting)} kernels are in, {UNTIL_READY}"]


def _cast_weight(module, like: torch.Tensor) -> torch.Tensor:
    import comfy.model_management

    return comfy.model_management.cast_to(module.weight, dtype=like.dtype, device=like.device)


def _attention_router(backend: str, report: KernelReport, precision: str = BF16):
    """ComfyUI attention override: Wan's plain calls go to the kernel dispatch (the 8-bit one, which falls back to the
    bf16 one and says why, when `precision` asks for it), or to cuDNN while the kernels compile; anything else to
    ComfyUI's own."""
    dispatch = attention_8bit.attention_8bit if precision == EIGHT_BIT else attention_kernels.attention

    def route(comfy_attention, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
              **kwargs):
        if mask is not None or skip_reshape or skip_output_reshape or q.ndim != 3:
            report.record(Decision("attention", "comfyui", "masked or pre-shaped call"))
            return comfy_attention(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                                   skip_output_reshape=skip_output_reshape, **kwargs)
        if not report.gates[ATTENTION_KERNELS].is_set():
            out, decision = attention_kernels.attention(q, k, v, heads, "cudnn")  # compiles nothing
            report.record(Decision("attention", decision.backend, STILL_COMPILING))
            return out
        out, decision = dispatch(q, k, v, heads, backend)
        report.record(decision)
        return out

    return route


def _fused_self_attention_forward(block, report: KernelReport):
    """WanSelfAttention.forward with q/k made by the fused RMSNorm+RoPE kernel (same math, one pass each)."""
    import comfy.ldm.wan.model as wan  # its module-level optimized_attention honours the attention override

    def forward(x, freqs, transformer_options={}):
        if report.still_compiling("rms_norm_rope"):
            return type(block).forward(block, x, freqs, transformer_options=transformer_options)
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


MODULATED = NormPlan(residual="none", modulate=True)  # norm1: shift + LN(x) (1 + scale)
GATED_AFFINE = NormPlan(residual="gated", modulate=False)  # x += y gate; norm3: LN(x) w + b
ADDED_MODULATED = NormPlan(residual="add", modulate=True)  # x += y; norm2: shift + LN(x) (1 + scale)
FUSED_BLOCK_PLANS = (MODULATED, GATED_AFFINE, ADDED_MODULATED)  # one fused block's three passes, in order


def _plain_linear_problem(linear, x: torch.Tensor) -> str:
    """'' when ComfyUI would run this Linear as a plain F.linear on resident weights of x's dtype (so a GEMM with a
    GELU epilogue computes the same thing), else why not (on-the-fly casts, LoRA weight functions, quantized weights)."""
    weight, bias = linear.weight, linear.bias
    if getattr(linear, "comfy_cast_weights", False) or getattr(linear, "weight_function", None) or getattr(linear, "bias_function", None):
        return "weights cast or patched on the fly"
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) or bias is None:
        return "quantized weights or no bias"
    if weight.dtype != x.dtype or weight.device != x.device or bias.dtype != x.dtype:
        return f"weights in {weight.dtype}, activations in {x.dtype}"
    if not x.is_cuda:
        return "not on CUDA"
    return ""


def feed_forward(ffn, x: torch.Tensor) -> tuple[torch.Tensor, Decision]:
    """Wan's FFN, Linear -> GELU(tanh) -> Linear, with the GELU in the first GEMM's epilogue (cuBLASLt's GELU_BIAS,
    the same tanh approximation, applied before rounding): one full write and read of the 13,824-wide intermediate
    fewer. ComfyUI's own FFN runs wherever its Linear would not be a plain GEMM."""
    first, last = ffn[0], ffn[2]
    reason = _plain_linear_problem(first, x)
    if reason:
        return ffn(x), Decision("ffn_gelu", "comfyui", reason)
    hidden = torch._addmm_activation(first.bias, x.reshape(-1, x.shape[-1]), first.weight.t(), use_gelu=True)
    return last(hidden.view(*x.shape[:-1], hidden.shape[-1])), Decision("ffn_gelu", "cublaslt")


FP8_BLOCK_PLANS = tuple(NormPlan(plan.residual, plan.modulate, fp8_out=True) for plan in FUSED_BLOCK_PLANS)
FP8_CROSS_ATTENTIONS = ("WanT2VCrossAttention", "WanI2VCrossAttention")  # the two forwards _fp8_cross_attention mirrors


def _fp8_linears(block) -> list:
    """The Linears a block runs in fp8: every GEMM over the token stream (cross-attention's keys and values, over 512
    or 257 context tokens, stay ComfyUI's)."""
    attn, cross = block.self_attn, block.cross_attn
    return [attn.q, attn.k, attn.v, attn.o, cross.q, cross.o, block.ffn[0], block.ffn[2]]


def _fp8_block_problem(block, x: torch.Tensor) -> str:
    """'' when this block's GEMMs can all run in fp8 on x, else why not (then the whole block runs in bf16)."""
    if type(block.cross_attn).__name__ not in FP8_CROSS_ATTENTIONS:
        return f"cross-attention {type(block.cross_attn).__name__} is not Wan's"
    return next(filter(None, (fp8_gemm.linear_problem(linear, x) for linear in _fp8_linears(block))), "")


class _Fp8Block:
    """One block's fp8 GEMMs: each takes e4m3 rows and returns the Linear's output in the stream's dtype."""

    def __init__(self, owner, dtype: torch.dtype, report: KernelReport):
        self.owner, self.dtype, self.report = owner, dtype, report

    def linear(self, linear, rows: Fp8Rows) -> torch.Tensor:
        out = scaled_linear(rows, fp8_gemm.WEIGHTS.get(self.owner, linear, self.dtype), self.dtype)
        self.report.record(Decision("fp8_gemm", "scaled_mm"))
        return out

    def quantize(self, x: torch.Tensor, gelu: bool = False) -> Fp8Rows:
        rows, decision = quantize_rows(x, gelu)
        self.report.record(decision)
        return rows

    def self_attention(self, attn, rows: Fp8Rows, shape, freqs, transformer_options) -> torch.Tensor:
        """WanSelfAttention.forward on normed e4m3 rows: q/k by the fused RMSNorm+RoPE kernel, the output projection
        fed by one row-quantisation pass."""
        import comfy.ldm.wan.model as wan

        b, s = shape
        n, d = attn.num_heads, attn.head_dim
        q = self.linear(attn.q, rows).view(b, s, n * d)
        q, decision = rms_norm_rope(q, _cast_weight(attn.norm_q, q), attn.norm_q.eps, freqs, n)
        self.report.record(decision)
        k = self.linear(attn.k, rows).view(b, s, n * d)
        k, decision = rms_norm_rope(k, _cast_weight(attn.norm_k, k), attn.norm_k.eps, freqs, n)
        self.report.record(decision)
        out = wan.optimized_attention(q.view(b, s, n * d), k.view(b, s, n * d), self.linear(attn.v, rows).view(b, s, n * d),
                                      heads=n, transformer_options=transformer_options)
        for patch in transformer_options.get("patches", {}).get("attn1_patch", []):
            out = patch({"x": out, "q": q, "k": k, "transformer_options": transformer_options})
        return self.linear(attn.o, self.quantize(out)).view(b, s, -1)

    def cross_attention(self, attn, rows: Fp8Rows, shape, context, context_img_len, transformer_options) -> torch.Tensor:
        """WanT2VCrossAttention / WanI2VCrossAttention.forward with q and o in fp8, the context's k and v ComfyUI's."""
        import comfy.ldm.wan.model as wan

        b, s = shape
        n = attn.num_heads
        q = attn.norm_q(self.linear(attn.q, rows).view(b, s, -1))
        image = None
        if type(attn).__name__ == "WanI2VCrossAttention":
            context_img, context = context[:, :context_img_len], context[:, context_img_len:]
            image = wan.optimized_attention(q, attn.norm_k_img(attn.k_img(context_img)), attn.v_img(context_img), heads=n,
                                            transformer_options=transformer_options, low_precision_attention=False)
        out = wan.optimized_attention(q, attn.norm_k(attn.k(context)), attn.v(context), heads=n,
                                      transformer_options=transformer_options)
        if image is not None:
            out = out + image
        return self.linear(attn.o, self.quantize(out)).view(b, s, -1)

    def feed_forward(self, ffn, rows: Fp8Rows, shape) -> torch.Tensor:
        """Linear -> GELU(tanh) -> Linear, the GELU applied in the pass that quantises the 13,824-wide hidden."""
        hidden = self.linear(ffn[0], rows)
        return self.linear(ffn[2], self.quantize(hidden, gelu=True)).view(*shape, -1)


def _fused_block_forward(block, report: KernelReport, fp8_owner=None):
    """WanAttentionBlock.forward with its six residual / LayerNorm / modulation steps as three fused passes, its last
    residual update as one vectorised pass and the FFN's GELU in its GEMM; Wan's own forward for what that does not
    cover (per-frame modulation, attn2 patches). With `fp8_owner` (the diffusion model whose weights the fp8 copies
    belong to) the three passes write e4m3 rows straight into fp8 GEMMs, wherever the block's Linears allow it."""
    import comfy.model_management

    own_forward = type(block).forward

    def forward(x, e, freqs, context, context_img_len=257, transformer_options={}):
        if report.still_compiling("layer_norm", *(("fp8_gemm",) if fp8_owner is not None else ())):  # Wan's own block
            return own_forward(block, x, e, freqs, context, context_img_len=context_img_len,
                               transformer_options=transformer_options)
        modulation = comfy.model_management.cast_to(block.modulation, dtype=x.dtype, device=x.device)
        mods = (modulation + e).chunk(6, dim=1) if e.ndim < 4 else (modulation.unsqueeze(0) + e).unbind(2)
        if mods[0].shape[1] != 1 or "attn2_patch" in transformer_options.get("patches", {}):
            report.record(Decision("layer_norm", "comfyui", "per-frame modulation or attn2 patches"))
            return own_forward(block, x, e, freqs, context, context_img_len=context_img_len,
                               transformer_options=transformer_options)
        e = mods  # [B, 1, C] each: shift/scale/gate of self-attention, then of the FFN
        x = x.contiguous()
        fp8 = None
        if fp8_owner is not None:
            problem = _fp8_block_problem(block, x)
            if problem:
                report.record(Decision("fp8_gemm", "comfyui", problem))
            else:
                fp8 = _Fp8Block(fp8_owner, x.dtype, report)
        plans = FP8_BLOCK_PLANS if fp8 else FUSED_BLOCK_PLANS
        shape = x.shape[:2]
        _, h, decision = layer_norm(x, plans[0], block.norm1.eps, shift=e[0], scale=e[1])
        report.record(decision)
        if fp8:
            y = fp8.self_attention(block.self_attn, h, shape, freqs, transformer_options)
        else:
            y = block.self_attn(h, freqs, transformer_options=transformer_options)
        x, h, decision = layer_norm(x, plans[1], block.norm3.eps, y=y, gate=e[2], weight=_cast_weight(block.norm3, x),
                                    bias=comfy.model_management.cast_to(block.norm3.bias, dtype=x.dtype, device=x.device))
        report.record(decision)
        if fp8:
            y = fp8.cross_attention(block.cross_attn, h, shape, context, context_img_len, transformer_options)
        else:
            y = block.cross_attn(h, context, context_img_len=context_img_len, transformer_options=transformer_options)
        x, h, decision = layer_norm(x, plans[2], block.norm2.eps, y=y, shift=e[3], scale=e[4])
        report.record(decision)
        if fp8:
            y = fp8.feed_forward(block.ffn, h, shape)
        else:
            y, decision = feed_forward(block.ffn, h)
            report.record(decision)
        x, decision = gated_residual(x, y, e[5])
        report.record(decision)
        return x

    return forward


def _fusable_block(block) -> bool:
    """A Wan 2.1 / 2.2 block as ComfyUI v0.33.0 builds it: affine norm3, plain norm1/norm2, Linear-GELU-Linear FFN."""
    norm3 = getattr(block, "norm3", None)
    ffn = getattr(block, "ffn", None)
    return (type(block).__name__ == "WanAttentionBlock" and getattr(norm3, "weight", None) is not None
            and getattr(norm3, "bias", None) is not None and getattr(block.norm1, "weight", None) is None
            and ffn is not None and len(ffn) == 3 and isinstance(ffn[1], torch.nn.GELU) and ffn[1].approximate == "tanh")


def _rms_norm_forward(module, report: KernelReport):
    """A Wan RMSNorm module's forward through the RMSNorm dispatch (the module, and so its weight, stays in place)."""

    def forward(x):
        if report.still_compiling("rms_norm"):
            return type(module).forward(module, x)
        out, decision = rms_norm(x, _cast_weight(module, x), module.eps)
        report.record(decision)
        return out

    return forward


def accelerate_model(model_patcher, *, attention: bool = True, norms: bool = True, attention_backend: str = "auto",
                     fused_blocks: bool = True, attention_precision: str = BF16, gemm_precision: str = BF16):
    """Returns (clone with the kernels swapped in where they can run, KernelReport). The original is untouched.
    `fused_blocks` (with `norms`): the block-level residual + LayerNorm + modulation and GELU-in-GEMM fusion.
    `attention_precision` EIGHT_BIT: attention through the 8-bit kernel, `attention_backend` where it cannot run.
    `gemm_precision` FP8_GEMMS (with the fused blocks): each block's GEMMs in e4m3 with per-token scales."""
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}")
    if attention_precision not in ATTENTION_PRECISIONS:
        raise ValueError(f"attention_precision must be one of {ATTENTION_PRECISIONS}")
    if gemm_precision not in GEMM_PRECISIONS:
        raise ValueError(f"gemm_precision must be one of {GEMM_PRECISIONS}")
    clone = model_patcher.clone()
    clone.set_attachments(SETTINGS_ATTACHMENT, {"attention": attention, "norms": norms, "attention_backend": attention_backend,
                                                "fused_blocks": fused_blocks, "attention_precision": attention_precision,
                                                "gemm_precision": gemm_precision})
    report = KernelReport()
    capability = dispatch.capability_of(model_patcher.load_device)
    hopper = dispatch.hopper_problem(capability)  # the cuDNN route was measured on Hopper only
    tilelang = dispatch.tilelang_gate(capability, dispatch.compile_problem)  # compiles nothing off Hopper
    diffusion_model = model_patcher.model.diffusion_model
    blocks = getattr(diffusion_model, "blocks", None)
    if blocks is None or not hasattr(blocks[0], "self_attn"):
        report.inactive.append("all kernels: not a Wan diffusion model")
        return clone, report
    missing = dispatch.tilelang_missing()
    if missing and missing not in tilelang:
        report.inactive.append(f"TileLang kernels: {missing}")

    if not attention:
        report.inactive.append("attention: switched off")
    elif hopper:
        report.inactive.append(f"attention: {hopper}")
    else:
        if tilelang and attention_backend != "cudnn":
            report.inactive.append(f"TileLang attention: {tilelang}")
            attention_backend = "cudnn"
        if attention_precision == EIGHT_BIT and tilelang:
            report.inactive.append(f"8-bit attention: {tilelang}; attention runs in bf16")
            attention_precision = BF16
        elif attention_precision == EIGHT_BIT:
            report.active.append("8-bit attention (INT8 Q.K^T, FP8 P.V; the bf16 router below wherever it cannot run)")
        transformer_options = clone.model_options.setdefault("transformer_options", {})
        transformer_options["optimized_attention_override"] = _attention_router(attention_backend, report, attention_precision)
        report.attention_backend = attention_backend
        report.attention_precision = attention_precision
        report.active.append(f"attention router ({attention_backend}: TileLang where it measured faster, else cuDNN)"
                             if attention_backend != "cudnn" else "attention router (cuDNN)")

    fp8_owner = None
    if gemm_precision == FP8_GEMMS:
        problem = ("" if norms and fused_blocks else "needs the fused block norms (norms on)") or tilelang
        if problem:
            report.inactive.append(f"fp8 GEMMs: {problem}; GEMMs run in the model's dtype")
        else:
            fp8_owner = diffusion_model
    if not norms:
        report.inactive.append("RMSNorm / RMSNorm+RoPE: switched off")
    elif tilelang:
        report.inactive.append(f"RMSNorm / RMSNorm+RoPE: {tilelang}")
    else:
        fused = 0
        for index, block in enumerate(blocks):
            clone.add_object_patch(f"diffusion_model.blocks.{index}.self_attn.forward",
                                   _fused_self_attention_forward(block.self_attn, report))
            if fused_blocks and _fusable_block(block):
                clone.add_object_patch(f"diffusion_model.blocks.{index}.forward", _fused_block_forward(block, report, fp8_owner))
                fused += 1
            for name in ("norm_q", "norm_k", "norm_k_img"):
                module = getattr(block.cross_attn, name, None)
                if isinstance(module, torch.nn.Module) and hasattr(module, "eps"):
                    # forward, not the module: ComfyUI applies object patches before weight patches (LoRAs) by path
                    clone.add_object_patch(f"diffusion_model.blocks.{index}.cross_attn.{name}.forward",
                                           _rms_norm_forward(module, report))
        report.active.append(f"fused RMSNorm+RoPE in {len(blocks)} self-attention blocks, RMSNorm kernel in cross-attention")
        if fused:
            report.active.append(f"fused residual + LayerNorm + modulation, vectorised last residual and GELU-in-GEMM "
                                 f"in {fused} blocks")
            if fp8_owner is not None:
                report.active.append(f"fp8 GEMMs in {fused} blocks (e4m3, per-token activation and per-channel weight "
                                     "scales; a block whose Linears ComfyUI patches or casts on the fly stays in bf16)")
                report.gemm_precision = FP8_GEMMS
        elif fp8_owner is not None:
            report.inactive.append("fp8 GEMMs: no fused blocks to run them in")
        else:
            report.inactive.append("fused block norms: " + ("switched off" if not fused_blocks else "blocks are not ComfyUI's WanAttentionBlock"))
    for line in report.lines():
        log.info("SVI kernels: %s", line)
    return clone, report


def clip_kernel_jobs(model_patcher, width: int, height: int, frames: int, *, batches: tuple[int, ...] = (1,),
                     norms: bool = True, attention_backend: str | None = "auto", attention_precision: str = BF16,
                     gemm_precision: str = BF16, text_tokens: int = 512, image_tokens: int = 257,
                     vae_dtype: torch.dtype | None = None) -> list[tuple]:
    """The compile jobs (kernels/parallel_compile.py) of the kernels a clip of this size will call, each once
    (TileLang shapes are static, batch included: 1 for CFG 1, 2 when ComfyUI batches cond and uncond).
    `attention_backend` None: attention is not routed, so no attention kernel is needed. `vae_dtype`: the fast VAE's
    fused RMSNorm+SiLU kernels too, for a Wan 2.1 VAE decoding in that dtype."""
    from .attention import flash_attention_kernel, wants_tilelang
    from .rmsnorm import rms_norm_kernel, rms_norm_rope_kernel
    from .vae_norm import WAN_VAE_NORM_CHANNELS, rms_norm_silu_kernel

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
    fused_blocks = _fusable_block(diffusion_model.blocks[0])
    norm_eps = diffusion_model.blocks[0].norm1.eps
    for batch in batches:
        if norms:
            jobs.append((f"RMSNorm+RoPE {batch}x{tokens}", rms_norm_rope_kernel, (batch, tokens, dim, head_dim, dtype, eps)))
            if fused_blocks:
                jobs += [(f"LayerNorm {plan.residual} {batch}x{tokens}", layer_norm_kernel, (batch, tokens, dim, dtype, norm_eps, plan))
                         for plan in FUSED_BLOCK_PLANS]
                jobs.append((f"gated residual {batch}x{tokens}", gated_residual_kernel, (batch, tokens, dim, dtype)))
                if gemm_precision == FP8_GEMMS:
                    ffn_dim = diffusion_model.blocks[0].ffn[0].weight.shape[0]
                    jobs += [(f"LayerNorm {plan.residual} to fp8 {batch}x{tokens}", layer_norm_kernel,
                              (batch, tokens, dim, dtype, norm_eps, plan)) for plan in FP8_BLOCK_PLANS]
                    jobs += [(f"fp8 rows {batch * tokens}x{dim}", row_quant_kernel, (batch * tokens, dim, dtype, False)),
                             (f"GELU + fp8 rows {batch * tokens}x{ffn_dim}", row_quant_kernel, (batch * tokens, ffn_dim, dtype, True))]
            jobs += [(f"RMSNorm {batch * rows} rows", rms_norm_kernel, (batch * rows, dim, dtype, eps)) for rows in context]
        for kv in context if attention_backend is not None else ():
            if attention_precision == EIGHT_BIT and kv >= attention_8bit.MIN_KEYS:
                jobs += attention_8bit.kernel_jobs(batch, heads, tokens, kv, head_dim, dtype)
            elif wants_tilelang(kv, head_dim, attention_backend):  # bf16, and the 8-bit router's cross-attention
                jobs.append((f"attention {batch}x{tokens} over {kv}", flash_attention_kernel,
                             (batch, heads, tokens, kv, head_dim, dtype)))
    if vae_dtype in dispatch.KERNEL_DTYPES:
        jobs += [(f"VAE RMSNorm+SiLU {channels} channels", rms_norm_silu_kernel, (channels, vae_dtype))
                 for channels in WAN_VAE_NORM_CHANNELS]
    unique = {(builder, args): (label, builder, args) for label, builder, args in jobs}.values()
    return sorted(unique, key=lambda job: KERNEL_GROUPS.index(kernel_group(job[1])))


def precompile(model_patcher, width: int, height: int, frames: int, *, progress=None, workers: int | None = None,
               **clip) -> list[str]:
    """Compiles the kernels a clip of this size will call (`clip`: `clip_kernel_jobs`'s options) before the first
    step, in parallel worker processes (kernels/parallel_compile.py); `progress(done, total)` after each. Later runs
    load them from TileLang's disk cache. Returns the labels built."""
    jobs = clip_kernel_jobs(model_patcher, width, height, frames, **clip)
    return [built.label for built in parallel_compile.compile_all(jobs, progress, workers)]


def precompile_in_background(model_patcher, width: int, height: int, frames: int, *, report: KernelReport,
                             workers: int | None = None, **clip) -> parallel_compile.BackgroundCompile:
    """`precompile` on a background thread, returning at once: each kernel group's gate stays closed, so the patched
    model runs ComfyUI's ops (for the norms) and cuDNN attention (for attention) in its place, until every kernel of
    that group is loaded (the norms, built first, open first); a failed compile leaves the groups it did not finish
    closed and the report says why. Progress goes to the log (parallel_compile.BackgroundCompile says why)."""
    jobs = clip_kernel_jobs(model_patcher, width, height, frames, **clip)
    groups = [kernel_group(builder) for _, builder, _ in jobs]
    unloaded = Counter(groups)
    for group in unloaded:
        report.gates[group].clear()

    def loaded(index: int) -> None:  # on the compile thread, one call per job
        unloaded[groups[index]] -= 1
        if not unloaded[groups[index]]:
            report.gates[groups[index]].set()
            log.info("SVI kernels: the %s kernels are loaded and in use", groups[index])

    report.background_compile = parallel_compile.BackgroundCompile(jobs, workers, on_loaded=loaded)
    return report.background_compile
