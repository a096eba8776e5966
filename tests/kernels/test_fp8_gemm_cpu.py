"""The fp8 GEMM path on the CPU: the quantisation rules, the weight cache's lifetime under ComfyUI's patcher, and the
fp8 block forward's wiring against ComfyUI's own Wan block (off CUDA its GEMMs run the same scaled product in fp32)."""

import pytest
import torch
import torch.nn.functional as F

E4M3_STEP = 2.0 ** -3  # e4m3 keeps 3 mantissa bits: neighbouring values differ by at most 1/8 of the smaller one


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def rope_freqs(head_dim: int, tokens: int) -> torch.Tensor:
    """Wan's RoPE frequencies for `tokens` positions along one axis, as its forward builds them."""
    from comfy.ldm.flux.layers import EmbedND

    d = head_dim
    ids = torch.zeros(1, tokens, 3)
    ids[0, :, 2] = torch.arange(tokens)
    return EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(ids).movedim(1, 2)


@pytest.fixture(scope="module")
def wan(comfy_runtime):
    import comfy.sd

    path = comfy_runtime.models_dir / "diffusion_models" / comfy_runtime.tiny_models["wan21_i2v"]
    return comfy.sd.load_diffusion_model(str(path))


def test_rows_get_one_scale_each_and_round_to_e4m3():
    from svi_infinity.kernels.fp8_gemm import FP8, FP8_MAX, quantize_rows_reference

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 256, generator=generator) * torch.tensor([1e-3, 0.1, 1, 10, 300, 0]).unsqueeze(1)
    rows = quantize_rows_reference(x.to(torch.bfloat16))
    assert rows.data.dtype == FP8 and rows.data.shape == (6, 256) and rows.scale.shape == (6, 1)
    amax = x.to(torch.bfloat16).float().abs().amax(1)
    assert torch.allclose(rows.scale[:5, 0], amax[:5] / FP8_MAX, rtol=1e-6)
    assert torch.equal(rows.data.float().abs().amax(1)[:5], torch.full((5,), FP8_MAX))  # each row's largest -> 448
    assert torch.isfinite(rows.scale).all() and torch.equal(rows.dequantize()[5], torch.zeros(256))  # all-zero row
    error = (rows.dequantize() - x.to(torch.bfloat16).float()).abs()
    assert (error <= E4M3_STEP / 2 * x.abs() + 1e-30 + rows.scale * 2.0 ** -9).all()  # round to nearest (subnormals too)


def test_gelu_is_applied_before_the_rows_are_quantised():
    from svi_infinity.kernels.fp8_gemm import quantize_rows_reference

    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    with_gelu = quantize_rows_reference(x, gelu=True)
    expected = quantize_rows_reference(F.gelu(x, approximate="tanh"))
    assert torch.equal(with_gelu.data.view(torch.uint8), expected.data.view(torch.uint8))
    assert torch.equal(with_gelu.scale, expected.scale)


def test_a_scale_per_token_keeps_an_outlier_token_from_flattening_the_rest():
    """Why per-token scales: with one scale for all tokens (amax over the tensor), an outlier token pushes the other
    tokens into e4m3's subnormals; a scale per token keeps every token at 3 mantissa bits."""
    from svi_infinity.kernels.fp8_gemm import FP8, quantize_rows_reference

    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    x[7] *= 1e5  # one token 100,000 times louder than the rest
    per_token = quantize_rows_reference(x).dequantize()
    scale = x.abs().amax() / 448
    per_tensor = (x / scale).to(FP8).float() * scale
    others = torch.arange(64) != 7
    assert relative_l2(per_token[others], x[others]) < 0.04
    assert relative_l2(per_tensor[others], x[others]) > 10 * relative_l2(per_token[others], x[others])


def test_a_scaled_linear_computes_the_linear_to_fp8_accuracy():
    from svi_infinity.kernels.fp8_gemm import Fp8Weight, quantize_rows_reference, quantize_weight, scaled_linear

    generator = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(96, 256, generator=generator), torch.randn(128, 256, generator=generator) / 16, torch.randn(128, generator=generator)
    w[5] *= 50  # a loud output channel gets its own scale
    data, scale = quantize_weight(w)
    assert scale.shape == (1, 128) and torch.allclose(scale[0], w.abs().amax(1) / 448)
    out = scaled_linear(quantize_rows_reference(x), Fp8Weight(data, scale, b), torch.float32)
    expected = F.linear(x, w, b)
    assert 5e-3 < relative_l2(out, expected) < 5e-2  # e4m3's error, not zero and not more
    assert relative_l2(out[:, 5], expected[:, 5]) < 5e-2


