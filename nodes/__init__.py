"""ComfyUI node classes (V3 API). Each is a thin wrapper over plain functions in svi/ or kernels/."""

from comfy_api.latest import ComfyExtension, io


class SVIInfinityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .svi_nodes import SVI_NODES

        nodes = list(SVI_NODES)
        try:
            from .kernel_accel import KERNEL_NODES
        except ImportError as error:  # the kernels node is optional while it is being built
            import logging

            logging.getLogger(__name__).warning("SVI Infinity: kernel node unavailable: %s", error)
        else:
            nodes.extend(KERNEL_NODES)
        return nodes
