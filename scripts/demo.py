"""The README's demo: the 3-clip SVI workflow (Wan 2.2 Turbo, 2.0 Pro latent motion) on tiny RANDOM-WEIGHT models.

It runs the shipped API workflow through real ComfyUI, with the model files swapped for tiny
random-weight ones made on the fly and stand-ins for the text / vision encoders. The pipeline
runs end to end and writes a real video; its pictures are noise, because the weights are random.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "demo"))
import pack_alias  # noqa: E402

pack_alias.import_pack()
from svi_infinity.demo.comfy_runtime import InProcessComfyUI, find_comfyui  # noqa: E402
from svi_infinity.demo.tiny_models import write_reference_image, write_tiny_model_set  # noqa: E402
from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models  # noqa: E402
from svi_infinity.svi.video_io import count_frames  # noqa: E402

WORKFLOW = "svi_wan22_turbo_3clips"
OUTPUT = pack_alias.ROOT / "output" / "svi_demo_3clips_TINY_RANDOM_WEIGHTS.mp4"


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as base_dir:
        base = Path(base_dir)
        runtime = InProcessComfyUI(find_comfyui(), base, [pack_alias.ROOT, pack_alias.ROOT / "demo" / "stand_ins"])
        tiny = write_tiny_model_set(runtime.models_dir)
        write_reference_image(base / "input" / "svi_reference.png", width=192, height=160)
        prompt = with_tiny_models(load_api_workflow(WORKFLOW), tiny, width=128, height=96, length=33)
        run = runtime.run_prompt(prompt)
        if not run.success:
            print(f"demo failed: {run.error}", file=sys.stderr)
            return 1
        saved = next(item for output in run.outputs.values() for item in output.get("images", [])
                     if item["filename"].endswith(".mp4"))
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(runtime.output_dir / saved["subfolder"] / saved["filename"], OUTPUT)
    print(f"workflow: example_workflows/api/{WORKFLOW}.json on TINY RANDOM-WEIGHT models (the video shows noise, not a scene)")
    print(f"video:    {OUTPUT.relative_to(pack_alias.ROOT)} ({count_frames(OUTPUT)} frames, 3 clips of 33 frames at 128x96, 16 fps)")
    print(f"time:     {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
