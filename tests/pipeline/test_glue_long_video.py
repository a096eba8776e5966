"""The clip-to-clip glue of SVI 2.0 Pro, seen where it matters: at the diffusion model, during a real run.

One 3-clip SVI Long Video run of the shipped Wan 2.2 workflow on the tiny models, through ComfyUI's
executor, with every call into both experts recorded (conftest.py). Each rule is checked against an
independent statement of it: svi-spec.md's layout of `y`, the files the run folder holds, the stand-in
text encoder, ComfyUI's own noise, latent format and nodes (WanImageToVideo, ManualSigmas,
SplitSigmas, SamplerCustom), never against the pack's own helpers.
"""

import pytest
import torch

from svi_infinity.svi.video_io import read_frames

PROMPTS = ["a red kite over the dunes", "the kite dives towards the sea"]
SEED = 2**64 - 50  # clip 2's seed wraps around ComfyUI's unsigned 64-bit range
NUM_CLIPS = 3
LENGTH = 17  # 5 latent frames
SIZE = 32
MOTION_LATENT_FRAMES = 2  # "8 frames (2 latent frames)"
CROSSFADE = 3
LIGHTNING = (1.0, 0.9375, 0.8333, 0.625, 0.0)  # svi-spec.md, "Models"
BOUNDARY = 0.9


def spec_seed(clip_index: int) -> int:
    """The README and the seed tooltip: clip k uses seed + 42 k (unsigned 64-bit)."""
    return (SEED + 42 * clip_index) % 2**64


def spec_prompt(clip_index: int) -> str:
    return PROMPTS[min(clip_index, len(PROMPTS) - 1)]  # 'repeat the last prompt' past the end of the list


def text_conditioning(text: str):
    """The CONDITIONING the graph's text encoder (the tests' stand-in for umt5-xxl) gives for `text`."""
    from svi_infinity.demo.stand_ins import RandomTextEncoder

    encoder = RandomTextEncoder()
    return encoder.encode_from_tokens_scheduled(encoder.tokenize(text))


@pytest.fixture(scope="module")
def pro_run(comfy_runtime, glue):
    with glue.recording() as recorder:
        prompt, _ = glue.long_video_prompt(
            comfy_runtime, recorder, prefix="svi_glue/pro", num_clips=NUM_CLIPS, length=LENGTH, size=SIZE,
            prompts="\n".join(PROMPTS), prompt_overflow="repeat the last prompt", seed=SEED,
            motion="8 frames (2 latent frames)", crossfade=CROSSFADE, boundary_sigma=BOUNDARY)
        run = glue.run_ok(comfy_runtime, prompt)
        calls = glue.calls_per_clip(recorder, NUM_CLIPS)
        yield {"calls": calls, "run_dir": glue.run_dir_of(comfy_runtime, run), "models": dict(recorder.models)}


def latent_part(call):
    return call.c_concat[:, 4:]


def test_every_clip_keeps_the_anchor_known_and_only_the_anchor(pro_run, wan21_latent_format):
    """svi-spec.md steps 1, 4, 5: frame 0 of y is the same anchor in every clip, padding is 0 after normalisation,
    and only latent frame 0 is marked known (ComfyUI passes the model 1 - concat_mask)."""
    anchor = latent_part(pro_run["calls"][0][0])[:, :, :1]
    assert anchor.abs().mean() > 0.1
    for k, calls in enumerate(pro_run["calls"]):
        for call in calls:
            mask, latent = call.c_concat[:, :4], latent_part(call)
            assert torch.equal(mask[:, :, 0], torch.ones_like(mask[:, :, 0])), k
            assert torch.equal(mask[:, :, 1:], torch.zeros_like(mask[:, :, 1:])), k
            assert torch.equal(latent[:, :, :1], anchor), k
            known = 1 if k == 0 else 1 + MOTION_LATENT_FRAMES
            assert latent[:, :, known:].abs().max() < 1e-5, f"clip {k}: padding is not zero after normalisation"


def test_clip_k_is_conditioned_on_the_last_latent_frames_of_clip_k_minus_1_as_saved(pro_run, glue, wan21_latent_format):
    """svi-spec.md step 3: y[1 : 1 + n] of clip k is the last n frames of clip k-1's final latent (read back from the
    run folder, normalised by ComfyUI's Wan latent format); breakage caught: motion computed but not passed, the
    first n frames taken, another n."""
    for k in range(1, NUM_CLIPS):
        previous = glue.saved_latent(pro_run["run_dir"], k - 1)
        expected = wan21_latent_format.process_in(previous[:, :, -MOTION_LATENT_FRAMES:])
        assert not torch.allclose(expected, wan21_latent_format.process_in(previous[:, :, :MOTION_LATENT_FRAMES]))
        for call in pro_run["calls"][k]:
            motion = latent_part(call)[:, :, 1:1 + MOTION_LATENT_FRAMES]
            assert torch.allclose(motion, expected, atol=1e-5), f"clip {k}'s motion is not clip {k - 1}'s last frames"