def test_weight_cache_reuses_an_entry_until_comfyui_changes_the_weight():
    from svi_infinity.kernels.fp8_gemm import Fp8WeightCache

    cache, owner, other = Fp8WeightCache(), object(), object()
    linear = torch.nn.Linear(64, 32)
    first = cache.get(owner, linear, torch.float32)
    assert cache.get(owner, linear, torch.float32) is first
    with torch.no_grad():
        linear.weight.mul_(2)  # an in-place update (ComfyUI's inplace LoRA patching) bumps the tensor's version
    doubled = cache.get(owner, linear, torch.float32)
    assert doubled is not first and torch.allclose(doubled.scale, 2 * first.scale)
    linear.weight = torch.nn.Parameter(torch.randn(32, 64))  # ComfyUI's patcher sets a new tensor
    replaced = cache.get(owner, linear, torch.float32)
    assert replaced is not doubled and torch.allclose(replaced.scale[0], linear.weight.abs().amax(1) / 448)
    with torch.no_grad():
        linear.bias.add_(1)
    assert cache.get(owner, linear, torch.float32) is not replaced  # the bias is part of the entry
    again = cache.get(owner, linear, torch.float32)
    assert cache.get(other, linear, torch.float32) is not again  # another model: this one's copies are dropped
    assert cache.get(owner, linear, torch.float32) is not again


def test_fp8_copies_follow_a_lora_that_comfyuis_patcher_merges_and_removes(wan, tmp_path):
    from safetensors.torch import save_file

    from svi_infinity.demo.tiny_models import lora_target_shapes, lora_tensors_in_format, random_lora, wan_dit_state_dict
    from svi_infinity.kernels.fp8_gemm import Fp8WeightCache, linear_problem
    from svi_infinity.pipeline.lora import apply_lora

    state = wan_dit_state_dict(image_branch=True, seed=1)
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    with_lora, _ = apply_lora(wan, tmp_path / "lora.safetensors", 1.0)
    diffusion_model = wan.model.diffusion_model
    ffn = diffusion_model.blocks[0].ffn[0]
    cache = Fp8WeightCache()
    plain = cache.get(diffusion_model, ffn, torch.float32)
    plain_weight = ffn.weight.detach().clone()
    with_lora.patch_model()
    try:
        assert linear_problem(ffn, torch.zeros(1, ffn.weight.shape[1])) == ""  # merged: a plain resident weight
        merged = cache.get(diffusion_model, ffn, torch.float32)
        dequantized = merged.data.float() * merged.scale.t()
        assert relative_l2(dequantized, ffn.weight) < 0.04 and relative_l2(ffn.weight, plain_weight) > 0.1
    finally:
        with_lora.unpatch_model()
    restored = cache.get(diffusion_model, ffn, torch.float32)
    assert torch.equal(restored.data.view(torch.uint8), plain.data.view(torch.uint8))


def test_linear_problem_names_what_keeps_comfyuis_linear():
    from svi_infinity.kernels.fp8_gemm import linear_problem

    x = torch.zeros(2, 64)
    assert linear_problem(torch.nn.Linear(64, 32), x) == ""
    patched = torch.nn.Linear(64, 32)
    patched.weight_function = [lambda w: w]
    assert linear_problem(patched, x) == "LoRA or other patches applied on the fly"
    assert "multiples of 16" in linear_problem(torch.nn.Linear(64, 40), x)
    assert "offloaded" in linear_problem(torch.nn.Linear(64, 32, device="meta"), x)


def test_comfyui_fp8_scaled_weights_are_used_as_stored(comfy_runtime, tmp_path):
    """A ComfyUI fp8_scaled checkpoint loads as e4m3 QuantizedTensors with one scale each: the cache takes their
    bytes as they are (no second quantisation) with that scale on every output channel."""
    import comfy.sd

    from svi_infinity.demo.quantized_models import write_wan_fp8_scaled
    from svi_infinity.demo.tiny_models import wan_dit_state_dict
    from svi_infinity.kernels.fp8_gemm import Fp8WeightCache, linear_problem

    path = write_wan_fp8_scaled(tmp_path / "wan_fp8_scaled.safetensors", wan_dit_state_dict(image_branch=True, seed=4))
    model = comfy.sd.load_diffusion_model(str(path))
    model.patch_model()
    try:
        linear = model.model.diffusion_model.blocks[0].self_attn.q
        assert linear_problem(linear, torch.zeros(1, 128)) == ""
        entry = Fp8WeightCache().get(model.model.diffusion_model, linear, torch.float32)
        assert entry.data.data_ptr() == linear.weight._qdata.data_ptr()
        assert torch.equal(entry.scale, linear.weight._params.scale.float().expand(1, 128))
        assert torch.allclose(entry.data.float() * entry.scale.t(), linear.weight.dequantize().float())
    finally:
        model.unpatch_model()


