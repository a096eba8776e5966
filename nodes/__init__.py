"""ComfyUI node classes (V3 API). Each is a thin wrapper over plain functions in svi/ or kernels/."""

from comfy_api.latest import ComfyExtension, io


class SVIInfinityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .kernel_accel import KERNEL_NODES
        from .parallel_nodes import PARALLEL_NODES
        from .svi_nodes import SVI_NODES

        return [*SVI_NODES, *KERNEL_NODES, *PARALLEL_NODES]
