"""Bench-only loader nodes: real-size (or tiny) Wan models and the Wan VAE with random weights, built in memory.

A separate ComfyUI node pack, loaded only by bench/graph_bench.py (which has bench/ on sys.path for random_models): it
replaces UNETLoader and VAELoader in the shipped workflows so that the pack's real nodes run through ComfyUI's executor
at the real sizes without tens of GB of files.
"""

import torch
from comfy_api.latest import ComfyExtension, io

from random_models import SIZES, WEIGHT_DTYPES, load_vae, load_wan

ROLES = {"wan21_i2v": True, "wan22_high": False, "wan22_low": False}  # role -> has Wan 2.1's image branch


class SVIBenchRandomWanLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIBenchRandomWanLoader", display_name="Random-weight Wan (benchmarks only)", category="SVI/testing",
            description="Replaces UNETLoader in benchmarks: a Wan I2V model at its real size with random weights, drawn "
                        "on the GPU and loaded through ComfyUI's own state-dict loader (its dtype and fp8 handling).",
            inputs=[io.Combo.Input("role", options=list(ROLES)), io.Combo.Input("size", options=list(SIZES)),
                    io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES)), io.Int.Input("seed", default=1)],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, role, size, weight_dtype, seed) -> io.NodeOutput:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return io.NodeOutput(load_wan(ROLES[role], SIZES[size], device, seed, weight_dtype))


class SVIBenchRandomVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SVIBenchRandomVAELoader", display_name="Random-weight Wan VAE (benchmarks only)", category="SVI/testing",
            description="Replaces VAELoader in benchmarks: the Wan 2.1 VAE with random weights through ComfyUI's VAE class.",
            inputs=[io.Combo.Input("size", options=["full", "tiny"]), io.Int.Input("seed", default=3)],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, size, seed) -> io.NodeOutput:
        return io.NodeOutput(load_vae(size == "tiny", seed))


class RealSizeModelsExtension(ComfyExtension):
    async def get_node_list(self):
        return [SVIBenchRandomWanLoader, SVIBenchRandomVAELoader]


async def comfy_entrypoint():
    return RealSizeModelsExtension()
