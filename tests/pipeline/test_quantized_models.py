"""The pack on quantised Wan: GGUF (Q8_0, Q4_K) through ComfyUI-GGUF's real loader, and ComfyUI's fp8_scaled files.

Tiny files are written in the test (demo/quantized_models.py) and loaded by the real loaders: UnetLoaderGGUF
(ComfyUI-GGUF at $COMFYUI_GGUF_PATH) and ComfyUI's UNETLoader. Expected values come from the files themselves,
dequantised by the gguf package's own numpy code or by fp8 * scale, never from the code under test.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from svi_infinity.demo.quantized_models import QUANTIZED_DIM, QUANTIZED_FORMATS, quantize_q4_k, write_quantized_model
from svi_infinity.demo.tiny_models import lora_target_shapes, random_lora, wan_dit_state_dict, write_lora

GGUF_FORMATS = ("Q8_0", "Q4_K")
STRENGTH = 0.7


def runtime_for(fmt, request):
    return request.getfixturevalue("comfy_gguf_runtime" if fmt in GGUF_FORMATS else "comfy_runtime")


def load_model(fmt, file_name):
    """The MODEL as a user's graph gets it: UnetLoaderGGUF for .gguf files, ComfyUI's UNETLoader for fp8_scaled."""
    import nodes

    if fmt in GGUF_FORMATS:
        return nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(file_name)[0]
    return nodes.UNETLoader().load_unet(file_name, "default")[0]


def expert_state(seed=2):
    """The tensors write_quantized_model_set saves as the Wan 2.2 high-noise expert (before quantisation)."""
    return wan_dit_state_dict(image_branch=False, dim=QUANTIZED_DIM, ffn_dim=2 * QUANTIZED_DIM, layers=2, seed=seed)


def file_weight(fmt, path: Path, name: str) -> torch.Tensor:
    """A tensor of the file in float32, decoded independently of the loaders: gguf's numpy dequantiser, or fp8 * scale."""
    if fmt in GGUF_FORMATS:
        import gguf.quants

        tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
        return torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
    from safetensors.torch import load_file

    state = load_file(str(path))
    scale_key = name.removesuffix(".weight") + ".scale_weight"
    return state[name].float() * (state[scale_key].float() if scale_key in state else 1.0)


def test_q4_k_blocks_decode_with_ggufs_own_dequantizer(gguf_package):
    """The hand-written Q4_K encoder: the gguf package's numpy decoder reads the values back (to 4-bit precision)."""
    gguf = gguf_package

    generator = np.random.default_rng(0)
    rows = generator.standard_normal((6, 512)).astype(np.float32) * np.exp(generator.standard_normal((6, 1))).astype(np.float32)
    rows[1] = -np.abs(rows[1]) - 0.5  # all negative: the sub-block minimum carries the values
    rows[2, :256] = 0.25  # a constant super-block
    blocks = quantize_q4_k(rows)
    assert blocks.shape == (6, 2 * 144) and blocks.dtype == np.uint8
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)
    assert decoded.shape == rows.shape
    assert np.linalg.norm(decoded - rows) / np.linalg.norm(rows) < 0.1
    sub_blocks = rows.reshape(-1, 32)
    step = (sub_blocks.max(axis=1) - np.minimum(sub_blocks.min(axis=1), 0)) / 15
    assert (np.abs(decoded - rows).reshape(-1, 32).max(axis=1) <= step * 0.75 + 1e-3).all()
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(rows[:, :128])


def test_q4_k_blocks_match_comfyui_gguf_dequantizer(comfy_gguf_runtime):
    import sys

    import gguf.quants

    dequant = next(module for name, module in sys.modules.items() if name.endswith("ComfyUI-GGUF.dequant"))
    rows = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    blocks = quantize_q4_k(rows)
    ours = dequant.dequantize(torch.from_numpy(blocks), gguf.GGMLQuantizationType.Q4_K, torch.Size(rows.shape), dtype=torch.float32)
    assert torch.equal(ours, torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)))


@pytest.mark.parametrize("fmt", QUANTIZED_FORMATS)
def test_lora_shapes_come_from_the_modules_not_the_state_dict(fmt, request, quantized_models):
    """ComfyUI-GGUF's state_dict() holds meta tensors of the raw byte shape; the LoRA loader sees the logical shapes."""
    from svi_infinity.pipeline.lora import model_weight_shapes

    runtime_for(fmt, request)
    model = load_model(fmt, quantized_models(fmt)["wan22_high"])
    state = expert_state()
    shapes = model_weight_shapes(model)
    for key, tensor in state.items():
        if key.endswith(".weight"):
            assert shapes[key[: -len(".weight")]] == tuple(tensor.shape), key
    raw = model.model.state_dict()["diffusion_model.blocks.0.ffn.0.weight"]
    if fmt in GGUF_FORMATS:  # the loader behaviour this guards against
        assert raw.is_meta and tuple(raw.shape) != tuple(state["blocks.0.ffn.0.weight"].shape)


