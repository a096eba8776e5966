"""Stand-ins for the two encoders that cannot be tiny (umt5-xxl: 5.7 B parameters; CLIP ViT-H: 632 M).

A separate ComfyUI node pack, loaded only by the tests and the tiny-model demo: its loader nodes
return objects with the same methods ComfyUI's CLIPTextEncode and CLIPVisionEncode call, giving
deterministic random embeddings, so the shipped workflows run unchanged apart from these loaders.
"""

import hashlib

import torch
from comfy_api.latest import ComfyExtension, io

TEXT_TOKENS = 8
TEXT_WIDTH = 4096
VISION_TOKENS = 257
VISION_WIDTH = 1280


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


class RandomTextEncoder:
    """Answers tokenize / encode_from_tokens_scheduled like ComfyUI's CLIP object, with a per-text random embedding of
    `tokens` tokens (umt5-xxl pads every Wan prompt to 512; the tests use fewer)."""

    def __init__(self, tokens: int = TEXT_TOKENS):
        self.tokens = tokens

    def tokenize(self, text, **kwargs):
        return text

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        generator = torch.Generator().manual_seed(_seed_of("text", tokens))
        return [[torch.randn(1, self.tokens, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]


class RandomVisionOutput:
    def __init__(self, penultimate_hidden_states):
        self.penultimate_hidden_states = penultimate_hidden_states


class RandomVisionEncoder:
    """Answers encode_image like ComfyUI's ClipVisionModel, seeded by the image content."""

    def encode_image(self, image, crop=True):
        generator = torch.Generator().manual_seed(_seed_of("image", round(float(image.float().mean()), 4), tuple(image.shape)))
        return RandomVisionOutput(torch.randn(image.shape[0], VISION_TOKENS, VISION_WIDTH, generator=generator))


class SVIStandInTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIStandInTextEncoderLoader", display_name="Stand-in Text Encoder (random, tests only)",
            category="SVI/testing", description="Replaces CLIPLoader in tests: random per-text embeddings.",
            inputs=[io.String.Input("clip_name", default="random"), io.String.Input("type", default="wan"),
                    io.Int.Input("tokens", default=TEXT_TOKENS, min=1, max=4096, optional=True,
                                 tooltip="Tokens per embedding: 512 as umt5-xxl gives Wan (benchmarks), fewer in tests.")],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_name, type, tokens=TEXT_TOKENS) -> io.NodeOutput:
        return io.NodeOutput(RandomTextEncoder(tokens))


class SVIStandInClipVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIStandInClipVisionLoader", display_name="Stand-in CLIP Vision (random, tests only)",
            category="SVI/testing", description="Replaces CLIPVisionLoader in tests: random image embeddings.",
            inputs=[io.String.Input("clip_name", default="random")],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, clip_name) -> io.NodeOutput:
        return io.NodeOutput(RandomVisionEncoder())


class StandInExtension(ComfyExtension):
    async def get_node_list(self):
        return [SVIStandInTextEncoderLoader, SVIStandInClipVisionLoader]


async def comfy_entrypoint():
    return StandInExtension()