def test_a_lora_on_fp8_scaled_weights_is_merged_into_the_stored_e4m3_bytes_the_fp8_path_takes(comfy_runtime, tmp_path):
    """fp8_scaled experts with the SVI and speed LoRAs (the Hopper template): loaded whole, ComfyUI merges each LoRA
    into the e4m3 weight and re-quantises it, so the Linear stays a plain resident weight for the fp8 path, which takes
    the merged bytes as they are."""
    import comfy.sd
    from safetensors.torch import save_file

    from svi_infinity.demo.quantized_models import write_wan_fp8_scaled
    from svi_infinity.demo.tiny_models import lora_target_shapes, lora_tensors_in_format, random_lora, wan_dit_state_dict
    from svi_infinity.kernels.fp8_gemm import Fp8WeightCache, linear_problem
    from svi_infinity.pipeline.lora import apply_lora

    state = wan_dit_state_dict(image_branch=True, seed=4)
    model = comfy.sd.load_diffusion_model(str(write_wan_fp8_scaled(tmp_path / "wan_fp8_scaled.safetensors", state)))
    lora = lora_tensors_in_format(random_lora(lora_target_shapes(state), rank=4, seed=9), "diffusion_model")
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "lora.safetensors"))
    with_lora, _ = apply_lora(model, tmp_path / "lora.safetensors", 1.0)
    linear = model.model.diffusion_model.blocks[0].self_attn.q
    model.patch_model()
    try:
        stored = linear.weight.dequantize().float()
    finally:
        model.unpatch_model()
    with_lora.patch_model()
    try:
        assert linear_problem(linear, torch.zeros(1, 128)) == ""
        merged = linear.weight
        entry = Fp8WeightCache().get(model.model.diffusion_model, linear, torch.float32)
        assert entry.data.data_ptr() == merged._qdata.data_ptr()
        assert relative_l2(merged.dequantize().float(), stored) > 0.05  # the LoRA is in the bytes the fp8 GEMM reads
    finally:
        with_lora.unpatch_model()


def test_fp8_block_forward_computes_wans_block_to_fp8_accuracy(wan):
    """The fp8 block (three norms writing e4m3 rows, eight scaled GEMMs, GELU in the hidden's quantisation, both
    attention forwards mirrored) against ComfyUI's own WanAttentionBlock.forward, I2V image tokens and batch 2."""
    from svi_infinity.kernels.model_patch import KernelReport, _fp8_block_problem, _fused_block_forward

    diffusion_model = wan.model.diffusion_model
    block = diffusion_model.blocks[1]
    tokens = 16
    freqs = rope_freqs(block.self_attn.head_dim, tokens)
    generator = torch.Generator().manual_seed(5)
    dtype = block.modulation.dtype
    x = torch.randn(2, tokens, block.dim, generator=generator).to(dtype)
    e = (0.5 * torch.randn(2, 6, block.dim, generator=generator)).to(dtype)
    context = torch.randn(2, 257 + 7, block.dim, generator=generator).to(dtype)
    assert _fp8_block_problem(block, x) == ""
    report = KernelReport()
    with torch.no_grad():
        expected = block(x, e, freqs, context, context_img_len=257)
        got = _fused_block_forward(block, report, fp8_owner=diffusion_model)(x, e, freqs, context, context_img_len=257)
        update = expected - x  # what the block adds to the residual stream: that is what fp8 rounds
        assert 1e-3 < relative_l2(got - x, update) < 0.08, relative_l2(got - x, update)
    ran = dict(report.ran)
    assert ran[("fp8_gemm", "scaled_mm")] == 8  # q, k, v, o; cross q, o; the FFN's two
    assert ran[("layer_norm", "reference")] == 3 and ran[("fp8_quant", "reference")] == 2
    assert ran[("fp8_quant_gelu", "reference")] == 1 and ("ffn_gelu", "cublaslt") not in ran


