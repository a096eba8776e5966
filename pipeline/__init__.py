"""The SVI pipeline on ComfyUI's own machinery (VAE, LoRA patcher, samplers, progress bar).

svi/ holds the algorithm as plain torch; this package joins it to ComfyUI objects. Node classes
in nodes/ call these functions and nothing else.
"""
