"""The node that swaps the TileLang / cuDNN kernels into a Wan model (on a clone), gives the VAE a faster encode and
decode, and says what it did."""

from __future__ import annotations

import comfy.utils
from comfy_api.latest import io

from ..kernels.model_patch import (ATTENTION_BACKENDS, ATTENTION_PRECISIONS, BEFORE_FIRST_STEP, BF16, GEMM_PRECISIONS,
                                   IN_BACKGROUND, PRECOMPILE_MODES, VAE_KERNELS, accelerate_model, precompile,
                                   precompile_in_background)
from ..pipeline.fast_vae import fast_path_line, fast_vae, fused_norm_problem


class SVIKernelAccelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIKernelAccelerate", display_name="SVI Fast Kernels (Hopper)", category="SVI/speed",
            search_aliases=["tilelang", "hopper", "fast kernels", "speed up", "accelerate", "flash attention", "svi"],
            description="Routes Wan's attention to the fastest correct backend per shape (never ComfyUI's FlashAttention-2 "
                        "default on Hopper), fuses q/k RMSNorm+RoPE and each block's residual + LayerNorm + modulation "
                        "steps with TileLang, and runs the FFN's GELU inside its GEMM. The TileLang kernels run only on "
                        "Hopper (compute capability 9.0) with a working TileLang compile; anywhere else the model keeps "
                        "ComfyUI's own path and the report says why. The input model is left untouched.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 I2V model or one Wan 2.2 expert (after its LoRAs)."),
                io.Boolean.Input("attention", default=True, tooltip="Route attention through the kernel dispatch."),
                io.Combo.Input("attention_backend", options=list(ATTENTION_BACKENDS), default="auto",
                               tooltip="auto: TileLang where it measured faster, else cuDNN; or force one."),
                io.Combo.Input("attention_precision", options=list(ATTENTION_PRECISIONS), default=BF16, optional=True,
                               tooltip="bf16, or the 8-bit TileLang kernel: INT8 Q.K^T with smoothed, channel-balanced "
                                       "per-token / per-key-group scales and FP8 P.V with fp32 accumulation. Where it "
                                       "cannot run (no Hopper GPU, no TileLang, head dim not 64 or 128) the bf16 path "
                                       "runs and the report says why."),
                io.Combo.Input("gemm_precision", options=list(GEMM_PRECISIONS), default=BF16, optional=True,
                               tooltip="bf16, or fp8: each block's eight big GEMMs as e4m3 row-wise scaled matmuls fed "
                                       "straight by the fused norms (a scale per token, per weight channel; weights "
                                       "quantised once, about 12 GB more for Wan 14B, LoRAs merged first). Needs the "
                                       "fused norms; a block ComfyUI patches or casts on the fly stays in bf16."),
                io.Boolean.Input("norms", default=True, tooltip="Fused norms: q/k RMSNorm+RoPE, the RMSNorm kernel, and each "
                                 "block's residual + LayerNorm + modulation in three passes with the GELU in the FFN's GEMM."),
                io.Int.Input("precompile_width", default=832, min=0, max=8192, step=16,
                             tooltip="Compile the kernels for this clip size ahead of sampling (0 = compile on first use)."),
                io.Int.Input("precompile_height", default=480, min=0, max=8192, step=16, tooltip="Clip height to precompile for."),
                io.Int.Input("precompile_length", default=81, min=1, max=8192, step=4, tooltip="Clip frames to precompile for."),
                io.Boolean.Input("precompile_cfg", default=False, optional=True,
                                 tooltip="Also precompile batch 2 (CFG above 1 runs cond and uncond as one batch)."),
                io.Combo.Input("precompile_mode", options=list(PRECOMPILE_MODES), default=IN_BACKGROUND, optional=True,
                               tooltip="In the background: the node returns at once and sampling starts while the "
                                       "kernels compile (tens of seconds on a fresh install, about a second from the "
                                       "disk cache). Each group switches on once its kernels are in, the norms first, "
                                       "then attention, then the VAE's norms; until then ComfyUI's ops, cuDNN attention "
                                       "and the VAE's own norms run in their place, so a fresh install's first clip can "
                                       "differ from later ones at rounding level. Progress goes to the console log. "
                                       "Before the first step: the node waits for every kernel, with a progress bar."),
                io.Vae.Input("vae", optional=True, tooltip="The Wan 2.1 VAE: comes out with a faster encode and decode on "
                             "CUDA (channels-last convolutions, fused RMSNorm+SiLU, one pinned copy out) for the SVI and "
                             "VAE Encode / Decode nodes."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="report"),
                     io.Vae.Output(display_name="vae", tooltip="The input VAE with the fast encode and decode (empty without a VAE input).")],
        )

    @classmethod
    def execute(cls, model, attention, attention_backend, norms, precompile_width, precompile_height,
                precompile_length, precompile_cfg=False, vae=None, attention_precision=BF16,
                gemm_precision=BF16, precompile_mode=IN_BACKGROUND) -> io.NodeOutput:
        patched, report = accelerate_model(model, attention=attention, norms=norms, attention_backend=attention_backend,
                                           attention_precision=attention_precision, gemm_precision=gemm_precision)
        compiled = None  # the labels a blocking precompile built
        if precompile_width and report.active:
            clip = dict(batches=(1, 2) if precompile_cfg else (1,), norms=any("RMSNorm" in item for item in report.active),
                        attention_backend=report.attention_backend, attention_precision=report.attention_precision,
                        gemm_precision=report.gemm_precision,
                        vae_dtype=None if vae is None or fused_norm_problem(vae) else vae.vae_dtype)
            if precompile_mode == BEFORE_FIRST_STEP:
                bar = comfy.utils.ProgressBar(1)
                compiled = precompile(model, precompile_width, precompile_height, precompile_length,
                                      progress=lambda done, total: bar.update_absolute(done, total), **clip)
            else:
                precompile_in_background(model, precompile_width, precompile_height, precompile_length, report=report,
                                         **clip)
        lines = report.lines() + ([f"precompiled: {', '.join(compiled)}"] if compiled is not None else [])
        if vae is not None:
            lines.append(fast_path_line(vae))
        faster_vae = None if vae is None else fast_vae(vae, report.gates[VAE_KERNELS])
        return io.NodeOutput(patched, "\n".join(lines), faster_vae, ui={"text": lines})


KERNEL_NODES = [SVIKernelAccelerate]
