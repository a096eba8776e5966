"""The shipped workflows, described once in Python and written as ComfyUI UI-format and API-format JSON.

`scripts/build_workflows.py` writes example_workflows/*.json (ComfyUI's template folder; API format in
example_workflows/api/) from these definitions using the node definitions of a running ComfyUI (so widget order
always matches the nodes); `scripts/render_thumbnails.py` draws each graph into example_workflows/<name>.jpg, the
template browser's thumbnail. Every model file a workflow names carries its download URL and ComfyUI folder
(`MODEL_FILES`, written into the loader nodes' `properties.models`, the frontend's missing-model convention), and
each UI file has a note explaining its inputs. Tests and the demo load the API files and swap the real model names
for the tiny random-weight files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "example_workflows"

# Model files as users have them: ComfyUI's repackaged Wan releases, QuantStack's GGUF conversions, the SVI authors'
# LoRAs and the lightx2v speed LoRAs.
WAN21_I2V = "wan2.1_i2v_480p_14B_fp16.safetensors"
WAN22_HIGH = "wan2.2_i2v_high_noise_14B_fp16.safetensors"
WAN22_LOW = "wan2.2_i2v_low_noise_14B_fp16.safetensors"
WAN22_HIGH_FP8 = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
WAN22_LOW_FP8 = "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
WAN22_HIGH_GGUF = "Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf"
WAN22_LOW_GGUF = "Wan2.2-I2V-A14B-LowNoise-Q8_0.gguf"
WAN_VAE = "wan_2.1_vae.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION_H = "clip_vision_h.safetensors"
SVI_LORA_WAN21 = "SVI_Wan2.1-I2V-14B_lora_v2.0.safetensors"
SVI_LORA_WAN22_HIGH = "SVI_Wan2.2-I2V-A14B_high_noise_lora_v2.0_pro.safetensors"
SVI_LORA_WAN22_LOW = "SVI_Wan2.2-I2V-A14B_low_noise_lora_v2.0_pro.safetensors"
SPEED_LORA_WAN21 = "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"
SPEED_LORA_WAN22_HIGH = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
SPEED_LORA_WAN22_LOW = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
REFERENCE_IMAGE = "svi_reference.png"

BOUNDARY = 0.875  # the official SVI expert switch (svi/plan.py DEFAULT_BOUNDARY_SIGMA)

@dataclass(frozen=True)
class ModelFile:
    """Where a model file goes (a ComfyUI models folder) and its official download URL."""

    directory: str
    url: str


COMFY_WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
COMFY_WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
QUANTSTACK_WAN22 = "https://huggingface.co/QuantStack/Wan2.2-I2V-A14B-GGUF/resolve/main"
SVI_AUTHORS = "https://huggingface.co/vita-video-gen/svi-model/resolve/main/version-2.0"
MODEL_FILES = {
    WAN21_I2V: ModelFile("diffusion_models", f"{COMFY_WAN21}/diffusion_models/{WAN21_I2V}"),
    WAN22_HIGH: ModelFile("diffusion_models", f"{COMFY_WAN22}/diffusion_models/{WAN22_HIGH}"),
    WAN22_LOW: ModelFile("diffusion_models", f"{COMFY_WAN22}/diffusion_models/{WAN22_LOW}"),
    WAN22_HIGH_FP8: ModelFile("diffusion_models", f"{COMFY_WAN22}/diffusion_models/{WAN22_HIGH_FP8}"),
    WAN22_LOW_FP8: ModelFile("diffusion_models", f"{COMFY_WAN22}/diffusion_models/{WAN22_LOW_FP8}"),
    WAN22_HIGH_GGUF: ModelFile("diffusion_models", f"{QUANTSTACK_WAN22}/HighNoise/{WAN22_HIGH_GGUF}"),
    WAN22_LOW_GGUF: ModelFile("diffusion_models", f"{QUANTSTACK_WAN22}/LowNoise/{WAN22_LOW_GGUF}"),
    WAN_VAE: ModelFile("vae", f"{COMFY_WAN22}/vae/{WAN_VAE}"),
    UMT5: ModelFile("text_encoders", f"{COMFY_WAN21}/text_encoders/{UMT5}"),
    CLIP_VISION_H: ModelFile("clip_vision", f"{COMFY_WAN21}/clip_vision/{CLIP_VISION_H}"),
    SVI_LORA_WAN21: ModelFile("loras", f"{SVI_AUTHORS}/{SVI_LORA_WAN21}"),
    SVI_LORA_WAN22_HIGH: ModelFile("loras", f"{SVI_AUTHORS}/{SVI_LORA_WAN22_HIGH}"),
    SVI_LORA_WAN22_LOW: ModelFile("loras", f"{SVI_AUTHORS}/{SVI_LORA_WAN22_LOW}"),
    SPEED_LORA_WAN21: ModelFile("loras", f"https://huggingface.co/lightx2v/Wan2.1-Distill-Loras/resolve/main/{SPEED_LORA_WAN21}"),
    SPEED_LORA_WAN22_HIGH: ModelFile("loras", f"{COMFY_WAN22}/loras/{SPEED_LORA_WAN22_HIGH}"),
    SPEED_LORA_WAN22_LOW: ModelFile("loras", f"{COMFY_WAN22}/loras/{SPEED_LORA_WAN22_LOW}"),
}
COMFYUI_GGUF_URL = "https://github.com/city96/ComfyUI-GGUF"
WEIGHTS = ("fp16", "fp8_scaled", "gguf")  # the expert files a Wan 2.2 workflow loads
NOTE_TYPES = {"MarkdownNote", "Note"}  # frontend-only nodes: in the UI format, never sent to the server


def models_property(widget_values) -> list[dict]:
    """The frontend's `properties.models` for a node whose widgets name these files: name, url, directory."""
    return [{"name": value, "url": MODEL_FILES[value].url, "directory": MODEL_FILES[value].directory}
            for value in widget_values if isinstance(value, str) and value in MODEL_FILES]

