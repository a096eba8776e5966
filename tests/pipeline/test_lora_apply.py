"""LoRAs applied through ComfyUI's patcher change exactly the targeted weights by strength * scale * B @ A."""

import pytest
import torch

from svi_infinity.demo.tiny_models import (lora_target_shapes, random_lora, wan_dit_state_dict, write_lora,
                                           write_peft_adapter_folder)
from svi_infinity.svi.lora_formats import LoraFormatError


@pytest.fixture(scope="module")
def base(comfy_runtime, tmp_path_factory):
    import comfy.sd

    path = comfy_runtime.models_dir / "diffusion_models" / comfy_runtime.tiny_models["wan21_i2v"]
    patcher = comfy.sd.load_diffusion_model(str(path))
    state = wan_dit_state_dict(image_branch=True, seed=1)  # the same tensors write_tiny_model_set saved
    return patcher, lora_target_shapes(state), tmp_path_factory.mktemp("loras")


def patched_weights(patcher) -> dict[str, torch.Tensor]:
    patcher.patch_model()
    try:
        return {k: v.detach().float().clone() for k, v in patcher.model.state_dict().items() if k.endswith(".weight")}
    finally:
        patcher.unpatch_model()


@pytest.mark.parametrize("fmt", ["peft", "pipe_dit", "diffusion_model", "kohya"])
def test_each_format_patches_by_the_expected_delta(base, fmt):
    from svi_infinity.pipeline.lora import apply_lora

    patcher, shapes, folder = base
    pairs = random_lora(shapes, rank=4, seed=11)
    alpha = 2.0 if fmt == "kohya" else None
    path = write_lora(folder / f"{fmt}.safetensors", pairs, fmt, alpha=alpha, dtype=torch.float32)
    before = patched_weights(patcher)
    lora_patched, report = apply_lora(patcher, path, 0.7)
    after = patched_weights(lora_patched)
    scale = (alpha / 4) if alpha else 1.0
    for key, weight in before.items():
        module = key[len("diffusion_model."):-len(".weight")]
        if module in pairs:
            down, up = pairs[module]
            expected = weight + 0.7 * scale * (up @ down)
            assert torch.allclose(after[key], expected, atol=2e-2, rtol=2e-2), key
            assert (after[key] - weight).abs().max() > 1e-3
        else:
            assert torch.equal(after[key], weight), key
    assert report.modules == len(pairs) == report.tensors_patched
    assert patched_weights(patcher).keys() == before.keys()
    assert all(torch.equal(patched_weights(patcher)[k], before[k]) for k in list(before)[:8])


def test_stacking_adds_both_deltas_and_peft_folder_scaling(base):
    from svi_infinity.pipeline.lora import apply_lora

    patcher, shapes, folder = base
    svi, speed = random_lora(shapes, rank=4, seed=21), random_lora(shapes, rank=4, seed=22)
    adapter = write_peft_adapter_folder(folder / "adapter", svi, rank=4, lora_alpha=2.0)
    speed_path = write_lora(folder / "speed.safetensors", speed, "kohya", alpha=4.0, dtype=torch.float32)
    before = patched_weights(patcher)
    stacked, _ = apply_lora(patcher, adapter, 1.0)
    stacked, _ = apply_lora(stacked, speed_path, 0.5)
    after = patched_weights(stacked)
    key = "diffusion_model.blocks.1.ffn.0.weight"
    expected = before[key] + 0.5 * (svi["blocks.1.ffn.0"][1] @ svi["blocks.1.ffn.0"][0]) \
        + 0.5 * (speed["blocks.1.ffn.0"][1] @ speed["blocks.1.ffn.0"][0])
    assert torch.allclose(after[key], expected, atol=2e-2, rtol=2e-2)
    assert [entry["name"] for entry in stacked.get_attachment("svi_loras")] == ["adapter", "speed.safetensors"]


def test_wrong_lora_fails_and_leaves_the_model_usable(base):
    from svi_infinity.pipeline.lora import apply_lora

    patcher, _, folder = base
    wrong = lora_target_shapes(wan_dit_state_dict(image_branch=True, dim=256, layers=2))
    path = write_lora(folder / "wrong.safetensors", random_lora(wrong, rank=4), "peft")
    before = patched_weights(patcher)
    with pytest.raises(LoraFormatError, match="another model size"):
        apply_lora(patcher, path, 1.0)
    after = patched_weights(patcher)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_the_style_lora_is_reweighted_per_clip_on_a_clone(base):
    """SVI LoRA Stack's style LoRA attaches its patches; with_style_strength makes a clone where it acts at another
    strength (SVI Long Video's per-line style=), leaving the SVI LoRA and the given model as they were."""
    from svi_infinity.pipeline.lora import apply_lora, has_style_lora, with_style_strength

    patcher, shapes, folder = base
    svi, style = random_lora(shapes, rank=4, seed=31), random_lora(shapes, rank=4, seed=32)
    svi_path = write_lora(folder / "svi_for_style.safetensors", svi, "peft", dtype=torch.float32)
    style_path = write_lora(folder / "style.safetensors", style, "peft", dtype=torch.float32)
    stacked, _ = apply_lora(patcher, svi_path, 1.0)
    assert not has_style_lora(stacked)
    stacked, _ = apply_lora(stacked, style_path, 0.5, reweightable=True)
    before = patched_weights(stacked)
    key, module = "diffusion_model.blocks.0.self_attn.q.weight", "blocks.0.self_attn.q"
    style_delta = style[module][1] @ style[module][0]
    for strength in (0.25, 1.5, 0.0):
        after = patched_weights(with_style_strength(stacked, strength))
        assert torch.allclose(after[key], before[key] + (strength - 0.5) * style_delta, atol=2e-2, rtol=2e-2)
    assert torch.equal(patched_weights(stacked)[key], before[key])
    assert torch.equal(patched_weights(with_style_strength(stacked, 0.5))[key], before[key])
    with pytest.raises(LoraFormatError, match="no style LoRA"):
        with_style_strength(patcher, 1.0)
