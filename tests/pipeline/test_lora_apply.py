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


def write_tensors(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def peft_tensors(pairs):
    from svi_infinity.demo.tiny_models import lora_tensors_in_format

    return lora_tensors_in_format(pairs, "diffusion_model")


def comfyui_leaves_weights_unchanged(patcher, tensors, module):
    """What ComfyUI's own patch math does with such a file: True when it logs an error and keeps the weight."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    patches = comfy.lora.load_lora(tensors, key_map, log_missing=False)
    key = f"diffusion_model.{module}.weight"
    weight = patcher.model.diffusion_model.get_submodule(module).weight.detach().float()
    return torch.equal(comfy.lora.calculate_weight([(1.0, patches[key], 1.0, None, None)], weight.clone(), key), weight)


@pytest.mark.parametrize("breakage, module, phrase", [
    ("lora_B of rank 3", "blocks.0.ffn.0", "lora_A rank 4 does not match lora_B rank 3"),
    ("3-D lora_A (an extra input axis)", "blocks.1.self_attn.q", "update but the model's weight is 128x128"),
    ("conv LoRA with a 1x1x1 kernel on the 1x2x2 patch embedding", "patch_embedding", "update but the model's weight is 128x36x1x2x2"),
])
def test_pairs_that_comfyui_would_not_apply_are_refused_naming_the_module(base, breakage, module, phrase):
    """Each of these shapes is one ComfyUI accepts as a patch but then fails on (it logs and leaves the weight)."""
    from svi_infinity.pipeline.lora import apply_lora

    patcher, shapes, folder = base
    pairs = random_lora(shapes, rank=4, seed=31)
    tensors = peft_tensors(pairs)
    generator = torch.Generator().manual_seed(1)
    if breakage.startswith("lora_B"):
        tensors[f"diffusion_model.{module}.lora_B.weight"] = torch.randn(256, 3, generator=generator)
    elif breakage.startswith("3-D"):
        tensors[f"diffusion_model.{module}.lora_A.weight"] = torch.randn(4, 128, 2, generator=generator)
    else:
        for other in [m for m in pairs if m.startswith("blocks.")]:  # a conv-only LoRA
            tensors.pop(f"diffusion_model.{other}.lora_A.weight"), tensors.pop(f"diffusion_model.{other}.lora_B.weight")
        tensors["diffusion_model.patch_embedding.lora_A.weight"] = torch.randn(4, 36, 1, 1, 1, generator=generator)
        tensors["diffusion_model.patch_embedding.lora_B.weight"] = torch.randn(128, 4, 1, 1, 1, generator=generator)
    assert comfyui_leaves_weights_unchanged(patcher, tensors, module), "the breakage must be one ComfyUI drops silently"
    path = write_tensors(folder / f"broken_{module}.safetensors", tensors)
    with pytest.raises(LoraFormatError, match=rf"{module}: .*{phrase}"):
        apply_lora(patcher, path, 1.0)


def test_pair_on_a_1d_weight_and_a_misshapen_diff_are_refused(base):
    from svi_infinity.pipeline.lora import apply_lora

    patcher, shapes, folder = base
    tensors = peft_tensors(random_lora(shapes, rank=4, seed=32))
    on_norm = {**tensors, "diffusion_model.blocks.0.norm3.lora_A.weight": torch.randn(4, 128),
               "diffusion_model.blocks.0.norm3.lora_B.weight": torch.randn(128, 4)}
    with pytest.raises(LoraFormatError, match=r"blocks.0.norm3: the model's weight is 1-D"):
        apply_lora(patcher, write_tensors(folder / "norm_pair.safetensors", on_norm), 1.0)
    for suffix, shape, what in ((".diff", (128, 127), "weight is 128x128"), (".diff_b", (127,), "bias is 128")):
        bad = {**tensors, f"diffusion_model.blocks.1.self_attn.o{suffix}": torch.randn(shape)}
        with pytest.raises(LoraFormatError, match=rf"blocks.1.self_attn.o: the LoRA's '\{suffix}' is .* the model's {what}"):
            apply_lora(patcher, write_tensors(folder / f"bad{suffix}.safetensors", bad), 1.0)
    good = {**tensors, "diffusion_model.blocks.1.self_attn.o.diff_b": 0.01 * torch.randn(128),
            "diffusion_model.blocks.0.norm3.diff": 0.01 * torch.randn(128)}
    _, report = apply_lora(patcher, write_tensors(folder / "good_diffs.safetensors", good), 1.0)
    assert report.tensors_patched == len(shapes) + 2


def test_a_patch_that_changes_no_weight_is_refused_after_patching(base, monkeypatch):
    """The check after patching, on its own: with the shape rules switched off, ComfyUI's patch math is probed and a
    LoRA it would not apply (or one whose update is zero) is refused, naming the probed module."""
    from svi_infinity.pipeline.lora import apply_lora
    from svi_infinity.svi import lora_formats

    patcher, shapes, folder = base
    monkeypatch.setattr(lora_formats, "pair_problem", lambda down, up, weight_shape: None)
    pairs = random_lora(shapes, rank=4, seed=33)
    smallest = min(pairs, key=lambda m: shapes[m].numel())
    misshapen = peft_tensors(pairs)
    misshapen[f"diffusion_model.{smallest}.lora_A.weight"] = torch.randn(4, 128, 2)
    with pytest.raises(LoraFormatError, match=rf"leaves {smallest}.weight unchanged"):
        apply_lora(patcher, write_tensors(folder / "misshapen.safetensors", misshapen), 1.0)
    zero = peft_tensors(pairs)
    for module in pairs:
        zero[f"diffusion_model.{module}.lora_B.weight"] = torch.zeros_like(zero[f"diffusion_model.{module}.lora_B.weight"])
    with pytest.raises(LoraFormatError, match="unchanged"):
        apply_lora(patcher, write_tensors(folder / "zero.safetensors", zero), 0.0)
    _, report = apply_lora(patcher, write_tensors(folder / "fine.safetensors", peft_tensors(pairs)), 0.0)
    assert report.tensors_patched == len(pairs)  # strength 0 is allowed: the patch itself is probed at strength 1


def test_adapter_weights_without_their_config_are_refused(base):
    from svi_infinity.pipeline.lora import apply_lora

    patcher, shapes, folder = base
    pairs = random_lora(shapes, rank=4, seed=34)
    adapter = write_peft_adapter_folder(folder / "lonely_adapter", pairs, rank=4, lora_alpha=2.0)
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(LoraFormatError, match="adapter_config.json is not beside it"):
        apply_lora(patcher, adapter / "adapter_model.safetensors", 1.0)


def test_adapter_weights_picked_from_the_loras_list_use_the_config_beside_them(base):
    """ComfyUI lists 'adapter/adapter_model.safetensors'; its alpha / r (here 2 / 4) must scale the update."""
    from svi_infinity.pipeline.lora import apply_lora

    patcher, shapes, folder = base
    pairs = random_lora(shapes, rank=4, seed=35)
    adapter = write_peft_adapter_folder(folder / "listed_adapter", pairs, rank=4, lora_alpha=2.0)
    before = patched_weights(patcher)
    lora_patched, _ = apply_lora(patcher, adapter / "adapter_model.safetensors", 1.0)
    after = patched_weights(lora_patched)
    key, (down, up) = "diffusion_model.blocks.0.self_attn.k.weight", pairs["blocks.0.self_attn.k"]
    assert torch.allclose(after[key], before[key] + 0.5 * (up @ down), atol=2e-2, rtol=2e-2)
