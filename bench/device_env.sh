# Source from the repository root on the GPU machine: unpacks the carried, git-ignored folders that
# scripts/build_device_carry.sh makes into /tmp (TileLang + its needs, comfy-kitchen, a slim ComfyUI v0.33.0 and its
# missing wheels, TileLang's kernel cache built on the CPU machine, and, for bench/graph_bench.py, what ComfyUI's server
# and executor import beyond those) and exports the paths the benchmarks read. Each part is unpacked when carried:
# .carry/rt does not fit in one call beside the rest, so it goes first, alone, into /tmp/site (a warm machine keeps /tmp
# about 30 s), and the rest follows in the next call:
#   run(carry=[".carry/rt"], command="source bench/device_env.sh")
#   run(carry=[".carry/tl", ".carry/ck", ".carry/c3", ".carry/tlc"], command="source bench/device_env.sh && ...")
mkdir -p /tmp/site /tmp/tlcache
for part in tl/tl_site ck/ck_site rt/rt_site; do
  if [ -f ".carry/$part.tar.xz" ]; then tar -xJf ".carry/$part.tar.xz" -C /tmp/site; fi
done
if [ -f .carry/c3/comfyui_slim.tar.xz ]; then
  tar -xJf .carry/c3/comfyui_slim.tar.xz -C /tmp
  python3 -m pip install -q --no-deps --no-index --target /tmp/site .carry/c3/*.whl
fi
if [ -f .carry/tlc/tlcache.tar.xz ]; then tar -xJf .carry/tlc/tlcache.tar.xz -C /tmp/tlcache; fi
export PYTHONPATH=/tmp/site COMFYUI_PATH=/tmp/ComfyUI TILELANG_CACHE_DIR=/tmp/tlcache PYTHONUNBUFFERED=1