def test_the_saved_latent_is_what_the_model_denoised_last(pro_run, glue, wan21_latent_format):
    """The run folder's latent (the next clip's motion source) is the sampler's final x0, back in VAE space."""
    for k, calls in enumerate(pro_run["calls"]):
        final = wan21_latent_format.process_out(calls[-1].denoised)
        assert torch.allclose(glue.saved_latent(pro_run["run_dir"], k), final, atol=1e-5, rtol=1e-5), k


def test_clip_k_uses_prompt_k(pro_run):
    """One prompt per clip, the last one repeated past the end of the list (the non-default choice, so a dropped
    setting shows); what reaches the model is that prompt's embedding."""
    for k, calls in enumerate(pro_run["calls"]):
        expected = text_conditioning(spec_prompt(k))[0][0]
        for call in calls:
            assert torch.allclose(call.c_crossattn, expected.float(), atol=1e-3), f"clip {k} is not conditioned on {spec_prompt(k)!r}"


def test_clip_k_starts_from_the_noise_of_seed_k(pro_run):
    """The first model call of clip k sees sigma_0 * ComfyUI's noise for seed + 42 k (the latent starts empty)."""
    import comfy.sample

    for k, calls in enumerate(pro_run["calls"]):
        first = calls[0]
        noise = comfy.sample.prepare_noise(torch.zeros_like(first.x), spec_seed(k))
        assert first.sigma == pytest.approx(LIGHTNING[0])
        assert torch.allclose(first.x, LIGHTNING[0] * noise, atol=1e-6), f"clip {k} does not use seed {spec_seed(k)}"


def test_experts_split_at_the_boundary_in_every_clip(pro_run):
    expected = [("high" if sigma >= BOUNDARY else "low", sigma) for sigma in LIGHTNING[:-1]]
    for k, calls in enumerate(pro_run["calls"]):
        assert [(c.expert, round(c.sigma, 4)) for c in calls] == expected, k


@torch.inference_mode()  # as ComfyUI's executor runs nodes
def comfyui_clip(glue, models, reference, vae, latent_format, *, prompt: str, seed: int, motion: torch.Tensor | None):
    """One clip built from svi-spec.md with ComfyUI's own nodes only; returns its final latent (VAE space).

    Anchor: frame 0 of WanImageToVideo's concat latent for the reference; then the motion latent frames, if any;
    padding: the latent format's process_out(0); mask: only frame 0 known. Sampling: SamplerCustom on the high-noise
    expert (noise from `seed`) over the sigmas that start at or above the boundary, then SamplerCustom on the
    low-noise expert with add_noise off, from the first one's output (SplitSigmas of ManualSigmas).
    """
    import node_helpers

    node = glue.comfy_node
    text = text_conditioning(prompt)
    wan_positive = node("WanImageToVideo").execute(text, text, vae, SIZE, SIZE, LENGTH, 1, start_image=reference)[0]
    anchor = wan_positive[0][1]["concat_latent_image"][:, :, :1].float()
    latent_frames, spatial = (LENGTH - 1) // 4 + 1, anchor.shape[-2:]
    known = [anchor] if motion is None else [anchor, motion]
    padding = latent_format.process_out(torch.zeros(1, 16, latent_frames - sum(t.shape[2] for t in known), *spatial))
    mask = torch.ones(1, 1, latent_frames, *spatial)
    mask[:, :, :1] = 0.0
    positive = node_helpers.conditioning_set_values(text, {"concat_latent_image": torch.cat([*known, padding], dim=2),
                                                           "concat_mask": mask})
    sigmas = node("ManualSigmas").execute(", ".join(map(str, LIGHTNING)))[0]
    high_steps = sum(1 for sigma in LIGHTNING[:-1] if sigma >= BOUNDARY)
    high_sigmas, low_sigmas = node("SplitSigmas").execute(sigmas, high_steps).result
    sampler = node("KSamplerSelect").execute("euler")[0]
    empty = {"samples": torch.zeros(1, 16, latent_frames, *spatial)}
    switched = node("SamplerCustom").execute(models["high"], True, seed, 1.0, positive, positive, sampler, high_sigmas, empty)[0]
    final = node("SamplerCustom").execute(models["low"], False, 0, 1.0, positive, positive, sampler, low_sigmas, switched)[0]
    return final["samples"].float()