@pytest.mark.parametrize("fmt", QUANTIZED_FORMATS)
def test_lora_changes_the_quantized_models_forward(fmt, request, quantized_models, tmp_path):
    """SVI LoRA Stack's apply_lora on a quantised model: ComfyUI-GGUF's own patcher class is kept, and once loaded a
    Linear computes x @ (W + strength * B @ A)^T + b, with W decoded from the file independently."""
    import comfy.model_management

    from svi_infinity.pipeline.lora import apply_lora

    runtime = runtime_for(fmt, request)
    names = quantized_models(fmt)
    model = load_model(fmt, names["wan22_high"])
    pairs = random_lora(lora_target_shapes(expert_state()), rank=4, seed=9)
    patched, report = apply_lora(model, write_lora(tmp_path / "lora.safetensors", pairs, "peft", dtype=torch.float32), STRENGTH)
    assert type(patched) is type(model) and report.tensors_patched == len(pairs)
    if fmt in GGUF_FORMATS:
        assert type(model).__name__ == "GGUFModelPatcher"
    path = runtime.models_dir / "diffusion_models" / names["wan22_high"]
    x = torch.randn(3, QUANTIZED_DIM, generator=torch.Generator().manual_seed(5))
    try:
        for module_path in ("blocks.0.ffn.0", "blocks.1.cross_attn.o"):
            weight, bias = file_weight(fmt, path, f"{module_path}.weight"), file_weight(fmt, path, f"{module_path}.bias")
            down, up = pairs[module_path]
            plain, expected = x @ weight.T + bias, x @ (weight + STRENGTH * up @ down).T + bias
            module = patched.model.diffusion_model.get_submodule(module_path)
            comfy.model_management.load_models_gpu([patched])
            with torch.no_grad():
                with_lora = module(x).float()
            comfy.model_management.load_models_gpu([model])
            with torch.no_grad():
                without = module(x).float()
            # fp8_scaled: ComfyUI re-quantises the patched weight to fp8, an error of a few % of the update
            tolerance = 0.15 if fmt == "fp8_scaled" else 0.01
            assert (with_lora - expected).norm() < tolerance * (expected - plain).norm(), module_path
            assert (without - plain).norm() < 0.01 * (expected - plain).norm(), module_path
    finally:
        comfy.model_management.unload_all_models()


@pytest.mark.parametrize("fmt", QUANTIZED_FORMATS)
def test_fingerprint_reads_no_meta_follows_the_weights_and_ignores_loaded_patches(fmt, request, quantized_models, tmp_path):
    import comfy.model_management

    from svi_infinity.pipeline.lora import apply_lora
    from svi_infinity.pipeline.model_identity import model_fingerprint

    runtime = runtime_for(fmt, request)
    names = quantized_models(fmt)
    model = load_model(fmt, names["wan22_high"])
    fingerprint = model_fingerprint(model)
    assert fingerprint == model_fingerprint(load_model(fmt, names["wan22_high"]))

    changed = expert_state()
    changed["blocks.1.ffn.2.weight"] = expert_state(seed=99)["blocks.1.ffn.2.weight"]  # one block weight differs
    other = write_quantized_model(runtime.models_dir / "diffusion_models" / f"one_weight_differs_{names['wan22_high']}", changed, fmt)
    assert model_fingerprint(load_model(fmt, other.name))["weights_sha256"] != fingerprint["weights_sha256"]

    pairs = random_lora(lora_target_shapes(changed), rank=4, seed=3)
    patched, _ = apply_lora(model, write_lora(tmp_path / "lora.safetensors", pairs, "peft", dtype=torch.float32), 1.0)
    try:
        comfy.model_management.load_models_gpu([patched])  # the LoRA now patched into the shared weights
        assert model_fingerprint(patched)["weights_sha256"] == fingerprint["weights_sha256"]
        assert model_fingerprint(model) == fingerprint
        assert [lora["name"] for lora in model_fingerprint(patched)["loras"]] == ["lora.safetensors"]
    finally:
        comfy.model_management.unload_all_models()