PRO_MODE = "2.0 Pro (latent motion)"
SHOT_MODE = "1.0 Shot / 2.0 on Wan 2.1 (pixel motion, reference padding)"
LIGHTNING = "lightning 4-step (lightx2v / Wan2.2-Lightning)"
ONE_LATENT_FRAME = "4 frames (1 latent frame)"
THREE_PROMPTS = [
    "a woman in a red coat walks along a windy beach at sunset, waves rolling in",
    "she stops, turns towards the camera and smiles, her hair blowing in the wind",
    "the camera slowly pulls back to show the long empty beach and the glowing sea",
]
TWELVE_PROMPTS = THREE_PROMPTS + [
    "she picks up a seashell and looks at it closely",
    "she walks towards the dunes, footprints in the wet sand",
    "a flock of seagulls takes off in front of her",
    "she climbs the dune path, the grass swaying",
    "at the top she looks out over the coast",
    "the sun touches the horizon, the sky turns orange and purple",
    "she sits down on a wooden bench and watches the sea",
    "the first stars appear above the water",
    "the camera rises into the night sky above the beach",
]
NEGATIVE = "blurry, distorted, static, low quality, watermark, text"


@dataclass
class GraphNode:
    id: str
    class_type: str
    title: str
    widgets: dict
    links: dict  # input name -> (source node id, output index)


@dataclass
class Note:
    title: str
    text: str  # Markdown


ROW_HEIGHT = 260  # canvas pixels a node's row takes in its column at the least
NODE_CHROME, SLOT_HEIGHT, WIDGET_HEIGHT = 40, 20, 24  # litegraph's title bar and padding, one slot row, one widget row


