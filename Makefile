# Two commands on a fresh machine (each sets up .venv first; ComfyUI v0.33.0 must be at $COMFYUI_PATH,
# or this pack inside ComfyUI/custom_nodes/; /opt/ComfyUI and /opt/ComfyUI-GGUF are used when present):
#   make demo   runs the 3-clip SVI workflow on tiny random-weight models and writes output/*.mp4
#   make test   runs the test suite
ifeq ($(COMFYUI_PATH),)
  ifneq ($(wildcard /opt/ComfyUI/main.py),)
    export COMFYUI_PATH := /opt/ComfyUI
  endif
endif
ifeq ($(COMFYUI_GGUF_PATH),)
  ifneq ($(wildcard /opt/ComfyUI-GGUF/nodes.py),)
    export COMFYUI_GGUF_PATH := /opt/ComfyUI-GGUF
  endif
endif
PYTHON := .venv/bin/python

.PHONY: setup demo test workflows thumbnails
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PYTHON) scripts/demo.py

test: setup
	$(PYTHON) -m pytest

workflows: setup
	$(PYTHON) scripts/build_workflows.py

thumbnails: setup
	$(PYTHON) scripts/render_thumbnails.py
