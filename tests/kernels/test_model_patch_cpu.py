"""The kernel node on a CPU: the model passes through unchanged, and the report says why nothing was swapped."""

import threading
import time

import pytest
import torch


@pytest.fixture(scope="module")
def wan(comfy_runtime):
    import comfy.sd

    path = comfy_runtime.models_dir / "diffusion_models" / comfy_runtime.tiny_models["wan21_i2v"]
    return comfy.sd.load_diffusion_model(str(path))


def test_cpu_model_passes_through_with_reasons(wan):
    from svi_infinity.kernels.model_patch import accelerate_model

    patched, report = accelerate_model(wan)
    assert patched is not wan
    assert not patched.object_patches and "optimized_attention_override" not in patched.model_options.get("transformer_options", {})
    assert any("no CUDA device" in line for line in report.lines())
    assert not report.active


def test_fused_forward_matches_wan_forward_on_the_reference_path(wan):
    """The patched self-attention forward (reference dispatch on CPU) computes what Wan's own forward does."""
    from comfy.ldm.flux.layers import EmbedND
    from svi_infinity.kernels.model_patch import KernelReport, _fused_self_attention_forward

    block = wan.model.diffusion_model.blocks[0].self_attn
    d = block.head_dim
    ids = torch.zeros(1, 12, 3)
    ids[0, :, 2] = torch.arange(12)
    freqs = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(ids).movedim(1, 2)
    x = torch.randn(1, 12, block.dim)
    wan.patch_model()
    try:
        report = KernelReport()
        with torch.no_grad():
            expected = block(x, freqs)
            got = _fused_self_attention_forward(block, report)(x, freqs)
    finally:
        wan.unpatch_model()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert report.ran[("rms_norm_rope", "reference")] == 2


def test_fused_block_forward_is_wans_block_forward_on_the_reference_path(wan):
    """The patched block forward (three fused residual/LayerNorm steps and the FFN) off Hopper runs ComfyUI's own op
    sequence: bit-identical to the block's own forward, batch 2 (per-sample modulation) and the I2V image tokens."""
    from comfy.ldm.flux.layers import EmbedND
    from svi_infinity.kernels.model_patch import KernelReport, _fusable_block, _fused_block_forward

    block = wan.model.diffusion_model.blocks[1]
    assert _fusable_block(block)
    d = block.self_attn.head_dim
    tokens = 12
    ids = torch.zeros(1, tokens, 3)
    ids[0, :, 2] = torch.arange(tokens)
    freqs = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(ids).movedim(1, 2)
    generator = torch.Generator().manual_seed(3)
    dtype = block.modulation.dtype
    x = torch.randn(2, tokens, block.dim, generator=generator).to(dtype)
    e = (0.5 * torch.randn(2, 6, block.dim, generator=generator)).to(dtype)
    context = torch.randn(2, 257 + 7, block.dim, generator=generator).to(dtype)
    report = KernelReport()
    with torch.no_grad():
        for modulation in (e, e.unsqueeze(1)):  # [B, 6, C], and [B, 1, 6, C] as WanModel passes it
            expected = block(x, modulation, freqs, context, context_img_len=257)
            got = _fused_block_forward(block, report)(x, modulation, freqs, context, context_img_len=257)
            assert torch.equal(got, expected)
    assert report.ran[("layer_norm", "reference")] == 2 * 3 and report.ran[("ffn_gelu", "comfyui")] == 2
    assert report.ran[("gated_residual", "reference")] == 2
    with torch.no_grad():  # per-frame modulation (a timestep per token) is left to Wan's own forward
        per_token = e.unsqueeze(1).expand(2, tokens, 6, block.dim).contiguous()
        expected = block(x, per_token, freqs, context, context_img_len=257)
        assert torch.equal(_fused_block_forward(block, report)(x, per_token, freqs, context, context_img_len=257), expected)
    assert report.ran[("layer_norm", "comfyui")] == 1


