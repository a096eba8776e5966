"""SVI Infinity: Stable Video Infinity long-video generation for ComfyUI (Wan 2.1 / 2.2, Turbo).

ComfyUI imports this file and calls `comfy_entrypoint()`; everything heavy is imported there, so
the plain-torch parts of the pack (svi/, kernels/) stay importable without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import SVIInfinityExtension

    return SVIInfinityExtension()
