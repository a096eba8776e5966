"""Tiny models, the ComfyUI runtime harness and the demo: development tools, not loaded by ComfyUI."""
