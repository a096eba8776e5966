"""The pack loads in real ComfyUI and registers its nodes with complete schemas."""

import nodes as comfy_nodes  # noqa: F401  (imported through the runtime fixture's sys.path)
