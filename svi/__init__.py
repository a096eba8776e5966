"""The SVI algorithm in plain torch: conditioning, seams, per-clip plans, LoRA formats, run storage."""