def test_a_block_comfyui_patches_on_the_fly_stays_bf16_and_says_why(wan):
    from svi_infinity.kernels.model_patch import KernelReport, _fused_block_forward

    diffusion_model = wan.model.diffusion_model
    block = diffusion_model.blocks[0]
    block.ffn[2].weight_function = [lambda weight, **kwargs: weight]  # as ComfyUI's lowvram / dynamic LoRA patching
    try:
        report = KernelReport()
        x = torch.randn(1, 4, block.dim).to(block.modulation.dtype)
        e = torch.randn(1, 6, block.dim).to(x.dtype)
        freqs = rope_freqs(block.self_attn.head_dim, 4)
        with torch.no_grad():
            expected = block(x, e, freqs, torch.randn(1, 264, block.dim).to(x.dtype))
        with torch.no_grad():
            got = _fused_block_forward(block, report, fp8_owner=diffusion_model)(x, e, freqs, torch.randn(1, 264, block.dim).to(x.dtype))
        assert got.shape == expected.shape
    finally:
        block.ffn[2].weight_function = []
    assert report.ran[("fp8_gemm", "comfyui")] == 1 and ("fp8_gemm", "scaled_mm") not in report.ran
    assert report.reasons["fp8_gemm"] == "LoRA or other patches applied on the fly"


def test_fp8_switch_needs_the_fused_norms_and_says_why(wan, monkeypatch):
    from svi_infinity.kernels import model_patch

    _, report = model_patch.accelerate_model(wan, gemm_precision=model_patch.FP8_GEMMS)  # this CPU: nothing runs
    assert report.gemm_precision == model_patch.BF16
    assert any(line.startswith("not active: fp8 GEMMs: no CUDA device") for line in report.lines()), report.lines()
    monkeypatch.setattr(model_patch.dispatch, "capability_of", lambda device: (9, 0))
    monkeypatch.setattr(model_patch.dispatch, "compile_problem", lambda: "")
    _, report = model_patch.accelerate_model(wan, gemm_precision=model_patch.FP8_GEMMS, norms=False)
    assert "not active: fp8 GEMMs: needs the fused block norms (norms on); GEMMs run in the model's dtype" in report.lines()
    patched, report = model_patch.accelerate_model(wan, gemm_precision=model_patch.FP8_GEMMS)
    assert report.gemm_precision == model_patch.FP8_GEMMS and any(item.startswith("fp8 GEMMs in 2 blocks") for item in report.active)
    with pytest.raises(ValueError, match="gemm_precision"):
        model_patch.accelerate_model(wan, gemm_precision="int4")


def test_precompile_with_fp8_gemms_lists_the_fp8_norms_and_row_kernels(wan, monkeypatch):
    from svi_infinity.kernels import model_patch, parallel_compile

    jobs = []
    monkeypatch.setattr(parallel_compile, "compile_all", lambda given, progress, workers: jobs.extend(given) or [
        parallel_compile.Built(label, 0.0, None) for label, _, _ in given])
    built = model_patch.precompile(wan, 32, 32, 9, attention_backend=None, gemm_precision=model_patch.FP8_GEMMS)
    tokens = 3 * 2 * 2
    ffn_dim = wan.model.diffusion_model.blocks[0].ffn[0].weight.shape[0]
    assert f"GELU + fp8 rows {tokens}x{ffn_dim}" in built and f"fp8 rows {tokens}x128" in built
    assert sum(label.startswith("LayerNorm") and "to fp8" in label for label in built) == 3
    plans = [args[-1] for label, _, args in jobs if label.startswith("LayerNorm")]
    assert sorted(plan.fp8_out for plan in plans) == [False] * 3 + [True] * 3


def test_weights_made_under_inference_mode_are_cached_by_their_storage():
    """Inference tensors keep no version counter (the benchmarks build their random weights that way): the cache
    keys them by storage, reuses the entry, and remakes it when the weight is replaced."""
    from svi_infinity.kernels.fp8_gemm import Fp8WeightCache

    with torch.inference_mode():
        linear = torch.nn.Linear(64, 32)
    cache, owner = Fp8WeightCache(), object()
    first = cache.get(owner, linear, torch.float32)
    assert cache.get(owner, linear, torch.float32) is first
    with torch.inference_mode():
        linear.weight = torch.nn.Parameter(torch.randn(32, 64), requires_grad=False)
    assert cache.get(owner, linear, torch.float32) is not first
