"""On a Hopper GPU: GGUF experts (Q8_0, Q4_K) loaded by ComfyUI-GGUF and fp8_scaled ones loaded by ComfyUI, with a
LoRA, through SVI Fast Kernels.

The kernel node must leave the quantised Linears to their loaders' ops (weights dequantised on the fly, so no fused
GEMM) and still agree with ComfyUI's own path; the model's fingerprint must not change when its weights move to the GPU.
Needs ComfyUI-GGUF at $COMFYUI_GGUF_PATH and the gguf package on the GPU machine too.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from svi_infinity.kernels.dispatch import kernel_gate

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
elif kernel_gate("cuda"):
    pytestmark = pytest.mark.skip(reason=kernel_gate("cuda"))


@pytest.fixture(scope="module")
def comfyui_gguf(comfy_modules):
    """ComfyUI-GGUF's package, imported as ComfyUI imports a custom node folder."""
    path = Path(os.environ.get("COMFYUI_GGUF_PATH") or "/opt/ComfyUI-GGUF")
    if not (path / "nodes.py").is_file() or importlib.util.find_spec("gguf") is None:
        pytest.fail(f"the GPU run needs ComfyUI-GGUF at {path} (COMFYUI_GGUF_PATH) and the gguf package", pytrace=False)
    name = "ComfyUI-GGUF"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_K", "fp8_scaled"])
def test_quantized_expert_with_lora_through_the_kernel_node(fmt, comfyui_gguf, tmp_path):
    import folder_paths
    import nodes

    from svi_infinity.demo.quantized_models import quantized_file_name, write_quantized_model
    from svi_infinity.demo.tiny_models import lora_target_shapes, random_lora, wan_dit_state_dict, write_lora
    from svi_infinity.kernels.model_patch import accelerate_model
    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.pipeline.lora import apply_lora
    from svi_infinity.pipeline.model_identity import model_fingerprint

    folder = Path(folder_paths.get_folder_paths("diffusion_models")[0])
    models = []
    for seed in (3, 4):
        state = wan_dit_state_dict(image_branch=False, dim=512, ffn_dim=1024, layers=2, seed=seed)  # 4 heads of 128
        path = write_quantized_model(folder / f"svi_gpu_{seed}_{quantized_file_name('wan22_high', fmt)}", state, fmt)
        if fmt == "fp8_scaled":
            models.append(nodes.UNETLoader().load_unet(path.name, "default")[0])
        else:
            models.append(comfyui_gguf.nodes.UnetLoaderGGUF().load_unet(path.name)[0])
    high, low = models
    fingerprint = model_fingerprint(high)
    pairs = random_lora(lora_target_shapes(state), rank=4, seed=9)
    with_lora, _ = apply_lora(high, write_lora(tmp_path / "lora.safetensors", pairs, "peft", dtype=torch.float32), 0.8)
    generator = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 16, 5, 24, 40)
    y = {"concat_latent_image": torch.randn(1, 16, 5, 24, 40, generator=generator), "concat_mask": torch.ones(1, 1, 5, 24, 40)}
    text = [[torch.randn(1, 512, 4096, generator=generator), {"pooled_output": None, **y}]]
    sigmas = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0])
    plain = sample_clip(with_lora, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    without_lora = sample_clip(high, low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    assert ((plain - without_lora).norm() / plain.norm()).item() > 1e-2, "the LoRA must change the expert's result"
    fast, report = accelerate_model(with_lora)
    fast_low, _ = accelerate_model(low)
    assert report.active, report.lines()
    patched = sample_clip(fast, fast_low, text, text, latent, seed=1, sigmas=sigmas, boundary=0.9, cfg=1.0)
    assert ((patched.float() - plain.float()).norm() / plain.float().norm()).item() < 2e-2
    ran = dict(report.ran)
    assert ran.get(("ffn_gelu", "cublaslt"), 0) == 0 and ran.get(("ffn_gelu", "comfyui"), 0) > 0, report.lines()
    assert ran.get(("layer_norm", "tilelang"), 0) > 0, report.lines()
    assert model_fingerprint(high) == fingerprint  # now read from GPU-resident GGUF tensors
