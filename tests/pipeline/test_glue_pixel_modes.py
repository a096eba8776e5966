"""SVI 1.0 modes (pixel motion) in a real SVI Long Video run of the shipped Wan 2.1 workflow on the tiny models.

What ComfyUI's VAE is asked to encode for each clip is recorded at `comfy.sd.VAE.encode` (ComfyUI's class,
restored after the test), and compared with svi-spec.md's "SVI 1.0 modes": clip 0 starts with the reference
image, clip k with the last M decoded frames of clip k-1 (read back from its lossless archive in the run
folder), then padding: the reference repeated (Shot/Dance/Talk) or zero in the model's -1..1 pixel space,
i.e. 0.5 (Film).
"""

import pytest
import torch

from svi_infinity.svi.video_io import read_frames

NUM_CLIPS, LENGTH, SIZE, M = 3, 9, 32, 3
SHOT = "1.0 Shot/Dance/Talk (pixel motion, reference padding)"
FILM = "1.0 Film (pixel motion, zero padding)"
QUANTISATION = 0.5 / 255 + 1e-6  # the archive holds the decoded frames rounded to 8 bits


def resized_reference(glue, runtime) -> torch.Tensor:
    """The reference scaled and centre-cropped the way ComfyUI's WanImageToVideo prepares its start image."""
    import comfy.utils

    image = glue.load_image(runtime.base_dir / "input" / "svi_reference.png")
    return comfy.utils.common_upscale(image.movedim(-1, 1), SIZE, SIZE, "bilinear", "center").movedim(1, -1)


def run_recording_vae_inputs(runtime, glue, recorder, *, mode, prefix, num_clips, resume=False):
    """Runs the shipped Wan 2.1 long-video workflow; returns (the clip-sized videos ComfyUI's VAE encoded, run folder)."""
    import comfy.sd

    encoded = []
    real_encode = comfy.sd.VAE.encode

    def recording_encode(vae, pixels):
        encoded.append(pixels.detach().float().cpu().clone())
        return real_encode(vae, pixels)

    prompt, _ = glue.long_video_prompt(runtime, recorder, workflow="svi_wan21_long_12clips", prefix=prefix, num_clips=num_clips,
                                       length=LENGTH, size=SIZE, mode=mode, conditioning_frames=M, seed=5, resume=resume)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(comfy.sd.VAE, "encode", recording_encode)
        run = glue.run_ok(runtime, prompt)
    return [video for video in encoded if video.shape[0] == LENGTH], glue.run_dir_of(runtime, run)


@pytest.fixture(scope="module", params=[SHOT, FILM], ids=["shot", "film"])
def pixel_run(request, comfy_runtime, glue):
    with glue.recording() as recorder:
        clip_inputs, run_dir = run_recording_vae_inputs(comfy_runtime, glue, recorder, mode=request.param,
                                                        prefix=f"svi_glue/pixel_{request.param[4:8]}", num_clips=NUM_CLIPS)
    assert len(clip_inputs) == NUM_CLIPS
    clips = [read_frames(run_dir / f"clip_{k:05d}.mkv") for k in range(NUM_CLIPS)]
    return request.param, clip_inputs, clips, run_dir, glue.calls_per_clip(recorder, NUM_CLIPS)


def test_clip_k_vae_input_starts_with_the_last_m_decoded_frames_of_clip_k_minus_1(pixel_run):
    """Breakage caught: the first M frames of the previous clip carried instead of the last M."""
    _, clip_inputs, clips, _, _ = pixel_run
    for k in range(1, NUM_CLIPS):
        carried, last, first = clip_inputs[k][:M], clips[k - 1][-M:], clips[k - 1][:M]
        assert (carried - first).abs().max() > 0.1  # the two choices are distinguishable
        assert (carried - last).abs().max() <= QUANTISATION, f"clip {k} does not start with clip {k - 1}'s last {M} frames"


def test_clip_0_starts_with_the_reference_and_every_clip_is_padded_per_mode(pixel_run, glue, comfy_runtime):
    mode, clip_inputs, _, _, _ = pixel_run
    reference = resized_reference(glue, comfy_runtime)
    assert torch.allclose(clip_inputs[0][:1], reference, atol=1e-5)
    for k, video in enumerate(clip_inputs):
        known = 1 if k == 0 else M
        padding = video[known:]
        expected = reference.expand_as(padding) if mode == SHOT else torch.full_like(padding, 0.5)
        assert torch.allclose(padding, expected, atol=1e-5), f"clip {k}: padding is not what {mode} uses"


def test_final_video_drops_the_last_m_frames_of_every_clip_but_the_last(pixel_run):
    """svi-spec.md: the next clip regenerates them; N clips give N L - (N - 1) M frames."""
    _, _, clips, run_dir, _ = pixel_run
    expected = torch.cat([clip[:-M] for clip in clips[:-1]] + [clips[-1]])
    video = read_frames(run_dir / "video.mp4")
    assert video.shape[0] == NUM_CLIPS * LENGTH - (NUM_CLIPS - 1) * M == expected.shape[0]
    luma = torch.tensor([0.299, 0.587, 0.114])
    error = (((video - expected) @ luma) ** 2).mean(dim=(1, 2))
    assert error.max() < 1e-3, f"frames {torch.nonzero(error >= 1e-3).flatten().tolist()} differ from the spec's stitch"


def test_clip_vision_sees_the_first_conditioning_frame(pixel_run):
    """svi-spec.md: the CLIP-vision embedding (Wan 2.1) comes from the first conditioning frame: the reference for
    clip 0, the first of the M carried frames after that. What reaches the model is the stand-in vision encoder's
    embedding of that frame (it is seeded by the image)."""
    from svi_infinity.demo.stand_ins import RandomVisionEncoder

    _, clip_inputs, _, _, calls = pixel_run
    encoder = RandomVisionEncoder()
    for k, video in enumerate(clip_inputs):
        expected = encoder.encode_image(video[:1]).penultimate_hidden_states.float()
        if k:  # the last carried frame would give another embedding
            assert not torch.allclose(expected, encoder.encode_image(video[M - 1:M]).penultimate_hidden_states.float())
        for call in calls[k]:
            assert torch.allclose(call.clip_fea, expected, atol=1e-3), f"clip {k}'s CLIP vision is not its first conditioning frame"


def test_a_resumed_run_carries_the_last_m_frames_of_the_saved_clip(comfy_runtime, glue, recorder):
    """Resuming a 1-clip run to 2 clips: the new clip starts with the last M frames of clip 0's lossless archive."""
    prefix = "svi_glue/pixel_resume"
    run_recording_vae_inputs(comfy_runtime, glue, recorder, mode=SHOT, prefix=prefix, num_clips=1)
    clip_inputs, run_dir = run_recording_vae_inputs(comfy_runtime, glue, recorder, mode=SHOT, prefix=prefix, num_clips=2,
                                                    resume=True)
    assert len(clip_inputs) == 1  # only clip 1 was made
    saved = read_frames(run_dir / "clip_00000.mkv")
    assert (clip_inputs[0][:M] - saved[-M:]).abs().max() <= QUANTISATION
