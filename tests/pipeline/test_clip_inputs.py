"""Clip inputs on ComfyUI's real VAE: end frames exactly as Wan's first-last-frame node, resize modes, open sampling."""

import pytest
import torch


@pytest.fixture(scope="module")
def vae(comfy_runtime):
    import comfy.sd

    from svi_infinity.demo.tiny_models import wan21_vae_state_dict

    return comfy.sd.VAE(sd=wan21_vae_state_dict(dim=8, seed=3), dtype=torch.float32)


def first_last_frame_node(vae, start, end, length):
    """ComfyUI's own WanFirstLastFrameToVideo: (concat_latent_image, concat_mask) it sets on the conditioning."""
    from comfy_extras.nodes_wan import WanFirstLastFrameToVideo

    positive = [[torch.zeros(1, 1, 8), {}]]
    out = WanFirstLastFrameToVideo.execute(positive, positive, vae, start.shape[2], start.shape[1], length, 1,
                                           start_image=start, end_image=end)
    values = out.result[0][0][1] if hasattr(out, "result") else out[0][0][1]
    return values["concat_latent_image"], values["concat_mask"]


def frames(count, height=32, width=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1, 1)
    return (0.5 * x + 0.3 * y + 0.2 * torch.rand(count, height, width, 3, generator=generator)).clamp(0, 1)


def test_film_first_clip_with_an_end_frame_is_comfyuis_first_last_frame(vae):
    """Clip 0 of Film (conditioning frame = the reference, grey padding) with an end image: the same VAE input and
    mask as WanFirstLastFrameToVideo(start = reference, end), so the same y."""
    from svi_infinity.pipeline.clips import build_clip_inputs
    from svi_infinity.svi.conditioning import SVIMode

    reference, end = frames(1, seed=1), frames(1, seed=2)
    ours = build_clip_inputs(vae, SVIMode.FILM_ZERO_PAD, 17, reference=reference, end_image=end)
    latent, mask = first_last_frame_node(vae, reference, end, 17)
    assert torch.equal(ours.concat_latent_image, latent)
    assert torch.equal(ours.concat_mask, mask)
    assert ours.concat_mask.shape == (1, 4, 5, 4, 6)


@pytest.mark.parametrize("motion", [False, True])
def test_pro_end_latent_is_the_first_last_frame_nodes_last_latent(vae, motion):
    from svi_infinity.pipeline.clips import build_clip_inputs, encode_anchor, zero_latent, wan_latent_format
    from svi_infinity.svi.conditioning import SVIMode

    anchor, reference = encode_anchor(vae, frames(1, 40, 56, seed=1), 48, 32)
    end = frames(1, seed=2)
    motion_latent = torch.randn(1, 16, 1, 4, 6) if motion else None
    ours = build_clip_inputs(vae, SVIMode.PRO_LATENT, 17, anchor=anchor, motion=motion_latent, reference=reference, end_image=end)
    latent, mask = first_last_frame_node(vae, reference, end, 17)
    image = ours.concat_latent_image
    assert torch.equal(image[:, :, -1:], latent[:, :, -1:])  # the end latent: Wan FLF's last latent frame
    assert torch.equal(image[:, :, :1], anchor)
    if motion:
        assert torch.equal(image[:, :, 1:2], motion_latent)
    padding = zero_latent(wan_latent_format(vae)).view(1, -1, 1, 1, 1)
    assert torch.equal(image[:, :, 2 if motion else 1: -1], padding.expand_as(image[:, :, 2 if motion else 1: -1]))
    assert torch.equal(ours.concat_mask, mask)


def test_an_end_image_of_another_size_is_refused(vae):
    from svi_infinity.pipeline.clips import SVIInputError, build_clip_inputs
    from svi_infinity.svi.conditioning import SVIMode

    with pytest.raises(SVIInputError, match=r"the end image is 40x32 but the clips are 48x32: pass it through SVI Encode Anchor"):
        build_clip_inputs(vae, SVIMode.SHOT_REFERENCE_PAD, 17, reference=frames(1), end_image=frames(1, 32, 40))


