"""Wan 2.2's two experts in SVI Turbo Sampler, against ComfyUI's own two-sampler chain on the same tiny models.

One graph holds both sides: the pack's sampler, and ManualSigmas -> SplitSigmas -> SamplerCustom (high-noise
expert, noise from the clip's seed) -> SamplerCustom (low-noise expert, add_noise off, from the first one's
output), the way ComfyUI users chain Wan 2.2 by hand. Every model call of both sides is recorded.
"""

import pytest
import torch

LIGHTNING = (1.0, 0.9375, 0.8333, 0.625, 0.0)  # svi-spec.md, "Models"
SEED, CLIP_INDEX = 1234, 1
CLIP_SEED = SEED + 42 * CLIP_INDEX  # the seed tooltip: clip k uses seed + 42 k


def expected_experts(boundary: float) -> list[tuple[str, float]]:
    """svi-spec.md: the high-noise expert for the first steps, the low-noise one for the rest, switched at the boundary;
    the node's tooltip: the high-noise expert runs the steps that start at or above it."""
    return [("high" if sigma >= boundary else "low", sigma) for sigma in LIGHTNING[:-1]]


def experts_graph(runtime, recorder, boundary: float) -> dict:
    tiny = runtime.tiny_models
    token = recorder.token
    graph = {
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": tiny["vae"]}},
        "text_encoder": {"class_type": "SVIStandInTextEncoderLoader", "inputs": {"clip_name": "random", "type": "wan"}},
        "high": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny["wan22_high"], "weight_dtype": "default"}},
        "low": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny["wan22_low"], "weight_dtype": "default"}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "svi_reference.png"}},
        "anchor": {"class_type": "SVIEncodeAnchor", "inputs": {"image": ["image", 0], "vae": ["vae", 0], "width": 32, "height": 32}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["text_encoder", 0], "text": "a lighthouse in a storm"}},
        "conditioning": {"class_type": "SVIConditioning", "inputs": {
            "positive": ["text", 0], "negative": ["text", 0], "vae": ["vae", 0], "mode": "2.0 Pro (latent motion)",
            "length": 9, "anchor": ["anchor", 0]}},
        "svi": {"class_type": "SVITurboSampler", "inputs": {
            "model": ["high", 0], "model_low_noise": ["low", 0], "positive": ["conditioning", 0], "negative": ["conditioning", 1],
            "latent": ["conditioning", 2], "seed": SEED, "clip_index": CLIP_INDEX,
            "schedule": "lightning 4-step (lightx2v / Wan2.2-Lightning)", "steps": 4, "shift": 5.0,
            "boundary_sigma": boundary, "cfg": 1.0}},
        "svi_out": {"class_type": "SVITestCaptureLatent", "inputs": {"samples": ["svi", 0], "key": "svi", "token": token}},
    }
    high_steps = sum(1 for sigma in LIGHTNING[:-1] if sigma >= boundary)
    if high_steps < len(LIGHTNING) - 1:  # ComfyUI's chain needs a step on each side
        graph.update({
            "chain_high": {"class_type": "SVITestRecordModelCalls", "inputs": {"model": ["high", 0], "expert": "chain high", "token": token}},
            "chain_low": {"class_type": "SVITestRecordModelCalls", "inputs": {"model": ["low", 0], "expert": "chain low", "token": token}},
            "sigmas": {"class_type": "ManualSigmas", "inputs": {"sigmas": ", ".join(map(str, LIGHTNING))}},
            "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sigmas", 0], "step": high_steps}},
            "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "first": {"class_type": "SamplerCustom", "inputs": {
                "model": ["chain_high", 0], "add_noise": True, "noise_seed": CLIP_SEED, "cfg": 1.0, "positive": ["conditioning", 0],
                "negative": ["conditioning", 1], "sampler": ["euler", 0], "sigmas": ["split", 0], "latent_image": ["conditioning", 2]}},
            "second": {"class_type": "SamplerCustom", "inputs": {
                "model": ["chain_low", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["conditioning", 0],
                "negative": ["conditioning", 1], "sampler": ["euler", 0], "sigmas": ["split", 1], "latent_image": ["first", 0]}},
            "chain_out": {"class_type": "SVITestCaptureLatent", "inputs": {"samples": ["second", 0], "key": "chain", "token": token}},
        })
    return graph


TWO_SIDED = [0.9, 0.9375, 0.95, 0.8333]  # 0.9375 and 0.8333 are schedule sigmas: 'at' the boundary is high-noise
ONE_SIDED = [0.625, 0.0]  # every step starts at or above: the high-noise expert runs them all


@pytest.fixture(scope="module")
def sample_at(comfy_runtime, glue):
    """Runs the graph once per boundary: (the pack's model calls, the recorder with both sides)."""
    done = {}

    def sample(boundary):
        if boundary not in done:
            with glue.recording() as recorder:
                graph = glue.record_experts(experts_graph(comfy_runtime, recorder, boundary), recorder,
                                            consumer_classes=("SVITurboSampler",))
                glue.run_ok(comfy_runtime, graph)
            done[boundary] = [call for call in recorder.calls if call.expert in ("high", "low")], recorder
        return done[boundary]

    return sample


@pytest.mark.parametrize("boundary", TWO_SIDED + ONE_SIDED)
def test_high_noise_expert_runs_exactly_the_steps_at_or_above_the_boundary(sample_at, boundary):
    """Breakages caught: experts swapped; the low-noise expert never used; the boundary compared with '>'."""
    calls, _ = sample_at(boundary)
    assert [(call.expert, round(call.sigma, 4)) for call in calls] == expected_experts(boundary)


@pytest.mark.parametrize("boundary", TWO_SIDED)
def test_low_noise_expert_continues_from_the_high_noise_result_without_new_noise(sample_at, boundary):
    """At the switch the low-noise expert's input is the Euler step from the high-noise expert's last call:
    x + (sigma_next - sigma) * (x - x0) / sigma. Breakages caught: re-noised at the switch; started from the empty
    latent (the high-noise result discarded)."""
    calls, _ = sample_at(boundary)
    switch = [call.expert for call in calls].index("low")
    assert switch > 0
    last_high, first_low = calls[switch - 1], calls[switch]
    derivative = (last_high.x - last_high.denoised) / last_high.sigma
    expected = last_high.x + (first_low.sigma - last_high.sigma) * derivative
    assert first_low.x.abs().mean() > 0.1
    assert torch.allclose(first_low.x, expected, atol=1e-4, rtol=1e-4), \
        f"max difference {float((first_low.x - expected).abs().max()):.3g}"


@pytest.mark.parametrize("boundary", TWO_SIDED)
def test_the_clip_equals_comfyuis_own_two_sampler_chain(sample_at, boundary):
    """The pack's sampled latent equals SamplerCustom (high, with the clip's noise) -> SamplerCustom (low, add_noise
    off) over SplitSigmas at the number of steps the boundary gives, on the same models and conditioning."""
    _, recorder = sample_at(boundary)
    chain_calls = [(call.expert.split()[1], round(call.sigma, 4)) for call in recorder.calls if call.expert.startswith("chain")]
    assert chain_calls == expected_experts(boundary)
    svi, chain = recorder.latents["svi"], recorder.latents["chain"]
    assert chain.abs().mean() > 0.1
    assert torch.allclose(svi, chain, atol=1e-5, rtol=1e-5), f"max difference {float((svi - chain).abs().max()):.3g}"
