# Source from the repository root on the GPU machine: unpacks the carried, git-ignored folders into /tmp
# (TileLang + its needs, comfy-kitchen, a slim ComfyUI v0.33.0, ComfyUI's missing wheels, TileLang's kernel
# cache built on the CPU machine by bench/kernels_precompile.py) and exports the paths the benchmarks read.
# run(carry=[".carry/tl", ".carry/ck", ".carry/c3", ".carry/tlc"], command="source bench/device_env.sh && ...")
mkdir -p /tmp/site /tmp/tlcache
tar -xJf .carry/tl/tl_site.tar.xz -C /tmp/site
tar -xJf .carry/ck/ck_site.tar.xz -C /tmp/site
tar -xJf .carry/c3/comfyui_slim.tar.xz -C /tmp
python3 -m pip install -q --no-deps --no-index --target /tmp/site .carry/c3/*.whl
tar -xJf .carry/tlc/tlcache.tar.xz -C /tmp/tlcache
export PYTHONPATH=/tmp/site COMFYUI_PATH=/tmp/ComfyUI TILELANG_CACHE_DIR=/tmp/tlcache PYTHONUNBUFFERED=1
