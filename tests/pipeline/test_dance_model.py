"""SVI-Dance on a tiny Wan 2.1 I2V through ComfyUI: the Dance LoRA's pose encoder attached by the LoRA patcher, the
pose tokens added to the first block's input in every pass, and the pose steering the sampled clip."""

import pytest
import torch

from svi_infinity.demo.tiny_models import pose_video_frames


@pytest.fixture(scope="module")
def dance_model(comfy_runtime):
    import comfy.sd

    from svi_infinity.pipeline.lora import apply_lora

    folder = comfy_runtime.models_dir
    base = comfy.sd.load_diffusion_model(str(folder / "diffusion_models" / comfy_runtime.tiny_models["wan21_i2v"]))
    model, report = apply_lora(base, folder / "loras" / comfy_runtime.tiny_models["dance_lora_wan21"], 1.0)
    return base, model, report


def test_the_dance_lora_brings_its_pose_encoder(dance_model):
    from svi_infinity.pipeline.dance import pose_encoder_of
    from svi_infinity.pipeline.clips import SVIInputError

    base, model, report = dance_model
    assert report.pose_encoder_tensors == 14 and "SVI-Dance pose encoder (14 tensors)" in report.line()
    assert pose_encoder_of(model).dim == 128
    with pytest.raises(SVIInputError, match="load the SVI-Dance LoRA"):
        pose_encoder_of(base)


def first_block_inputs(model, run):
    """What block 0 of the diffusion model receives, per call."""
    seen = []
    block = model.model.diffusion_model.blocks[0]
    handle = block.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].detach().clone()), with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


def sample(model, seed=3):
    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.svi.plan import schedule_sigmas

    cond = [[torch.zeros(1, 4, 4096), {"concat_latent_image": torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0)),
                                       "concat_mask": torch.ones(1, 1, 3, 4, 6)}]]
    return sample_clip(model, None, cond, cond, torch.zeros(1, 16, 3, 4, 6), seed=seed,
                       sigmas=schedule_sigmas("lightning 4-step (lightx2v / Wan2.2-Lightning)"), boundary=0.875, cfg=2.0)


def test_pose_tokens_reach_the_first_block_in_both_passes_and_steer_the_clip(dance_model):
    from svi_infinity.pipeline.dance import clip_pose_tokens, pose_encoder_of, prepare_pose_video, with_pose_tokens

    _, model, _ = dance_model
    encoder = pose_encoder_of(model)
    pose = prepare_pose_video(pose_video_frames(20, 40, 40), 48, 32, num_clips=2, clip_frames=9, motion_frames=1)
    tokens = clip_pose_tokens(encoder, pose, 1, 9, 1, torch.float32)
    assert tokens.shape == (1, 3 * 2 * 3, 128)
    plain_inputs, plain = first_block_inputs(model, lambda: sample(model))
    posed_model = with_pose_tokens(model, tokens)
    posed_inputs, posed = first_block_inputs(posed_model, lambda: sample(posed_model))
    assert len(posed_inputs) == len(plain_inputs) == 4  # 4 steps, cond and uncond batched (cfg 2)
    first = posed_inputs[0]
    assert first.shape[0] == 2  # cond + uncond: both get the pose (the official cond_wo_pose=True)
    assert torch.allclose(first - plain_inputs[0], tokens.to(first.dtype).expand_as(first), atol=1e-2, rtol=1e-2)
    other = clip_pose_tokens(encoder, pose, 0, 9, 1, torch.float32)
    other_model = with_pose_tokens(model, other)
    assert (posed - plain).abs().mean() > 1e-3 and (sample(other_model) - posed).abs().mean() > 1e-3
    assert torch.equal(sample(posed_model), posed)
    assert model.model_options.get("transformer_options", {}).get("patches_replace") is None  # the input model is untouched


def test_a_pose_video_shorter_than_the_clips_is_refused():
    from svi_infinity.pipeline.clips import SVIInputError
    from svi_infinity.pipeline.dance import prepare_pose_video

    with pytest.raises(SVIInputError, match=r"the pose video has 16 frames but 2 clips of 9 frames .* need 17"):
        prepare_pose_video(pose_video_frames(16, 40, 40), 48, 32, num_clips=2, clip_frames=9, motion_frames=1)
