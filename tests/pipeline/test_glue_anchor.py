"""The anchor is the FIRST image of a reference batch, encoded as ComfyUI's own Wan image-to-video node does it.

The independent side is ComfyUI's WanImageToVideo: its start image is the batch's first image, and with the
Wan VAE's causal time axis latent frame 0 of its concat latent depends on that first frame alone.
"""

import pytest
import torch

SIZE, LENGTH = 32, 9


@pytest.fixture(scope="module")
def second_reference(comfy_runtime):
    from svi_infinity.demo.tiny_models import write_reference_image

    return write_reference_image(comfy_runtime.base_dir / "input" / "svi_reference_b.png", seed=1).name


@pytest.fixture(scope="module")
def reference_batch(comfy_runtime, second_reference, glue):
    """Two different images of the same size, as ComfyUI's ImageBatch would hand them over."""
    first = glue.load_image(comfy_runtime.base_dir / "input" / "svi_reference.png")
    second = glue.load_image(comfy_runtime.base_dir / "input" / second_reference)
    assert first.shape == second.shape and (first - second).abs().mean() > 0.05
    return torch.cat([first, second])


@torch.inference_mode()
def wan_start_latent(glue, vae, images: torch.Tensor) -> torch.Tensor:
    """Latent frame 0 of WanImageToVideo's concat latent for `images` as start images."""
    empty = [[torch.zeros(1, 1, 8), {}]]
    positive = glue.comfy_node("WanImageToVideo").execute(empty, empty, vae, SIZE, SIZE, LENGTH, 1, start_image=images)[0]
    return positive[0][1]["concat_latent_image"][:, :, :1].float()


def test_encode_anchor_uses_the_first_image_of_the_batch(reference_batch, tiny_vae, glue):
    import comfy.utils
    from svi_infinity.pipeline.clips import encode_anchor

    anchor, resized = encode_anchor(tiny_vae, reference_batch, SIZE, SIZE)
    expected = wan_start_latent(glue, tiny_vae, reference_batch)
    assert not torch.allclose(expected, wan_start_latent(glue, tiny_vae, reference_batch[1:]), atol=1e-3)
    assert anchor.shape == expected.shape
    assert torch.allclose(anchor.float(), expected, atol=1e-5), "the anchor is not the first image of the batch"
    first = comfy.utils.common_upscale(reference_batch[:1].movedim(-1, 1), SIZE, SIZE, "bilinear", "center").movedim(1, -1)
    assert torch.allclose(resized, first, atol=1e-6)


def test_long_video_is_anchored_to_the_first_image_of_the_batch(comfy_runtime, recorder, glue, tiny_vae, reference_batch,
                                                                second_reference, wan21_latent_format):
    """Through ComfyUI's executor: an ImageBatch of two references; every clip's y[0] is the first one's anchor."""
    prompt, inputs = glue.long_video_prompt(comfy_runtime, recorder, prefix="svi_glue/anchor", num_clips=2, length=LENGTH, size=SIZE)
    prompt["second_image"] = {"class_type": "LoadImage", "inputs": {"image": second_reference}}
    prompt["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": inputs["reference"], "image2": ["second_image", 0]}}
    inputs["reference"] = ["batch", 0]
    glue.run_ok(comfy_runtime, prompt)
    expected = wan21_latent_format.process_in(wan_start_latent(glue, tiny_vae, reference_batch))
    assert recorder.calls
    for call in recorder.calls:
        assert torch.allclose(call.c_concat[:, 4:, :1], expected, atol=1e-4), "the run is not anchored to the first image"
