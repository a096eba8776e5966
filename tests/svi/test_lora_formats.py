"""Every LoRA naming scheme in the wild reads into the same canonical tensors; bad files fail with a reason."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from svi_infinity.svi.lora_formats import (LoraFormatError, PeftScaling, check_block_coverage, normalize_lora,
                                           read_lora_source)

DIM, FFN = 32, 64
TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
           "cross_attn.o", "ffn.0", "ffn.2")


def model_modules(dim=DIM, blocks=2) -> dict[str, tuple[int, int]]:
    shapes = {}
    for b in range(blocks):
        for target in TARGETS:
            out_f, in_f = (FFN, dim) if target == "ffn.0" else (dim, FFN) if target == "ffn.2" else (dim, dim)
            shapes[f"blocks.{b}.{target}"] = (out_f, in_f)
        shapes[f"blocks.{b}.norm3"] = (dim,)
    return shapes


def random_pairs(rank=4, dim=DIM, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(rank, s[1], generator=generator), torch.randn(s[0], rank, generator=generator))
            for m, s in model_modules(dim).items() if len(s) == 2}


def in_format(pairs, fmt, alpha=None):
    from svi_infinity.demo.tiny_models import lora_tensors_in_format

    return lora_tensors_in_format(pairs, fmt, alpha)


@pytest.mark.parametrize("fmt", ["peft", "pipe_dit", "diffusion_model", "kohya"])
def test_every_format_reads_to_the_same_tensors(fmt):
    pairs = random_pairs()
    alpha = 4.0 if fmt in ("kohya", "diffusion_model") else None
    result = normalize_lora(in_format(pairs, fmt, alpha), model_modules())
    assert result.modules == sorted(pairs)
    for module, (down, up) in pairs.items():
        assert torch.equal(result.tensors[f"diffusion_model.{module}.lora_A.weight"], down)
        assert torch.equal(result.tensors[f"diffusion_model.{module}.lora_B.weight"], up)
        alpha_key = f"diffusion_model.{module}.alpha"
        assert (alpha_key in result.tensors) == (alpha is not None)
        if alpha is not None:
            assert float(result.tensors[alpha_key]) == alpha


def test_peft_adapter_scaling_patterns_and_rslora(tmp_path):
    from svi_infinity.demo.tiny_models import write_peft_adapter_folder

    pairs = random_pairs(rank=4)
    folder = write_peft_adapter_folder(tmp_path / "adapter", pairs, rank=4, lora_alpha=8, use_rslora=False,
                                       rank_pattern={"ffn.0": 2}, alpha_pattern={"self_attn.q": 2})
    tensors, scaling = read_lora_source(folder)
    result = normalize_lora(tensors, model_modules(), scaling)
    # ComfyUI scales by alpha / rank(tensor); PEFT by lora_alpha / r per module: alpha must be scale * tensor rank.
    assert float(result.tensors["diffusion_model.blocks.0.self_attn.k.alpha"]) == pytest.approx(8 / 4 * 4)
    assert float(result.tensors["diffusion_model.blocks.1.self_attn.q.alpha"]) == pytest.approx(2 / 4 * 4)
    assert float(result.tensors["diffusion_model.blocks.0.ffn.0.alpha"]) == pytest.approx(8 / 2 * 4)
    rs = PeftScaling(r=4, lora_alpha=8, use_rslora=True)
    assert rs.scale("blocks.0.self_attn.k") == pytest.approx(8 / math.sqrt(4))
    same_file, _ = read_lora_source(folder / "adapter_model.safetensors")
    assert same_file.keys() == tensors.keys()


def test_speed_lora_diff_keys_are_kept():
    tensors = in_format(random_pairs(), "kohya", alpha=4.0)
    tensors["lora_unet_blocks_0_norm3.diff"] = torch.randn(DIM)
    tensors["diffusion_model.blocks.1.self_attn.q.diff_b"] = torch.randn(DIM)
    result = normalize_lora(tensors, model_modules())
    assert result.diff_keys == ["blocks.0.norm3.diff", "blocks.1.self_attn.q.diff_b"]
    assert "diffusion_model.blocks.0.norm3.diff" in result.tensors


@pytest.mark.parametrize("mutate, phrase", [
    (lambda t: {"some.weight": torch.randn(3)}, "not LoRA weights"),
    (lambda t: {**t, "pose_embedding.weight": torch.randn(4, 4)}, "only SVI-Dance.s pose encoder"),
    (lambda t: {k: v for k, v in t.items() if not k.startswith("blocks.0.self_attn.q.lora_B")}, "half of a LoRA pair"),
    (lambda t: {k.replace("blocks.", "layers."): v for k, v in t.items()}, "name no module of this model"),
    (lambda t: {}, "no LoRA weights"),
])
def test_bad_files_fail_with_a_reason(mutate, phrase):
    with pytest.raises(LoraFormatError, match=phrase):
        normalize_lora(mutate(in_format(random_pairs(), "peft")), model_modules())


def test_lora_for_another_model_size():
    with pytest.raises(LoraFormatError, match="another model size"):
        normalize_lora(in_format(random_pairs(dim=2 * DIM), "peft"), model_modules(DIM))


def test_partial_block_coverage_is_refused():
    modules = sorted(random_pairs())
    check_block_coverage(modules)
    with pytest.raises(LoraFormatError, match="block 1 lacks"):
        check_block_coverage([m for m in modules if m != "blocks.1.self_attn.k"])


def test_only_safetensors_and_valid_adapters_are_read(tmp_path):
    pickled = tmp_path / "lora.ckpt"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(LoraFormatError, match="only .safetensors"):
        read_lora_source(pickled)
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"x": torch.randn(2)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text("{broken")
    with pytest.raises(LoraFormatError, match="not a readable PEFT adapter config"):
        read_lora_source(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 4}))
    assert read_lora_source(folder)[1].r == 4


def test_the_dance_loras_pose_encoder_is_read_beside_its_pairs():
    """The SVI-Dance file: `pipe.dit.` LoRA pairs plus `dwpose_embedding.*` (the official trainer saves the Lightning
    module's own dwpose_embedding next to pipe.dit's LoRA weights)."""
    from svi_infinity.demo.tiny_models import pose_encoder_tensors

    pairs = random_pairs()
    encoder = pose_encoder_tensors(DIM, seed=3)
    normalized = normalize_lora({**in_format(pairs, "pipe_dit"), **encoder}, model_modules())
    assert sorted(normalized.pose_encoder) == sorted(k[len("dwpose_embedding."):] for k in encoder)
    assert len(normalized.pose_encoder) == 14 and len(normalized.modules) == len(pairs)
    assert all(torch.equal(normalized.pose_encoder[k[len("dwpose_embedding."):]], v) for k, v in encoder.items())
    assert not any("dwpose" in key for key in normalized.tensors)
    without = normalize_lora(in_format(pairs, "pipe_dit"), model_modules())
    assert without.pose_encoder == {} and without.tensors.keys() == normalized.tensors.keys()


@pytest.mark.parametrize("breakage, phrase", [
    (lambda t: {k: v for k, v in t.items() if not k.startswith("dwpose_embedding.12.")}, "lack '12.weight'"),
    (lambda t: {**t, "dwpose_embedding.4.weight": torch.randn(16, 16, 1, 3, 3)}, "do not have the SVI-Dance layout"),
    (lambda t: {**t, "randomref_embedding_pose.0.weight": torch.randn(4)}, "only SVI-Dance's pose encoder"),
])
def test_a_broken_pose_encoder_is_refused(breakage, phrase):
    from svi_infinity.demo.tiny_models import pose_encoder_tensors

    tensors = breakage({**in_format(random_pairs(), "peft"), **pose_encoder_tensors(DIM)})
    with pytest.raises(LoraFormatError, match=phrase):
        normalize_lora(tensors, model_modules())


def test_stray_and_non_scalar_alphas_are_refused():
    """An alpha lands nowhere without its pair (ComfyUI ignores it), and one that is not a number cannot scale one."""
    tensors = in_format(random_pairs(), "kohya", alpha=4.0)
    stray = {**tensors, "lora_unet_blocks_0_norm3.alpha": torch.tensor(2.0)}
    with pytest.raises(LoraFormatError, match=r"alpha without its pair.*blocks.0.norm3"):
        normalize_lora(stray, model_modules())
    tensors["lora_unet_blocks_1_ffn_0.alpha"] = torch.tensor([4.0, 4.0])
    with pytest.raises(LoraFormatError, match="blocks.1.ffn.0: alpha must be one number"):
        normalize_lora(tensors, model_modules())


def test_diff_b_is_checked_against_the_bias_when_biases_are_given():
    tensors = in_format(random_pairs(), "diffusion_model")
    tensors["diffusion_model.blocks.0.ffn.0.diff_b"] = torch.randn(FFN)
    biases = {module: (shape[0],) for module, shape in model_modules().items() if len(shape) == 2}
    assert normalize_lora(tensors, model_modules(), model_biases=biases).diff_keys == ["blocks.0.ffn.0.diff_b"]
    with pytest.raises(LoraFormatError, match="blocks.0.ffn.0: the LoRA's '.diff_b' is 64 but the model's bias is no bias"):
        normalize_lora(tensors, model_modules(), model_biases={})