def test_node_in_a_workflow_runs_and_changes_nothing_on_cpu(comfy_runtime):
    from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), comfy_runtime.tiny_models, width=32, height=32,
                              length=9, num_clips=1)
    stack = next(k for k, v in prompt.items() if v["class_type"] == "SVILoraStack")
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")
    prompt["900"] = {"class_type": "SVIKernelAccelerate", "inputs": {"model": [stack, 0], "attention": True, "attention_backend": "auto",
                                                                     "norms": True, "precompile_width": 32, "precompile_height": 32,
                                                                     "precompile_length": 9, "vae": long_video["inputs"]["vae"]}}
    long_video["inputs"]["model"] = ["900", 0]
    long_video["inputs"]["vae"] = ["900", 2]
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    report = run.outputs["900"]["text"]
    assert any("no CUDA device" in line for line in report)
    assert "VAE encode and decode: ComfyUI's own (the VAE runs on cpu)" in report


def _sample_two_steps(model) -> torch.Tensor:
    """Two Euler steps of a tiny I2V latent through ComfyUI's sampler, the same inputs every call."""
    from svi_infinity.pipeline.clips import sample_clip

    generator = torch.Generator().manual_seed(0)
    y = {"concat_latent_image": torch.randn(1, 16, 3, 8, 8, generator=generator), "concat_mask": torch.ones(1, 1, 3, 8, 8)}
    text = [[torch.randn(1, 8, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.0])
    return sample_clip(model, None, text, text, torch.zeros(1, 16, 3, 8, 8), seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)


def test_patched_model_with_lora_matches_on_the_reference_path(wan, monkeypatch, tmp_path):
    """The object patches themselves (attention override, fused q/k forward, norm forwards) on top of a LoRA with a
    norm delta: run on the CPU through the reference dispatch, the patched model samples what the plain one does."""
    from safetensors.torch import save_file

    from svi_infinity.demo.tiny_models import lora_target_shapes, lora_tensors_in_format, random_lora, wan_dit_state_dict
    from svi_infinity.kernels import dispatch, model_patch
    from svi_infinity.pipeline.lora import apply_lora

    state = wan_dit_state_dict(image_branch=True, seed=1)
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    lora["diffusion_model.blocks.0.cross_attn.norm_q.diff"] = 0.1 * torch.randn(128)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    with_lora, _ = apply_lora(wan, tmp_path / "lora.safetensors", 0.8)
    monkeypatch.setattr(dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(dispatch, "compile_problem", lambda: "")
    patched, report = model_patch.accelerate_model(with_lora)
    assert len(report.active) == 3 and patched.object_patches
    plain, fast = _sample_two_steps(with_lora), _sample_two_steps(patched)
    assert torch.allclose(fast, plain, atol=1e-3, rtol=1e-3)
    ran = dict(report.ran)
    assert ran[("rms_norm_rope", "reference")] == 2 * 2 * 2  # q and k, 2 blocks, 2 steps
    assert ran[("rms_norm", "reference")] > 0 and ran[("attention", "reference")] > 0
    assert ran.get(("layer_norm", "reference")) == 3 * 2 * 2, (ran, report.lines())  # three fused steps, 2 blocks, 2 steps
    assert ran[("ffn_gelu", "comfyui")] == 2 * 2
    assert ran[("gated_residual", "reference")] == 2 * 2


def test_hopper_without_a_working_tilelang_keeps_comfyuis_ops_and_routes_attention_to_cudnn(wan, monkeypatch):
    """On Hopper with TileLang unable to compile: no TileLang kernel is swapped in, attention still leaves ComfyUI's
    FlashAttention-2 default for cuDNN, precompile has nothing to build, and the report says why."""
    from svi_infinity.kernels import dispatch, model_patch

    monkeypatch.setattr(dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(dispatch, "compile_problem", lambda: "TileLang cannot compile kernels here: no nvcc")
    patched, report = model_patch.accelerate_model(wan)
    assert report.active == ["attention router (cuDNN)"] and report.attention_backend == "cudnn"
    assert "not active: TileLang attention: TileLang cannot compile kernels here: no nvcc" in report.lines()
    assert "not active: RMSNorm / RMSNorm+RoPE: TileLang cannot compile kernels here: no nvcc" in report.lines()
    assert not patched.object_patches
    assert model_patch.precompile(wan, 32, 32, 9, norms=False, attention_backend=report.attention_backend) == []


@pytest.mark.parametrize("capability", [(8, 9), (10, 0), (12, 0)], ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_other_gpus_keep_comfyuis_path_and_compile_nothing(wan, monkeypatch, capability):
    """Ada and Blackwell: no kernel, no attention route, no compile probe; the report names the capability."""
    from svi_infinity.kernels import dispatch, model_patch

    def probe():
        raise AssertionError("the compile probe ran off Hopper")

    monkeypatch.setattr(dispatch, "capability_of", lambda device: capability)
    monkeypatch.setattr(dispatch, "compile_problem", probe)
    patched, report = model_patch.accelerate_model(wan)
    assert not patched.object_patches and "optimized_attention_override" not in patched.model_options.get("transformer_options", {})
    assert not report.active and report.attention_backend is None
    why = f"compute capability {capability[0]}.{capability[1]}"
    assert any(line.startswith("not active: attention: " + why) for line in report.lines()), report.lines()
    assert any(line.startswith("not active: RMSNorm / RMSNorm+RoPE: " + why) for line in report.lines())


def test_precompile_builds_the_kernels_a_clip_needs(wan, tmp_path, monkeypatch, hopper_compiler):
    """Precompile needs no GPU (the target is fixed to sm_90a); it builds norm, fused and attention kernels per shape."""
    from svi_infinity.kernels import dispatch
    from svi_infinity.kernels.model_patch import precompile

    monkeypatch.setenv("TILELANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_compiled", {})
    steps = []
    built = precompile(wan, 32, 32, 9, progress=lambda done, total: steps.append((done, total)))
    tokens = 3 * 2 * 2
    assert f"RMSNorm+RoPE 1x{tokens}" in built and f"attention 1x{tokens} over 257" in built
    assert steps == [(done, len(built)) for done in range(1, len(built) + 1)]  # one step per kernel
    assert precompile(wan, 32, 32, 9, norms=False, attention_backend="cudnn") == []


def test_8bit_switch_without_a_working_tilelang_says_why_and_stays_bf16(wan, monkeypatch):
    from svi_infinity.kernels import model_patch

    monkeypatch.setattr(model_patch.dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(model_patch.dispatch, "compile_problem", lambda: "TileLang cannot compile kernels here: no nvcc")
    _, report = model_patch.accelerate_model(wan, attention_precision=model_patch.EIGHT_BIT)
    assert report.attention_precision == model_patch.BF16 and report.attention_backend == "cudnn"
    assert ("not active: 8-bit attention: TileLang cannot compile kernels here: no nvcc; attention runs in bf16"
            in report.lines())
    with pytest.raises(ValueError, match="attention_precision"):
        model_patch.accelerate_model(wan, attention_precision="int4")


def test_8bit_switch_routes_wans_attention_to_the_8bit_dispatch(wan, monkeypatch):
    """With the switch on, the router ComfyUI calls sends Wan's attention to the 8-bit dispatch; on these CPU tensors
    that falls back to the bf16 path, and the report's count of what ran carries the reason."""
    from svi_infinity.kernels import model_patch
    from svi_infinity.kernels.attention import attention_reference

    monkeypatch.setattr(model_patch.dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(model_patch.dispatch, "compile_problem", lambda: "")
    patched, report = model_patch.accelerate_model(wan, attention_precision=model_patch.EIGHT_BIT, norms=False)
    assert report.attention_precision == model_patch.EIGHT_BIT and any("8-bit attention" in item for item in report.active)
    route = patched.model_options["transformer_options"]["optimized_attention_override"]
    q, k, v = (torch.randn(1, n, 256) for n in (20, 2048, 2048))
    out = route(None, q, k, v, 2)
    assert torch.equal(out, attention_reference(q, k, v, 2))
    assert report.ran[("attention", "reference")] == 1
    assert "ran: attention via reference x1 (8-bit kernel not run: tensors are on cpu, not CUDA)" in report.lines()



@pytest.fixture
def on_hopper(monkeypatch):
    """A Hopper GPU with a working TileLang, as far as the kernel gate can tell; the tensors stay on the CPU, so every
    kernel dispatch still takes its reference path."""
    from svi_infinity.kernels import dispatch

    monkeypatch.setattr(dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(dispatch, "compile_problem", lambda: "")


RELEASE_BUILD = threading.Event()
BUILDS_IN_PROGRESS: list[str] = []


def build_when_released(label: str) -> str:
    """A compile job's builder that holds its build until the test releases it. Module-level like the pack's kernel
    builders; these tests give it a single job or worker, so the compile thread builds it here, in no worker process
    (which could not import a test module)."""
    BUILDS_IN_PROGRESS.append(label)
    try:
        if not RELEASE_BUILD.wait(timeout=20):
            raise TimeoutError("the test never released the build")
    finally:
        BUILDS_IN_PROGRESS.remove(label)
    return label


def note_builds_in_progress(seen: list) -> None:
    seen.append(list(BUILDS_IN_PROGRESS))


def fail_to_build() -> None:
    raise RuntimeError("nvcc fatal: out of memory")


def build_now(label: str) -> str:
    return label


def as_if_built_by(module: str, builder):
    """A copy of `builder` that kernel_group files under the kernels/ `module` (it tells a job's gate by that)."""

    def build(*args):
        return builder(*args)

    build.__module__ = f"svi_infinity.kernels.{module}"
    return build


@pytest.fixture
def held_jobs(monkeypatch):
    """The clip's compile jobs: one build held until the test releases it. At the end the build is released and the
    compile threads are waited for, so none is still running (importing TileLang, say) when the interpreter exits."""
    from svi_infinity.kernels import model_patch
    from svi_infinity.kernels.parallel_compile import COMPILE_THREAD

    jobs = [("held kernel", build_when_released, ("held kernel",))]
    monkeypatch.setattr(model_patch, "clip_kernel_jobs", lambda *args, **options: jobs)
    RELEASE_BUILD.clear()
    yield jobs
    RELEASE_BUILD.set()
    for thread in threading.enumerate():
        if thread.name == COMPILE_THREAD:
            thread.join(timeout=60)


COMPILING = ("kernels compiling in the background: 0/1 built; until the norms kernels are in, ComfyUI's ops and cuDNN "
             "attention run")


def test_without_a_background_compile_the_gate_is_open_and_the_report_unchanged(wan, on_hopper):
    from svi_infinity.kernels.model_patch import KernelReport, accelerate_model

    assert KernelReport().waiting() == []
    patched, report = accelerate_model(wan)
    assert report.waiting() == [] and report.background_compile is None
    assert report.lines() == [f"active: {item}" for item in report.active]
    _sample_two_steps(patched)
    ran = report.lines()[len(report.active):]
    assert ran and all(line.startswith("ran: ") and "compiling" not in line for line in ran), ran
    assert report.ran[("rms_norm_rope", "reference")] == 2 * 2 * 2


@pytest.mark.parametrize("gemm_precision", ["bf16", "fp8 (per-token scales)"])
def test_a_closed_gate_runs_comfyuis_own_blocks_and_norms_until_it_opens(wan, on_hopper, gemm_precision):
    """Gate closed: every patched forward (block, self-attention, cross-attention norms) runs Wan's own code, so the
    samples are ComfyUI's bit for bit (attention stays ComfyUI's here; the next test covers the router). Gate open:
    the kernel path runs again."""
    from svi_infinity.kernels.dispatch import STILL_COMPILING
    from svi_infinity.kernels.model_patch import FP8_GEMMS, NORM_KERNELS, accelerate_model

    patched, report = accelerate_model(wan, attention=False, gemm_precision=gemm_precision)
    assert report.gemm_precision == gemm_precision
    report.gates[NORM_KERNELS].clear()
    plain = _sample_two_steps(wan)
    assert torch.equal(_sample_two_steps(patched), plain)
    calls = 2 * 2  # 2 blocks, 2 steps
    expected = {("layer_norm", "comfyui"): calls, ("rms_norm_rope", "comfyui"): calls, ("rms_norm", "comfyui"): 3 * calls}
    if gemm_precision == FP8_GEMMS:
        expected[("fp8_gemm", "comfyui")] = calls
    assert dict(report.ran) == expected
    assert set(report.reasons.values()) == {STILL_COMPILING}
    report.gates[NORM_KERNELS].set()
    report.ran.clear()
    fast = _sample_two_steps(patched)
    assert report.ran[("rms_norm_rope", "reference")] == 2 * calls and report.ran[("rms_norm", "reference")] == 3 * calls
    assert report.ran[("layer_norm", "reference")] == 3 * calls and ("layer_norm", "comfyui") not in report.ran
    if gemm_precision == FP8_GEMMS:
        assert report.ran[("fp8_gemm", "scaled_mm")] == 8 * calls  # e4m3 GEMMs: not close to bf16 at this tolerance
    else:
        assert torch.allclose(fast, plain, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "8-bit (SageAttention-2-style)"])
def test_a_closed_gate_sends_wans_attention_to_cudnn(wan, on_hopper, precision):
    """Gate closed, bf16 or 8-bit: the router calls the bf16 dispatch with backend cudnn, which compiles nothing (on
    these CPU tensors it runs the reference), and says why."""
    from svi_infinity.kernels.attention import attention
    from svi_infinity.kernels.dispatch import STILL_COMPILING
    from svi_infinity.kernels.model_patch import ATTENTION_KERNELS, accelerate_model

    patched, report = accelerate_model(wan, attention_precision=precision, norms=False)
    assert report.attention_precision == precision
    route = patched.model_options["transformer_options"]["optimized_attention_override"]
    q, k, v = (torch.randn(1, n, 256, generator=torch.Generator().manual_seed(n)) for n in (20, 2048, 2048))
    report.gates[ATTENTION_KERNELS].clear()
    assert torch.equal(route(None, q, k, v, 2), attention(q, k, v, 2, "cudnn")[0])
    assert dict(report.ran) == {("attention", "reference"): 1} and report.reasons["attention"] == STILL_COMPILING


def test_the_job_list_has_the_fast_vaes_norms_when_asked(wan):
    from svi_infinity.kernels.model_patch import clip_kernel_jobs
    from svi_infinity.kernels.vae_norm import rms_norm_silu_kernel

    def vae_jobs(**options):
        return [args for _, builder, args in clip_kernel_jobs(wan, 32, 32, 9, **options) if builder is rms_norm_silu_kernel]

    assert vae_jobs(vae_dtype=torch.bfloat16) == [(96, torch.bfloat16), (192, torch.bfloat16)]
    assert vae_jobs() == [] and vae_jobs(vae_dtype=torch.float32) == []  # no fast VAE, or one the kernel cannot take


def test_the_job_list_builds_the_norms_first_and_what_the_8bit_router_runs(wan):
    """Sorted by gate, norms first (the quick builds and most of a step's gain, so their gate opens first). With the
    8-bit switch: the 8-bit kernels for self-attention only, the bf16 kernels where its router sends cross-attention
    (fewer than MIN_KEYS keys), as `attention_8bit.attention_8bit` dispatches them."""
    from svi_infinity.kernels import attention, attention_8bit
    from svi_infinity.kernels.model_patch import EIGHT_BIT, KERNEL_GROUPS, clip_kernel_jobs, kernel_group

    width, height, frames = 256, 128, 81  # 21 latent frames of 8 x 16 tokens: 2688 keys, enough for the 8-bit kernel
    tokens = 21 * 8 * 16
    heads, head_dim = wan.model.diffusion_model.num_heads, wan.model.diffusion_model.dim // wan.model.diffusion_model.num_heads
    jobs = clip_kernel_jobs(wan, width, height, frames, attention_backend="tilelang", attention_precision=EIGHT_BIT,
                            vae_dtype=torch.bfloat16)
    dtype = next(args[-1] for _, builder, args in jobs if builder is attention.flash_attention_kernel)
    assert len({(builder, args) for _, builder, args in jobs}) == len(jobs)  # each kernel once
    groups = [kernel_group(builder) for _, builder, _ in jobs]
    assert groups == sorted(groups, key=KERNEL_GROUPS.index) and set(groups) == set(KERNEL_GROUPS)
    eight_bit = {builder: args for _, builder, args in jobs if builder.__module__.endswith("attention_8bit")}
    assert eight_bit == {builder: args for _, builder, args in attention_8bit.kernel_jobs(1, heads, tokens, tokens, head_dim, dtype)}
    bf16 = sorted(args[3] for _, builder, args in jobs if builder is attention.flash_attention_kernel)
    assert bf16 == [257, 512] and all(kv < attention_8bit.MIN_KEYS for kv in bf16)


def test_background_precompile_opens_the_gate_once_every_kernel_is_loaded(wan, on_hopper, held_jobs):
    from svi_infinity.kernels.model_patch import accelerate_model, precompile_in_background

    _, report = accelerate_model(wan)
    background = precompile_in_background(wan, 32, 32, 9, report=report)
    assert report.background_compile is background
    assert report.waiting() == ["norms"] and not background.finished.is_set()
    assert COMPILING in report.lines()
    RELEASE_BUILD.set()
    assert background.finished.wait(timeout=10)
    assert report.waiting() == []
    assert (background.done, background.total, background.built, background.error) == (1, 1, ["held kernel"], "")
    assert "precompiled in the background: held kernel" in report.lines()


def test_a_failed_background_compile_keeps_comfyuis_ops_and_says_why(wan, on_hopper, held_jobs):
    from svi_infinity.kernels.dispatch import STILL_COMPILING
    from svi_infinity.kernels.model_patch import accelerate_model, precompile_in_background

    held_jobs.append(("broken kernel", as_if_built_by("attention", fail_to_build), ()))
    RELEASE_BUILD.set()
    patched, report = accelerate_model(wan, norms=False)
    background = precompile_in_background(wan, 32, 32, 9, report=report, workers=1)
    assert background.finished.wait(timeout=10)
    assert (background.done, background.total, background.built) == (1, 2, [])
    assert background.error == "RuntimeError: nvcc fatal: out of memory"
    assert report.waiting() == ["attention"]  # the norms, loaded before the failure, stay in use
    assert ("compile failed: RuntimeError: nvcc fatal: out of memory; for the attention kernels ComfyUI's ops and cuDNN "
            "attention run instead" in report.lines())
    route = patched.model_options["transformer_options"]["optimized_attention_override"]
    route(None, *(torch.randn(1, 20, 256) for _ in range(3)), 2)
    assert report.reasons["attention"] == STILL_COMPILING



def test_the_gates_open_group_by_group(wan, on_hopper, held_jobs):
    """The norm kernels loaded while attention's still compile: the blocks and norms run the kernels (here their
    reference paths), attention stays on cuDNN; once attention's are in, it is routed too."""
    from svi_infinity.kernels.dispatch import STILL_COMPILING
    from svi_infinity.kernels.model_patch import ATTENTION_KERNELS, NORM_KERNELS, accelerate_model, precompile_in_background

    held_jobs[:] = [("norm kernel", build_now, ("norm kernel",)),
                    ("attention kernel", as_if_built_by("attention", build_when_released), ("attention kernel",))]
    patched, report = accelerate_model(wan)
    background = precompile_in_background(wan, 32, 32, 9, report=report, workers=1)
    assert report.gates[NORM_KERNELS].wait(timeout=10)
    assert report.waiting() == [ATTENTION_KERNELS]
    assert ("kernels compiling in the background: 1/2 built; until the attention kernels are in, ComfyUI's ops and "
            "cuDNN attention run" in report.lines())
    _sample_two_steps(patched)
    assert report.ran[("rms_norm_rope", "reference")] and report.ran[("layer_norm", "reference")]
    assert {op for op, reason in report.reasons.items() if reason == STILL_COMPILING} == {"attention"}
    RELEASE_BUILD.set()
    assert background.finished.wait(timeout=10) and report.waiting() == []
    report.ran.clear()
    report.reasons.clear()
    _sample_two_steps(patched)
    assert report.ran[("attention", "reference")] and report.reasons.get("attention") != STILL_COMPILING


def test_a_second_background_compile_waits_for_the_first(held_jobs):
    """As the kernel nodes of Wan 2.2's two experts start theirs: the second builds only once the first is done."""
    from svi_infinity.kernels.parallel_compile import BackgroundCompile

    first = BackgroundCompile(held_jobs)
    deadline = time.monotonic() + 10
    while not BUILDS_IN_PROGRESS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert BUILDS_IN_PROGRESS == ["held kernel"]
    seen = []
    second = BackgroundCompile([("probe", note_builds_in_progress, (seen,))])
    assert not second.finished.wait(timeout=0.5)  # queued behind the held build
    RELEASE_BUILD.set()
    assert first.finished.wait(timeout=10) and second.finished.wait(timeout=10)
    assert seen == [[]] and not first.error and not second.error


def _run_kernel_node(wan, **inputs):
    """SVI Fast Kernels on `wan` at a tiny precompile size: (model, VAE, report lines)."""
    from svi_infinity.nodes.kernel_accel import SVIKernelAccelerate

    output = SVIKernelAccelerate.execute(model=wan, attention=True, attention_backend="auto", norms=True,
                                         precompile_width=32, precompile_height=32, precompile_length=9, **inputs)
    patched, _, faster_vae = output.args
    return patched, faster_vae, output.ui["text"]


def test_the_node_returns_while_its_kernels_compile_in_the_background(wan, on_hopper, held_jobs):
    patched, _, lines = _run_kernel_node(wan)
    assert patched.object_patches
    assert COMPILING in lines  # the held build has not finished: the node did not wait for it


def test_the_node_before_the_first_step_waits_for_every_kernel(wan, on_hopper, held_jobs):
    from svi_infinity.kernels.model_patch import BEFORE_FIRST_STEP

    RELEASE_BUILD.set()
    _, _, lines = _run_kernel_node(wan, precompile_mode=BEFORE_FIRST_STEP)
    assert lines[-1] == "precompiled: held kernel" and not any("background" in line for line in lines)


def test_the_nodes_fast_vae_keeps_comfyuis_norms_while_the_kernels_compile(wan, on_hopper, held_jobs, monkeypatch):
    import comfy.sd

    from svi_infinity.demo.tiny_models import wan21_vae_state_dict
    from svi_infinity.pipeline import fast_vae

    vae = comfy.sd.VAE(sd=wan21_vae_state_dict(dim=8, seed=3))
    monkeypatch.setattr(fast_vae, "runs_on_cuda", lambda vae: True)  # the CPU VAE stands in for a CUDA one
    held_jobs[:] = [("held kernel", as_if_built_by("vae_norm", build_when_released), ("held kernel",))]
    norm = fast_vae.norm_silu_pairs(vae.first_stage_model.encoder)[0][0]
    fused_at_call = []
    hook = norm.register_forward_pre_hook(lambda module, args: fused_at_call.append("forward" in vars(module)))
    try:
        _, faster_vae, lines = _run_kernel_node(wan, vae=vae)
        faster_vae.encode(torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4)))
    finally:
        hook.remove()
    assert COMPILING.replace("norms", "VAE norms") in lines and set(fused_at_call) == {False}