@dataclass
class Graph:
    nodes: list[GraphNode] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # shown on the canvas only (UI format)

    def add(self, class_type: str, title: str | None = None, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        links = {k: v for k, v in inputs.items() if isinstance(v, tuple)}
        widgets = {k: v for k, v in inputs.items() if not isinstance(v, tuple)}
        self.nodes.append(GraphNode(node_id, class_type, title or class_type, widgets, links))
        return node_id

    def to_api(self) -> dict:
        return {
            node.id: {"class_type": node.class_type,
                      "inputs": {**node.widgets, **{k: [src, index] for k, (src, index) in node.links.items()}},
                      "_meta": {"title": node.title}}
            for node in self.nodes
        }

    def to_ui(self, object_info: dict) -> dict:
        """litegraph's saved-workflow format (version 0.4), laid out in columns by dependency depth."""
        depth: dict[str, int] = {}
        for node in self.nodes:  # nodes are added after their sources
            depth[node.id] = 1 + max((depth[src] for src, _ in node.links.values()), default=-1)
        rows: dict[int, int] = {}
        links, ui_nodes = [], []
        outgoing: dict[tuple[str, int], list[int]] = {}
        for node in self.nodes:
            info = object_info[node.class_type]
            for name, (src, index) in node.links.items():
                link_id = len(links) + 1
                src_type = object_info[self.node(src).class_type]["output"][index]
                links.append([link_id, int(src), index, int(node.id), None, src_type, name])
                outgoing.setdefault((src, index), []).append(link_id)
        for node in self.nodes:
            info = object_info[node.class_type]
            inputs, widgets_values = [], []
            for name, spec, optional in ordered_inputs(info):
                if is_widget(spec):
                    widgets_values.append(node.widgets.get(name, default_value(spec)))
                    widgets_values.extend(widget_extras(spec, node.widgets.get(name)))
                    if name in node.links:
                        inputs.append({"name": name, "type": spec_type(spec), "widget": {"name": name}, "link": None})
                elif name in node.links or not optional:
                    inputs.append({"name": name, "type": spec_type(spec), "link": None})
                elif optional:
                    inputs.append({"name": name, "type": spec_type(spec), "link": None, "shape": 7})
            for slot, entry in enumerate(inputs):
                if entry["name"] in node.links:
                    link = next(link for link in links if link[3] == int(node.id) and link[6] == entry["name"])
                    link[4] = slot
                    entry["link"] = link[0]
            outputs = [{"name": out_name, "type": out_type, "links": outgoing.get((node.id, index), []), "slot_index": index}
                       for index, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"]))]
            column = depth[node.id]
            top = rows.get(column, 40)
            slots = max(len([entry for entry in inputs if "widget" not in entry]), len(outputs))
            rows[column] = top + max(ROW_HEIGHT, NODE_CHROME + SLOT_HEIGHT * slots + WIDGET_HEIGHT * len(widgets_values) + 30)
            properties = {"Node name for S&R": node.class_type}
            models = models_property(widgets_values)
            if models:
                properties["models"] = models
            ui_nodes.append({
                "id": int(node.id), "type": node.class_type, "title": node.title, "pos": [40 + 380 * column, top],
                "size": [340, 200], "flags": {}, "order": int(node.id) - 1, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": properties, "widgets_values": widgets_values,
            })
        for index, note in enumerate(self.notes):  # a column of their own, left of the graph
            ui_nodes.append({
                "id": len(self.nodes) + index + 1, "type": "MarkdownNote", "title": note.title, "pos": [-520, 40 + 700 * index],
                "size": [520, 660], "flags": {}, "order": len(self.nodes) + index, "mode": 0, "inputs": [], "outputs": [],
                "properties": {}, "widgets_values": [note.text], "color": "#432", "bgcolor": "#653",
            })
        return {"last_node_id": len(self.nodes) + len(self.notes), "last_link_id": len(links), "nodes": ui_nodes,
                "links": [link[:6] for link in links], "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [0, 0]}},
                "version": 0.4}

    def node(self, node_id: str) -> GraphNode:
        return self.nodes[int(node_id) - 1]

    @classmethod
    def from_api(cls, prompt: dict) -> "Graph":
        """The graph of an API-format prompt (node ids renumbered in a dependency order), e.g. to draw it on a canvas."""
        order: list[str] = []

        def visit(node_id: str) -> None:
            if node_id in order:
                return
            for value in prompt[node_id]["inputs"].values():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    visit(value[0])
            order.append(node_id)

        for node_id in prompt:
            visit(node_id)
        new_id = {old: str(index + 1) for index, old in enumerate(order)}
        graph = cls()
        for old in order:
            node = prompt[old]
            inputs = {k: (new_id[v[0]], v[1]) if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) else v
                      for k, v in node["inputs"].items()}
            graph.add(node["class_type"], node.get("_meta", {}).get("title"), **inputs)
        return graph


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def spec_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def is_widget(spec) -> bool:
    return spec_type(spec) in WIDGET_TYPES


def default_value(spec):
    options = spec[1] if len(spec) > 1 else {}
    if isinstance(spec[0], list):
        return options.get("default", spec[0][0] if spec[0] else None)
    if spec[0] == "COMBO":
        return options.get("default", (options.get("options") or [None])[0])
    return options.get("default")


def widget_extras(spec, value) -> list:
    """Values the frontend stores after a widget: 'control after generate' for seeds, the upload button's mode."""
    options = spec[1] if len(spec) > 1 else {}
    extras = []
    if options.get("control_after_generate"):
        extras.append("fixed")
    if options.get("image_upload"):
        extras.append("image")
    return extras


def ordered_inputs(info: dict):
    """(name, spec, optional) in the node's declared order."""
    order = info.get("input_order", {})
    for section, optional in (("required", False), ("optional", True)):
        specs = info["input"].get(section, {})
        for name in order.get(section, list(specs)):
            yield name, specs[name], optional


EXPERTS = {  # weights -> the two Wan 2.2 expert files
    "fp16": (WAN22_HIGH, WAN22_LOW),
    "fp8_scaled": (WAN22_HIGH_FP8, WAN22_LOW_FP8),
    "gguf": (WAN22_HIGH_GGUF, WAN22_LOW_GGUF),
}


def _expert_loader(graph: Graph, weights: str, which: str, file_name: str) -> str:
    title = f"Wan 2.2 I2V {which}-noise expert" + ("" if weights == "fp16" else f" ({weights.replace('gguf', 'GGUF Q8_0')})")
    if weights == "gguf":  # ComfyUI-GGUF's loader: the weights stay quantised, dequantised per layer as they run
        return graph.add("UnetLoaderGGUF", title, unet_name=file_name)
    return graph.add("UNETLoader", title, unet_name=file_name, weight_dtype="default")


def _wan_models(graph: Graph, wan22: bool, weights: str = "fp16"):
    """Loaders and LoRA stacks; returns (model, model_low or None, clip, vae, clip_vision or None)."""
    vae = graph.add("VAELoader", "Wan 2.1 VAE", vae_name=WAN_VAE)
    clip = graph.add("CLIPLoader", "umt5-xxl text encoder", clip_name=UMT5, type="wan", device="default")
    if wan22:
        high_file, low_file = EXPERTS[weights]
        high = _expert_loader(graph, weights, "high", high_file)
        low = _expert_loader(graph, weights, "low", low_file)
        high = graph.add("SVILoraStack", "LoRAs: high-noise", model=(high, 0), svi_lora=SVI_LORA_WAN22_HIGH, svi_strength=1.0,
                         speed_lora=SPEED_LORA_WAN22_HIGH, speed_strength=0.5, style_lora="None", style_strength=1.0)
        low = graph.add("SVILoraStack", "LoRAs: low-noise", model=(low, 0), svi_lora=SVI_LORA_WAN22_LOW, svi_strength=1.0,
                        speed_lora=SPEED_LORA_WAN22_LOW, speed_strength=1.0, style_lora="None", style_strength=1.0)
        return (high, 0), (low, 0), (clip, 0), (vae, 0), None
    model = graph.add("UNETLoader", "Wan 2.1 I2V 14B 480p", unet_name=WAN21_I2V, weight_dtype="default")
    model = graph.add("SVILoraStack", "LoRAs: SVI + lightx2v", model=(model, 0), svi_lora=SVI_LORA_WAN21, svi_strength=1.0,
                      speed_lora=SPEED_LORA_WAN21, speed_strength=1.0, style_lora="None", style_strength=1.0)
    clip_vision = graph.add("CLIPVisionLoader", "CLIP vision (Wan 2.1 image branch)", clip_name=CLIP_VISION_H)
    return (model, 0), None, (clip, 0), (vae, 0), (clip_vision, 0)


def _files_of(graph: Graph) -> list[str]:
    return [value for node in graph.nodes for value in node.widgets.values() if isinstance(value, str) and value in MODEL_FILES]


def _model_list(graph: Graph) -> str:
    """The graph's model files as a Markdown list by folder, each with its download link."""
    lines = []
    for name in dict.fromkeys(_files_of(graph)):
        lines.append(f"- `ComfyUI/models/{MODEL_FILES[name].directory}/` [{name}]({MODEL_FILES[name].url})")
    return "\n".join(lines)


FAST_KERNELS_NOTE = (
    "**Speed (Hopper: H100, H200)**: both experts go through *SVI Fast Kernels* with the 8-bit attention and fp8 GEMMs "
    "on, which run the fp8_scaled weights as stored, and the VAE comes out of the first one with a faster decode. On "
    "one H200, Wan 2.1 at 480p on fp8_scaled weights made a clip in 9.46 s this way, against 15.52 s on ComfyUI's own "
    "path and 10.04 s with SageAttention 2 (the pack's bench/results/side_by_side_h200.md); the latents are about 2e-2 "
    "from ComfyUI's (fp8's own error). The first run compiles the kernels in the background for 832 x 480 x 81 "
    "(tens of seconds, steps meanwhile on ComfyUI's ops); set the nodes' precompile size to yours. On any other GPU "
    "the nodes pass the models through unchanged and their report says why.\n\n")


def input_note(graph: Graph, *, wan22: bool, weights: str, long_video: bool, fast_kernels: bool = False) -> Note:
    """What a user sets before queueing, and where each file goes."""
    if long_video:
        story = ("- **prompts** (SVI Long Video): one line per clip; every clip is 81 frames, about 5 s at 16 fps. After "
                 "a `|` a line may set `repeat=2 style=0.6 seed=123 end=image.png drift=off` (the README lists them). "
                 "**num_clips** may exceed the lines (prompt_overflow says what the extra clips get).\n"
                 "- **filename_prefix**: the run folder, `ComfyUI/output/<prefix>_run_00001/`: every finished clip is "
                 "saved there at once, and the video grows clip by clip. With **resume** on, queueing again with the same "
                 "settings continues at the first missing clip.\n"
                 "- **seed**: clip k samples with seed + 42 k.\n")
    else:
        story = ("- **Clip N prompt**: one text per clip; each clip's sampler has its own clip_index, so its own seed.\n"
                 "- **Save video**: the stitched clips, under `ComfyUI/output/svi/`.\n")
    models = {"fp16": "fp16 experts (about 28 GB each: for cards with room for one in VRAM).",
              "fp8_scaled": "ComfyUI's fp8_scaled experts (about 14 GB each), the files ComfyUI's own Wan 2.2 template "
                            "runs on 24 GB cards.",
              "gguf": "GGUF Q8_0 experts (about 15 GB each), loaded by ComfyUI-GGUF's *Unet Loader (GGUF)*: install "
                      f"[ComfyUI-GGUF]({COMFYUI_GGUF_URL}) first. The same repository has smaller quantisations for "
                      "smaller cards."}[weights] if wan22 else "Wan 2.1 I2V 14B at 480p, fp16."
    text = (f"## SVI Infinity: inputs\n\n"
            f"- **Reference image** (Load Image): the picture every clip is anchored to. The template names "
            f"`{REFERENCE_IMAGE}`: put your image in `ComfyUI/input/` and pick it, or upload it on the node.\n"
            f"{story}"
            f"- **width / height**: 832 x 480 as trained; multiples of 16.\n\n"
            f"**Model**: {models}\n\n"
            f"{FAST_KERNELS_NOTE if fast_kernels else ''}"
            f"**Files** (folder, then file with its download link):\n\n{_model_list(graph)}\n\n"
            f"Which files and workflow suit which GPU: the pack's README.")
    return Note("Read me: inputs and model files", text)


def three_clip_workflow(wan22: bool, prompts=THREE_PROMPTS, seed: int = 42) -> Graph:
    """One reference, one prompt per clip, each clip built from the atomic SVI nodes so every step is visible."""
    graph = Graph()
    model, model_low, clip, vae, clip_vision = _wan_models(graph, wan22)
    mode = PRO_MODE if wan22 else SHOT_MODE
    image = graph.add("LoadImage", "Reference image", image=REFERENCE_IMAGE)
    anchor = graph.add("SVIEncodeAnchor", vae=vae, image=(image, 0), width=832, height=480)
    negative = graph.add("CLIPTextEncode", "Negative prompt", clip=clip, text=NEGATIVE)
    video = None
    previous_latent = previous_frames = None
    for index, text in enumerate(prompts):
        positive = graph.add("CLIPTextEncode", f"Clip {index + 1} prompt", clip=clip, text=text)
        extra = {}
        if wan22:
            extra["anchor"] = (anchor, 0)
            if previous_latent is not None:
                extra["motion"] = (graph.add("SVIMotionLatent", f"Clip {index + 1} motion", clip_latent=previous_latent,
                                             motion=ONE_LATENT_FRAME), 0)
        else:
            extra["reference"] = (anchor, 1)
            first_frame = (anchor, 1)
            if previous_frames is not None:
                motion = graph.add("SVIMotionFrames", f"Clip {index + 1} motion frames", frames=previous_frames, count=5)
                extra["motion_frames"] = (motion, 0)
                first_frame = (graph.add("ImageFromBatch", f"Clip {index + 1} first conditioning frame", image=(motion, 0),
                                         batch_index=0, length=1), 0)
            extra["clip_vision_output"] = (graph.add("CLIPVisionEncode", f"Clip {index + 1} CLIP vision", clip_vision=clip_vision,
                                                     image=first_frame, crop="center"), 0)
        conditioning = graph.add("SVIConditioning", f"Clip {index + 1} conditioning", positive=(positive, 0), negative=(negative, 0),
                                 vae=vae, mode=mode, length=81, **extra)
        sampler_links = {"model_low_noise": model_low} if model_low else {}
        latent = graph.add("SVITurboSampler", f"Clip {index + 1} sampler", model=model, positive=(conditioning, 0),
                           negative=(conditioning, 1), latent=(conditioning, 2), seed=seed, clip_index=index, schedule=LIGHTNING,
                           steps=4, shift=5.0, boundary_sigma=BOUNDARY, cfg=1.0, **sampler_links)
        frames = graph.add("VAEDecode", f"Clip {index + 1} decode", samples=(latent, 0), vae=vae)
        if video is None:
            video = (frames, 0)
        else:
            join = graph.add("SVIJoinClips", f"Join clip {index + 1}", video=video, next_clip=(frames, 0), mode=mode,
                             motion=ONE_LATENT_FRAME, conditioning_frames=5, crossfade=0, fps=16.0)
            video = (join, 0)
            last_join = join
        previous_latent, previous_frames = (latent, 0), (frames, 0)
    graph.add("SaveVideo", "Save video", video=(last_join, 1), filename_prefix="svi/three_clips", format="auto", codec="auto")
    graph.notes.append(input_note(graph, wan22=wan22, weights="fp16", long_video=False))
    return graph


def _fast_kernels(graph: Graph, model, which: str, vae=None) -> tuple:
    """SVI Fast Kernels on one expert with its fastest switches (the 8-bit attention, fp8 GEMMs on the stored fp8
    weights), compiling in the background for the workflow's clip size; with `vae`, the fast VAE comes out too."""
    from ..kernels.model_patch import EIGHT_BIT, FP8_GEMMS, IN_BACKGROUND

    extra = {"vae": vae} if vae is not None else {}
    return (graph.add("SVIKernelAccelerate", f"Fast kernels: {which}-noise expert (Hopper)", model=model, attention=True,
                      attention_backend="auto", attention_precision=EIGHT_BIT, gemm_precision=FP8_GEMMS, norms=True,
                      precompile_width=832, precompile_height=480, precompile_length=81, precompile_cfg=False,
                      precompile_mode=IN_BACKGROUND, **extra), 0)


def long_video_workflow(wan22: bool, prompts=TWELVE_PROMPTS, seed: int = 42, weights: str = "fp16",
                        fast_kernels: bool = False) -> Graph:
    """The same story as a one-minute video: one SVI Long Video node runs all clips, saving each as it finishes.
    `weights` (Wan 2.2): the expert files, fp16, ComfyUI's fp8_scaled or GGUF Q8_0. `fast_kernels` (Wan 2.2): both
    experts and the VAE through SVI Fast Kernels with its fastest switches."""
    graph = Graph()
    model, model_low, clip, vae, clip_vision = _wan_models(graph, wan22, weights)
    if fast_kernels:
        model = _fast_kernels(graph, model, "high", vae)
        model_low = _fast_kernels(graph, model_low, "low")
        vae = (model[0], 2)
    image = graph.add("LoadImage", "Reference image", image=REFERENCE_IMAGE)
    optional = {}
    if model_low:
        optional["model_low_noise"] = model_low
    if clip_vision:
        optional["clip_vision"] = clip_vision
    long_video = graph.add(
        "SVILongVideo", "SVI Long Video", model=model, clip=clip, vae=vae, reference=(image, 0), prompts="\n".join(prompts),
        negative_prompt=NEGATIVE, prompt_overflow="cycle through the list", num_clips=len(prompts), width=832, height=480,
        length=81, mode=PRO_MODE if wan22 else SHOT_MODE, motion=ONE_LATENT_FRAME, conditioning_frames=5, seed=seed,
        schedule=LIGHTNING, steps=4, shift=5.0, boundary_sigma=BOUNDARY, cfg=1.0, crossfade=0, fps=16.0,
        filename_prefix=f"svi/{'wan22' if wan22 else 'wan21'}_long_video", resume=False, **optional)
    graph.add("SaveVideo", "Save video", video=(long_video, 0), filename_prefix="svi/long_video", format="auto", codec="auto")
    graph.notes.append(input_note(graph, wan22=wan22, weights=weights, long_video=True, fast_kernels=fast_kernels))
    return graph


def ksampler_advanced_workflow(prompts=THREE_PROMPTS, seed: int = 42) -> Graph:
    """Wan 2.2 SVI 2.0 Pro from the atomic SVI nodes, sampled by ComfyUI's own KSamplerAdvanced pair: the high-noise
    expert runs steps 0-2 and hands its noisy latent to the low-noise expert for steps 2-4 (the Lightning 4-step split at
    shift 5). Any sampler, scheduler, step split and per-expert cfg can be set there; each clip gets its own seed."""
    graph = Graph()
    model, model_low, clip, vae, _ = _wan_models(graph, wan22=True)
    high = graph.add("ModelSamplingSD3", "Shift 5 (high-noise)", model=model, shift=5.0)
    low = graph.add("ModelSamplingSD3", "Shift 5 (low-noise)", model=model_low, shift=5.0)
    image = graph.add("LoadImage", "Reference image", image=REFERENCE_IMAGE)
    anchor = graph.add("SVIEncodeAnchor", vae=vae, image=(image, 0), width=832, height=480)
    negative = graph.add("CLIPTextEncode", "Negative prompt", clip=clip, text=NEGATIVE)
    video = previous_latent = last_join = None
    for index, text in enumerate(prompts):
        positive = graph.add("CLIPTextEncode", f"Clip {index + 1} prompt", clip=clip, text=text)
        extra = {"anchor": (anchor, 0)}
        if previous_latent is not None:
            extra["motion"] = (graph.add("SVIMotionLatent", f"Clip {index + 1} motion", clip_latent=previous_latent,
                                         motion=ONE_LATENT_FRAME), 0)
        conditioning = graph.add("SVIConditioning", f"Clip {index + 1} conditioning", positive=(positive, 0),
                                 negative=(negative, 0), vae=vae, mode=PRO_MODE, length=81, **extra)
        clip_seed = seed + 42 * index
        first = graph.add("KSamplerAdvanced", f"Clip {index + 1} high-noise steps 0-2", model=(high, 0), add_noise="enable",
                          noise_seed=clip_seed, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple",
                          positive=(conditioning, 0), negative=(conditioning, 1), latent_image=(conditioning, 2),
                          start_at_step=0, end_at_step=2, return_with_leftover_noise="enable")
        second = graph.add("KSamplerAdvanced", f"Clip {index + 1} low-noise steps 2-4", model=(low, 0), add_noise="disable",
                           noise_seed=clip_seed, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple",
                           positive=(conditioning, 0), negative=(conditioning, 1), latent_image=(first, 0),
                           start_at_step=2, end_at_step=10000, return_with_leftover_noise="disable")
        frames = graph.add("VAEDecode", f"Clip {index + 1} decode", samples=(second, 0), vae=vae)
        if video is None:
            video = (frames, 0)
        else:
            last_join = graph.add("SVIJoinClips", f"Join clip {index + 1}", video=video, next_clip=(frames, 0), mode=PRO_MODE,
                                  motion=ONE_LATENT_FRAME, conditioning_frames=5, crossfade=0, fps=16.0)
            video = (last_join, 0)
        previous_latent = (second, 0)
    graph.add("SaveVideo", "Save video", video=(last_join, 1), filename_prefix="svi/ksampler_advanced", format="auto", codec="auto")
    graph.notes.append(input_note(graph, wan22=True, weights="fp16", long_video=False))
    return graph


SHIPPED = {
    "svi_wan21_3clips": lambda: three_clip_workflow(wan22=False),
    "svi_wan22_turbo_3clips": lambda: three_clip_workflow(wan22=True),
    "svi_wan21_long_12clips": lambda: long_video_workflow(wan22=False),
    "svi_wan22_turbo_long_12clips": lambda: long_video_workflow(wan22=True),
    "svi_wan22_ksampler_advanced_3clips": ksampler_advanced_workflow,
    "svi_wan22_turbo_long_12clips_fp8_scaled": lambda: long_video_workflow(wan22=True, weights="fp8_scaled"),
    "svi_wan22_turbo_long_12clips_hopper_fast": lambda: long_video_workflow(wan22=True, weights="fp8_scaled",
                                                                           fast_kernels=True),
    "svi_wan22_turbo_long_12clips_gguf_q8_0": lambda: long_video_workflow(wan22=True, weights="gguf"),
}


def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / "api" / f"{name}.json").read_text())