def test_fp8_scaled_metadata_layout_loads_the_same_weights(comfy_runtime, tmp_path):
    """The newer layout (weight_scale keys + _quantization_metadata) gives the same model as the scaled_fp8 marker one."""
    from svi_infinity.demo.quantized_models import write_wan_fp8_scaled
    from svi_infinity.pipeline.lora import model_weight_shapes

    folder = comfy_runtime.models_dir / "diffusion_models"
    state = expert_state(seed=12)
    legacy = write_wan_fp8_scaled(folder / "svi_tiny_fp8_legacy_random.safetensors", state)
    new = write_wan_fp8_scaled(folder / "svi_tiny_fp8_metadata_random.safetensors", state, fp8_layout="metadata")
    models = [load_model("fp8_scaled", path.name) for path in (legacy, new)]
    assert model_weight_shapes(models[0]) == model_weight_shapes(models[1])
    for model in models:
        weight = model.model.diffusion_model.blocks[0].self_attn.q.weight
        assert type(weight).__name__ == "QuantizedTensor"
        assert torch.equal(weight.dequantize().float(), file_weight("fp8_scaled", legacy, "blocks.0.self_attn.q.weight"))


@pytest.mark.parametrize("fmt", GGUF_FORMATS)
def test_kernel_nodes_fused_block_runs_gguf_blocks_like_wan(fmt, comfy_gguf_runtime, quantized_models):
    """SVI Fast Kernels' patched block forward on GGUF weights (reference dispatch on the CPU) is the block's own."""
    from comfy.ldm.flux.layers import EmbedND

    from svi_infinity.kernels.model_patch import KernelReport, _fused_block_forward, _plain_linear_problem

    model = load_model(fmt, quantized_models(fmt)["wan22_high"])
    block = model.model.diffusion_model.blocks[0]
    d = block.self_attn.head_dim
    ids = torch.zeros(1, 8, 3)
    ids[0, :, 2] = torch.arange(8)
    freqs = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(ids).movedim(1, 2)
    generator = torch.Generator().manual_seed(4)
    x, e = torch.randn(1, 8, block.dim, generator=generator), 0.5 * torch.randn(1, 6, block.dim, generator=generator)
    context = torch.randn(1, 7, block.dim, generator=generator)
    # quantised weights never go to the GEMM with the GELU epilogue (on any device)
    assert _plain_linear_problem(block.ffn[0], x) in ("weights cast or patched on the fly", "quantized weights or no bias")
    with torch.no_grad():
        assert torch.equal(_fused_block_forward(block, KernelReport())(x, e, freqs, context), block(x, e, freqs, context))


TINY_LENGTH = 13  # frames per clip (4 latent frames): 1.0 modes share M = 5 frames, 9 would be too short


def saved_video_frames(runtime, run, prefix: str) -> int:
    import av

    name = Path(prefix).name
    videos = [runtime.output_dir / item["subfolder"] / item["filename"] for output in run.outputs.values()
              for item in output.get("images", []) if item.get("type") == "output" and item["filename"].startswith(name)
              and item["filename"].endswith(".mp4")]
    assert videos, f"SaveVideo wrote nothing: {run.outputs}"
    with av.open(str(videos[-1])) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("fmt", QUANTIZED_FORMATS)
@pytest.mark.parametrize("name", sorted(__import__("svi_infinity.demo.workflows", fromlist=["SHIPPED"]).SHIPPED))
def test_shipped_workflow_runs_on_quantized_models(name, fmt, request, quantized_models):
    """Every shipped workflow shape, its LoRA stacks and (long-video workflows) the run fingerprint, on quantised experts:
    GGUF through UnetLoaderGGUF, fp8_scaled through ComfyUI's UNETLoader."""
    from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

    runtime = runtime_for(fmt, request)
    clips = 3 if "3clips" in name else 2
    prompt = with_tiny_models(load_api_workflow(name), quantized_models(fmt), width=32, height=32, length=TINY_LENGTH,
                              num_clips=clips, gguf=fmt in GGUF_FORMATS)
    loaders = {node["class_type"] for node in prompt.values() if "unet_name" in node["inputs"]}
    assert loaders == {"UnetLoaderGGUF" if fmt in GGUF_FORMATS else "UNETLoader"}
    for node in prompt.values():
        if node["class_type"] == "SVILongVideo":
            node["inputs"]["filename_prefix"] = f"svi/{fmt}_{name}"
    run = runtime.run_prompt(prompt)
    assert run.success, run.error
    stacks = [run.outputs[k]["text"] for k, v in prompt.items() if v["class_type"] == "SVILoraStack" and k in run.outputs]
    assert stacks and all("20 weights patched" in " ".join(lines) for lines in stacks)
    save = next(v for v in prompt.values() if v["class_type"] == "SaveVideo")
    assert saved_video_frames(runtime, run, save["inputs"]["filename_prefix"]) == TINY_LENGTH + (clips - 1) * (TINY_LENGTH - 5)