def test_resize_modes():
    import numpy as np
    from PIL import Image

    from svi_infinity.pipeline.clips import resize_image
    from svi_infinity.svi.conditioning import ResizeMode
    from svi_infinity.svi.video_io import to_uint8

    source = frames(1, 50, 50, seed=4)
    stretched = resize_image(source, 48, 32, ResizeMode.STRETCH)
    official = Image.fromarray(to_uint8(source)[0]).resize((48, 32))  # test_svi.py: PIL resize((width, height))
    assert torch.equal((stretched[0] * 255).round().to(torch.uint8), torch.from_numpy(np.array(official)))
    padded = resize_image(source, 48, 32, ResizeMode.PAD)
    assert padded.shape == (1, 32, 48, 3)
    assert torch.all(padded[:, :, :8] == 0) and torch.all(padded[:, :, 40:] == 0) and padded[:, :, 8:40].mean() > 0.2
    cropped = resize_image(source, 48, 32, ResizeMode.CROP)
    assert cropped.shape == (1, 32, 48, 3) and not torch.allclose(cropped, stretched, atol=0.02)
    assert all(torch.equal(resize_image(stretched, 48, 32, mode), stretched) for mode in ResizeMode)  # already that size


@pytest.fixture(scope="module")
def experts(comfy_runtime):
    import comfy.sd

    folder = comfy_runtime.models_dir / "diffusion_models"
    return [comfy.sd.load_diffusion_model(str(folder / comfy_runtime.tiny_models[role])) for role in ("wan22_high", "wan22_low")]


def recorded_stages(monkeypatch, experts, **options):
    """Runs sample_clip on the tiny Wan 2.2 experts, recording each ComfyUI sample_custom call (model, cfg, sigmas)."""
    import comfy.sample

    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.svi.plan import schedule_sigmas

    calls = []
    original = comfy.sample.sample_custom

    def record(model, noise, cfg, sampler, sigmas, *args, **kwargs):
        calls.append(("high" if model is experts[0] else "low", cfg, [round(float(s), 4) for s in sigmas], sampler))
        return original(model, noise, cfg, sampler, sigmas, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample_custom", record)
    cond = [[torch.zeros(1, 4, 4096), {"concat_latent_image": torch.zeros(1, 16, 2, 2, 2), "concat_mask": torch.ones(1, 1, 2, 2, 2)}]]
    sample_clip(experts[0], experts[1], cond, cond, torch.zeros(1, 16, 2, 2, 2), seed=1,
                sigmas=schedule_sigmas("lightning 4-step (lightx2v / Wan2.2-Lightning)"), **options)
    return calls


def test_experts_switch_at_the_boundary_or_the_given_step_with_their_own_cfg(monkeypatch, experts):
    import comfy.samplers

    calls = recorded_stages(monkeypatch, experts, boundary=0.875, cfg=1.0)
    assert [(c[0], c[1], c[2]) for c in calls] == [("high", 1.0, [1.0, 0.9375, 0.8333]), ("low", 1.0, [0.8333, 0.625, 0.0])]
    sampler = comfy.samplers.sampler_object("dpmpp_2m")
    calls = recorded_stages(monkeypatch, experts, boundary=0.875, cfg=3.5, cfg_low=1.5, switch_step=1, sampler=sampler)
    assert [(c[0], c[1], c[2]) for c in calls] == [("high", 3.5, [1.0, 0.9375]), ("low", 1.5, [0.9375, 0.8333, 0.625, 0.0])]
    assert all(c[3] is sampler for c in calls)
    calls = recorded_stages(monkeypatch, experts, boundary=0.875, cfg=1.0, switch_step=0)
    assert [c[0] for c in calls] == ["low"]


def test_a_switch_step_past_the_schedule_is_refused(monkeypatch, experts):
    from svi_infinity.pipeline.clips import SVIInputError

    with pytest.raises(SVIInputError, match="switch at step 5, but the schedule has 4 steps"):
        recorded_stages(monkeypatch, experts, boundary=0.875, cfg=1.0, switch_step=5)
