"""The shipped workflows, described once in Python and written as ComfyUI UI-format and API-format JSON.

`scripts/build_workflows.py` writes workflows/*.json from these definitions using the node
definitions of a running ComfyUI (so widget order always matches the nodes). Tests and the demo
load the API files and swap the real model names for the tiny random-weight files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"

# Model files as users have them (ComfyUI's repackaged Wan releases and the SVI / lightx2v LoRAs).
WAN21_I2V = "wan2.1_i2v_480p_14B_fp16.safetensors"
WAN22_HIGH = "wan2.2_i2v_high_noise_14B_fp16.safetensors"
WAN22_LOW = "wan2.2_i2v_low_noise_14B_fp16.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION_H = "clip_vision_h.safetensors"
SVI_LORA_WAN21 = "SVI_v2_Wan2.1-I2V-14B_lora_rank_128_fp16.safetensors"
SVI_LORA_WAN22_HIGH = "SVI_v2_PRO_Wan2.2-I2V-A14B_HIGH_lora_rank_128_fp16.safetensors"
SVI_LORA_WAN22_LOW = "SVI_v2_PRO_Wan2.2-I2V-A14B_LOW_lora_rank_128_fp16.safetensors"
SPEED_LORA_WAN21 = "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
SPEED_LORA_WAN22_HIGH = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
SPEED_LORA_WAN22_LOW = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
REFERENCE_IMAGE = "svi_reference.png"

PRO_MODE = "2.0 Pro (latent motion)"
SHOT_MODE = "1.0 Shot/Dance/Talk (pixel motion, reference padding)"
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
class Graph:
    nodes: list[GraphNode] = field(default_factory=list)

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
            row = rows.get(column, 0)
            rows[column] = row + 1
            ui_nodes.append({
                "id": int(node.id), "type": node.class_type, "title": node.title, "pos": [40 + 380 * column, 40 + 260 * row],
                "size": [340, 200], "flags": {}, "order": int(node.id) - 1, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.class_type}, "widgets_values": widgets_values,
            })
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": ui_nodes,
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


def _wan_models(graph: Graph, wan22: bool):
    """Loaders and LoRA stacks; returns (model, model_low or None, clip, vae, clip_vision or None)."""
    vae = graph.add("VAELoader", "Wan 2.1 VAE", vae_name=WAN_VAE)
    clip = graph.add("CLIPLoader", "umt5-xxl text encoder", clip_name=UMT5, type="wan", device="default")
    if wan22:
        high = graph.add("UNETLoader", "Wan 2.2 I2V high-noise expert", unet_name=WAN22_HIGH, weight_dtype="default")
        low = graph.add("UNETLoader", "Wan 2.2 I2V low-noise expert", unet_name=WAN22_LOW, weight_dtype="default")
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
                           steps=4, shift=5.0, boundary_sigma=0.9, cfg=1.0, **sampler_links)
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
    return graph


def long_video_workflow(wan22: bool, prompts=TWELVE_PROMPTS, seed: int = 42) -> Graph:
    """The same story as a one-minute video: one SVI Long Video node runs all clips, saving each as it finishes."""
    graph = Graph()
    model, model_low, clip, vae, clip_vision = _wan_models(graph, wan22)
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
        schedule=LIGHTNING, steps=4, shift=5.0, boundary_sigma=0.9, cfg=1.0, crossfade=0, fps=16.0,
        filename_prefix=f"svi/{'wan22' if wan22 else 'wan21'}_long_video", resume=False, **optional)
    graph.add("SaveVideo", "Save video", video=(long_video, 0), filename_prefix="svi/long_video", format="auto", codec="auto")
    return graph


SHIPPED = {
    "svi_wan21_3clips": lambda: three_clip_workflow(wan22=False),
    "svi_wan22_turbo_3clips": lambda: three_clip_workflow(wan22=True),
    "svi_wan21_long_12clips": lambda: long_video_workflow(wan22=False),
    "svi_wan22_turbo_long_12clips": lambda: long_video_workflow(wan22=True),
}


def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / "api" / f"{name}.json").read_text())


def with_tiny_models(prompt: dict, tiny: dict[str, str], *, width: int = 64, height: int = 64, length: int = 17,
                     num_clips: int | None = None, reference: str = REFERENCE_IMAGE, gguf: bool = False) -> dict:
    """The same graph on the tiny random-weight files, small clips, and the stand-in text / vision encoders.

    `gguf`: the diffusion models are .gguf files, loaded by ComfyUI-GGUF's UnetLoaderGGUF instead of UNETLoader."""
    names = {WAN21_I2V: tiny["wan21_i2v"], WAN22_HIGH: tiny["wan22_high"], WAN22_LOW: tiny["wan22_low"], WAN_VAE: tiny["vae"],
             SVI_LORA_WAN21: tiny["svi_lora_wan21"], SVI_LORA_WAN22_HIGH: tiny["svi_lora_wan22_high"],
             SVI_LORA_WAN22_LOW: tiny["svi_lora_wan22_low"], SPEED_LORA_WAN21: tiny["speed_lora_wan21"],
             SPEED_LORA_WAN22_HIGH: "None", SPEED_LORA_WAN22_LOW: "None"}
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in list(inputs.items()):
            if isinstance(value, str) and value in names:
                inputs[key] = names[value]
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
    """UI format in workflows/ (ComfyUI's template browser lists that folder), API format in workflows/api/."""
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