def with_tiny_models(prompt: dict, tiny: dict[str, str], *, width: int = 64, height: int = 64, length: int = 17,
                     num_clips: int | None = None, reference: str = REFERENCE_IMAGE, gguf: bool = False) -> dict:
    """The same graph on the tiny random-weight files, small clips, and the stand-in text / vision encoders.

    `gguf`: the diffusion models are .gguf files, loaded by ComfyUI-GGUF's UnetLoaderGGUF instead of UNETLoader. Without
    it, a GGUF template's experts become ComfyUI's own loader on the tiny safetensors experts (this checks the graph, not
    GGUF loading)."""
    names = {WAN21_I2V: tiny["wan21_i2v"], WAN22_HIGH: tiny["wan22_high"], WAN22_LOW: tiny["wan22_low"],
             WAN22_HIGH_FP8: tiny["wan22_high"], WAN22_LOW_FP8: tiny["wan22_low"], WAN22_HIGH_GGUF: tiny["wan22_high"],
             WAN22_LOW_GGUF: tiny["wan22_low"], WAN_VAE: tiny["vae"],
             SVI_LORA_WAN21: tiny["svi_lora_wan21"], SVI_LORA_WAN22_HIGH: tiny["svi_lora_wan22_high"],
             SVI_LORA_WAN22_LOW: tiny["svi_lora_wan22_low"], SPEED_LORA_WAN21: tiny["speed_lora_wan21"],
             SPEED_LORA_WAN22_HIGH: "None", SPEED_LORA_WAN22_LOW: "None"}
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in list(inputs.items()):
            if isinstance(value, str) and value in names:
                inputs[key] = names[value]
        if node["class_type"] == "UnetLoaderGGUF" and not gguf:
            node["class_type"] = "UNETLoader"
            inputs["weight_dtype"] = "default"
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = "SVIStandInTextEncoderLoader"
            node["inputs"] = {"clip_name": inputs["clip_name"], "type": inputs["type"]}
        elif node["class_type"] == "CLIPVisionLoader":
            node["class_type"] = "SVIStandInClipVisionLoader"
        elif node["class_type"] == "UNETLoader" and gguf:
            node["class_type"] = "UnetLoaderGGUF"
            node["inputs"] = {"unet_name": inputs["unet_name"]}
        elif node["class_type"] == "LoadImage":
            inputs["image"] = reference
        if "width" in inputs and "height" in inputs:
            inputs["width"], inputs["height"] = width, height
        if "length" in inputs and node["class_type"] in ("SVIConditioning", "SVILongVideo"):
            inputs["length"] = length
        if num_clips is not None and "num_clips" in inputs:
            inputs["num_clips"] = num_clips
    return prompt


