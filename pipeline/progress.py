"""Progress and previews through ComfyUI's own progress bar (the node's bar and latent previews)."""

from __future__ import annotations

PREVIEW_FORMAT = "JPEG"


class StepProgress:
    """One bar over all sampling steps of a node; each step also sends a latent preview when enabled."""

    def __init__(self, model_patcher, total_steps: int, node_id: str | None = None):
        import comfy.utils
        import latent_preview

        self.bar = comfy.utils.ProgressBar(total_steps, node_id=node_id)
        self.previewer = latent_preview.get_previewer(model_patcher.load_device, model_patcher.model.latent_format)
        self.offset = 0

    def step(self, done: int, total: int, x0=None) -> None:
        preview = None
        if self.previewer is not None and x0 is not None:
            preview = self.previewer.decode_latent_to_preview_image(PREVIEW_FORMAT, x0)
        self.bar.update_absolute(self.offset + done, self.bar.total, preview)

    def show_image(self, image, max_size: int = 512) -> None:
        """Shows a finished clip's frame (PIL image) on the node without moving the bar."""
        self.bar.update_absolute(self.bar.current, self.bar.total, (PREVIEW_FORMAT, image, max_size))
