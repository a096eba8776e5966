"""TileLang kernels for the Wan DiT on Hopper, each behind one dispatch function with a PyTorch reference.

Every dispatch returns its result together with a `Decision` naming the backend that ran and,
when it is not the kernel, why: a fallback is never silent. Nothing here imports ComfyUI, and
TileLang is imported only when a kernel is first needed.
"""