def object_info(class_type: str) -> dict:
    """What ComfyUI's /object_info reports for one node type (inputs, their order, outputs); needs ComfyUI loaded."""
    import nodes
    from comfy_api.internal import _ComfyNodeInternal

    node_class = nodes.NODE_CLASS_MAPPINGS[class_type]
    if issubclass(node_class, _ComfyNodeInternal):
        return node_class.GET_NODE_INFO_V1()
    inputs = node_class.INPUT_TYPES()
    return {"input": inputs, "input_order": {key: list(value) for key, value in inputs.items()},
            "output": list(node_class.RETURN_TYPES),
            "output_name": list(getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES))}


def write_shipped_workflows(directory: Path = WORKFLOWS_DIR) -> list[Path]:
    """UI format in example_workflows/ (ComfyUI's template browser lists that folder), API format in its api/."""
    written = []
    (directory / "api").mkdir(parents=True, exist_ok=True)
    for name, build in SHIPPED.items():
        graph = build()
        info = {node.class_type: object_info(node.class_type) for node in graph.nodes}
        for path, content in ((directory / f"{name}.json", graph.to_ui(info)), (directory / "api" / f"{name}.json", graph.to_api())):
            path.write_text(json.dumps(content, indent=2) + "\n")
            written.append(path)
    return written


def node_doc(class_type: str) -> str:
    """A node's help page (shown by ComfyUI's node help) from its own schema: description, inputs, outputs."""
    info = object_info(class_type)
    lines = [f"# {info.get('display_name', class_type)}", "", info.get("description", ""), "", "## Inputs", ""]
    for name, spec, optional in ordered_inputs(info):
        options = spec[1] if len(spec) > 1 else {}
        kind = spec_type(spec).lower()
        lines.append(f"- **{name}** ({kind}{', optional' if optional else ''}): {options.get('tooltip', '')}")
    lines += ["", "## Outputs", ""]
    for out_type, out_name in zip(info["output"], info["output_name"]):
        lines.append(f"- **{out_name}** ({out_type.lower()})")
    return "\n".join(lines) + "\n"


def write_node_docs(pack_node_ids, directory: Path = WORKFLOWS_DIR.parent / "web" / "docs") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for class_type in pack_node_ids:
        path = directory / f"{class_type}.md"
        path.write_text(node_doc(class_type))
        written.append(path)
    return written