def test_each_clip_recomputed_with_comfyui_own_nodes_matches_the_run_folder(pro_run, glue, comfy_runtime, tiny_vae,
                                                                             wan21_latent_format):
    """End to end, independently: every clip rebuilt from the spec with ComfyUI's nodes (comfyui_clip) on the same
    LoRA-patched experts, from clip k-1's latent as the run folder holds it, equals the run folder's clip k."""
    reference = glue.load_image(comfy_runtime.base_dir / "input" / "svi_reference.png")
    for k in range(NUM_CLIPS):
        motion = None if k == 0 else glue.saved_latent(pro_run["run_dir"], k - 1)[:, :, -MOTION_LATENT_FRAMES:]
        expected = comfyui_clip(glue, pro_run["models"], reference, tiny_vae, wan21_latent_format, prompt=spec_prompt(k),
                                seed=spec_seed(k), motion=motion)
        saved = glue.saved_latent(pro_run["run_dir"], k)
        assert saved.abs().mean() > 0.1
        assert torch.allclose(saved, expected, atol=1e-4, rtol=1e-4), \
            f"clip {k}: max difference {float((saved - expected).abs().max()):.3g} from ComfyUI's own two-sampler chain"


def luma(frames: torch.Tensor) -> torch.Tensor:
    return frames @ torch.tensor([0.299, 0.587, 0.114])


def test_final_video_has_the_spec_frame_count_and_the_cross_fade(pro_run):
    """svi-spec.md step 7, built here from the lossless clip archives: all of clip 0, then each later clip without its
    first 1 + 4n frames; at each seam the 4n overlapping frames are clip k-1's, their last `crossfade` frames fading
    linearly into clip k's (weights 1/(c+1) .. c/(c+1)). video.mp4 is lossy H.264, so frames are compared by luma."""
    run_dir = pro_run["run_dir"]
    clips = [read_frames(run_dir / f"clip_{k:05d}.mkv") for k in range(NUM_CLIPS)]
    overlap, skip = 4 * MOTION_LATENT_FRAMES, 1 + 4 * MOTION_LATENT_FRAMES
    assert all(clip.shape[0] == LENGTH for clip in clips)
    expected, hard_cut = [clips[0]], [clips[0]]
    faded_positions = []
    for k in range(1, NUM_CLIPS):
        seam_start = sum(part.shape[0] for part in expected) - overlap  # where clip k-1's overlapping tail sits
        expected[-1] = expected[-1].clone()
        for i in range(CROSSFADE):
            weight = (i + 1) / (CROSSFADE + 1)
            tail_index = overlap - CROSSFADE + i
            expected[-1][-overlap + tail_index] = (clips[k - 1][LENGTH - overlap + tail_index] * (1 - weight)
                                                   + clips[k][1 + tail_index] * weight)
            faded_positions.append(seam_start + tail_index)
        expected.append(clips[k][skip:])
        hard_cut.append(clips[k][skip:])
    expected, hard_cut = torch.cat(expected), torch.cat(hard_cut)
    video = read_frames(run_dir / "video.mp4")
    assert video.shape[0] == LENGTH + (NUM_CLIPS - 1) * (LENGTH - 1 - 4 * MOTION_LATENT_FRAMES) == expected.shape[0]
    error = ((luma(video) - luma(expected)) ** 2).mean(dim=(1, 2))
    assert error.max() < 1e-3, f"frames {torch.nonzero(error >= 1e-3).flatten().tolist()} differ from the spec's stitch"
    hard_error = ((luma(video) - luma(hard_cut)) ** 2).mean(dim=(1, 2))
    assert (hard_error[faded_positions] > 5 * error[faded_positions]).all(), "the cross-faded frames look like a hard cut"


def test_a_resumed_run_continues_from_the_last_saved_clip(comfy_runtime, glue, recorder, wan21_latent_format):
    """Resuming a 1-clip run to 2 clips: the new clip's motion comes from clip 0's latent file, its noise from seed + 42."""
    import comfy.sample

    settings = {"prefix": "svi_glue/resume", "length": 9, "seed": 77}
    first, _ = glue.long_video_prompt(comfy_runtime, num_clips=1, **settings)
    run_dir = glue.run_dir_of(comfy_runtime, glue.run_ok(comfy_runtime, first))
    resumed, _ = glue.long_video_prompt(comfy_runtime, recorder, num_clips=2, resume=True, **settings)
    assert glue.run_dir_of(comfy_runtime, glue.run_ok(comfy_runtime, resumed)) == run_dir
    expected = wan21_latent_format.process_in(glue.saved_latent(run_dir, 0)[:, :, -1:])
    assert len(recorder.calls) == len(LIGHTNING) - 1  # only clip 1 was sampled
    for call in recorder.calls:
        assert torch.allclose(latent_part(call)[:, :, 1:2], expected, atol=1e-5), "the resumed clip lost clip 0's motion"
    first_call = recorder.calls[0]
    assert torch.allclose(first_call.x, comfy.sample.prepare_noise(torch.zeros_like(first_call.x), 77 + 42), atol=1e-6)
