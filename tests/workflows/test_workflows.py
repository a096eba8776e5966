"""The shipped workflows: UI files are consistent with the real node definitions (ComfyUI-GGUF's loader included), carry
every model file's download URL and folder, a note on their inputs and a thumbnail; API files run end to end."""

import json
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
from PIL import Image

from svi_infinity.demo.workflows import (MODEL_FILES, NOTE_TYPES, REFERENCE_IMAGE, SHIPPED, WORKFLOWS_DIR, is_widget,
                                         load_api_workflow, object_info, ordered_inputs, spec_type, widget_extras,
                                         with_tiny_models)

UI_FILES = sorted(WORKFLOWS_DIR.glob("*.json"))
API_NAMES = sorted(SHIPPED)
TINY_LENGTH = 17  # frames per tiny clip: 5 latent frames


def check_ui_workflow(workflow: dict, info_of) -> None:
    """Node types exist, every link joins an output to an input of the same type, widget values fit their widgets."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    assert workflow["last_node_id"] == max(nodes)
    for link_id, src, src_slot, dst, dst_slot, link_type in workflow["links"]:
        output = nodes[src]["outputs"][src_slot]
        target = nodes[dst]["inputs"][dst_slot]
        assert link_id in output["links"], f"link {link_id} missing from node {src}'s output list"
        assert target["link"] == link_id, f"node {dst} input {target['name']} does not point back at link {link_id}"
        assert output["type"] == link_type == target["type"] or target["type"] == "*", f"link {link_id}: {output['type']} -> {target['type']}"
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES:  # drawn by the frontend only: no inputs, outputs or server-side definition
            assert not node["inputs"] and not node["outputs"] and len(node["widgets_values"]) == 1
            continue
        info = info_of(node["type"])
        declared = {name: spec for name, spec, _ in ordered_inputs(info)}
        expected_values = []
        for name, spec, _ in ordered_inputs(info):
            if is_widget(spec):
                expected_values.append(spec)
                expected_values.extend([None] * len(widget_extras(spec, None)))
        assert len(node["widgets_values"]) == len(expected_values), f"{node['type']} #{node['id']}: widget count"
        widget_specs = [(n, s) for n, s, _ in ordered_inputs(info) if is_widget(s)]
        values = iter(node["widgets_values"])
        for name, spec in widget_specs:
            value = next(values)
            for _ in widget_extras(spec, None):
                next(values)
            kind = spec_type(spec)
            options = spec[1] if len(spec) > 1 else {}
            if kind == "COMBO" and not name.endswith(("_name", "_lora")) and name != "image":
                choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
                assert value in choices, f"{node['type']}.{name}={value!r} is not one of {choices}"
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)), f"{node['type']}.{name}={value!r}"
                if "min" in options:
                    assert value >= options["min"], f"{node['type']}.{name}={value} below min"
                if "max" in options:
                    assert value <= options["max"], f"{node['type']}.{name}={value} above max"
        for entry in node["inputs"]:
            assert entry["name"] in declared, f"{node['type']} has no input {entry['name']}"
        for slot, output in enumerate(node["outputs"]):
            assert output["type"] == info["output"][slot]


def test_every_shipped_workflow_is_a_template():
    assert sorted(p.stem for p in UI_FILES) == sorted(SHIPPED) == sorted(p.stem for p in (WORKFLOWS_DIR / "api").glob("*.json"))


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_matches_node_definitions(path, comfy_runtime, comfyui_gguf):
    check_ui_workflow(json.loads(path.read_text()), object_info)


MODEL_FILE_ENDINGS = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin")


def model_widgets(node: dict, info: dict) -> dict[str, str]:
    """A loader's file widgets (combos named *_name or *_lora holding a model file, so not KSampler's sampler_name) ->
    the file each names ('None' left out)."""
    values = iter(node["widgets_values"])
    files = {}
    for name, spec, _ in ordered_inputs(info):
        if is_widget(spec):
            value = next(values)
            for _ in widget_extras(spec, None):
                next(values)
            if spec_type(spec) == "COMBO" and name.endswith(("_name", "_lora")) and str(value).endswith(MODEL_FILE_ENDINGS):
                files[name] = value
    return files


@contextmanager
def model_files_in_place(names):
    """Empty files with these model names in the folders MODEL_FILES gives (ComfyUI lists, never loads, them here)."""
    import folder_paths

    placed = []
    try:
        for name in names:
            folder = Path(folder_paths.get_folder_paths(MODEL_FILES[name].directory)[0])
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / name).exists():
                (folder / name).touch()
                placed.append(folder / name)
        folder_paths.filename_list_cache.clear()
        yield
    finally:
        for file in placed:
            file.unlink()
        folder_paths.filename_list_cache.clear()


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_every_model_file_has_its_download_url_and_the_folder_its_loader_reads(path, comfy_runtime, comfyui_gguf):
    """Each loader's `properties.models` lists exactly the files its widgets name, with an official https URL ending in
    the file name and a folder; an empty file of that name put in that folder shows up in the loader's own list, so a
    download to that folder is one the node finds."""
    workflow = json.loads(path.read_text())
    loaders = [(node, model_widgets(node, object_info(node["type"]))) for node in workflow["nodes"] if node["type"] not in NOTE_TYPES]
    for node, files in loaders:
        models = node["properties"].get("models", [])
        assert sorted(m["name"] for m in models) == sorted(files.values()), f"{node['type']} #{node['id']}"
        for model in models:
            assert set(model) == {"name", "url", "directory"}
            assert model["url"].startswith("https://") and model["url"].endswith("/" + model["name"]), model
            assert model["directory"] == MODEL_FILES[model["name"]].directory
    with model_files_in_place({name for _, files in loaders for name in files.values()}):
        for node, files in loaders:
            listed = object_info(node["type"])
            for widget, file_name in files.items():
                spec = next(spec for name, spec, _ in ordered_inputs(listed) if name == widget)
                choices = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])
                assert file_name in choices, f"{node['type']}.{widget} does not list {file_name} from its folder"


@pytest.mark.parametrize("name", API_NAMES)
def test_api_workflow_with_its_real_files_passes_comfyuis_validation(name, comfy_runtime, comfyui_gguf):
    """The API file as shipped (real model names, ComfyUI-GGUF's loader, real encoders) is a prompt ComfyUI accepts."""
    prompt = load_api_workflow(name)
    files = {value for node in prompt.values() for value in node["inputs"].values() if isinstance(value, str) and value in MODEL_FILES}
    with model_files_in_place(files):
        valid, error, outputs, node_errors = comfy_runtime.validate(prompt)
    assert valid, (error, node_errors)
    assert outputs


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_a_note_explains_the_inputs_and_links_every_file(path):
    workflow = json.loads(path.read_text())
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote"]
    assert len(notes) == 1
    note = notes[0]
    assert f"`{REFERENCE_IMAGE}`" in note and "ComfyUI/input/" in note
    loader = next(node for node in workflow["nodes"] if node["type"] == "LoadImage")
    assert loader["widgets_values"][0] == REFERENCE_IMAGE
    files = {model["name"] for node in workflow["nodes"] for model in node["properties"].get("models", [])}
    assert files
    for name in files:
        assert f"`ComfyUI/models/{MODEL_FILES[name].directory}/` [{name}]({MODEL_FILES[name].url})" in note
    if "long" in path.stem:
        assert "one line per clip" in note and "_run_00001/" in note and "resume" in note
    if "gguf" in path.stem:
        assert "ComfyUI-GGUF" in note


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_each_template_has_a_thumbnail_the_template_browser_finds(path):
    """ComfyUI's template browser shows `<name>.jpg` beside `<name>.json` (scripts/render_thumbnails.py draws it)."""
    thumbnail = path.with_suffix(".jpg")
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.width >= 640 and image.height >= 360
        histogram = image.convert("L").histogram()
    drawn = sum(histogram[40:]) / sum(histogram)  # nodes, notes and links are lighter than the dark canvas
    assert drawn > 0.02, f"a blank thumbnail ({drawn:.1%} drawn)"


def test_workflow_files_are_up_to_date(comfy_runtime, comfyui_gguf, tmp_path):
    """example_workflows/ holds exactly what demo/workflows.py builds (run scripts/build_workflows.py after a change)."""
    from svi_infinity.demo.workflows import write_shipped_workflows

    written = write_shipped_workflows(tmp_path)
    assert len(written) == 2 * len(SHIPPED)
    for path in written:
        shipped = WORKFLOWS_DIR / path.relative_to(tmp_path)
        assert json.loads(path.read_text()) == json.loads(shipped.read_text()), shipped.name


def test_node_docs_are_up_to_date(comfy_runtime):
    """web/docs holds one help page per pack node, as scripts/build_workflows.py writes it from the schemas."""
    import nodes

    from svi_infinity.demo.workflows import node_doc

    docs_dir = WORKFLOWS_DIR.parent / "web" / "docs"
    pack_nodes = {n for n in nodes.NODE_CLASS_MAPPINGS if n.startswith("SVI") and "StandIn" not in n}
    assert {p.stem for p in docs_dir.glob("*.md")} == pack_nodes
    for node_id in pack_nodes:
        assert (docs_dir / f"{node_id}.md").read_text() == node_doc(node_id), node_id


def video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def saved_videos(runtime, run) -> list[Path]:
    files = []
    for output in run.outputs.values():
        for item in output.get("images", []):
            if item.get("type") == "output" and item["filename"].endswith(".mp4"):
                files.append(runtime.output_dir / item["subfolder"] / item["filename"])
    return files


@pytest.mark.parametrize("name", API_NAMES)
def test_api_workflow_runs_on_tiny_models(name, comfy_runtime):
    clips = 3 if "3clips" in name else 4
    prompt = with_tiny_models(load_api_workflow(name), comfy_runtime.tiny_models, length=TINY_LENGTH, num_clips=clips)
    run = comfy_runtime.run_prompt(prompt)
    assert run.success, run.error
    expected = TINY_LENGTH + (clips - 1) * (TINY_LENGTH - 5)  # Pro n=1 drops 1 + 4 frames; 1.0 Shot drops M = 5
    videos = saved_videos(comfy_runtime, run)
    save_node = next(k for k, v in prompt.items() if v["class_type"] == "SaveVideo")
    assert any(str(p).startswith(str(comfy_runtime.output_dir)) for p in videos), run.outputs
    saved = [p for p in videos if p.name.startswith(Path(prompt[save_node]["inputs"]["filename_prefix"]).name)]
    assert saved, f"SaveVideo wrote nothing: {run.outputs}"
    assert video_frames(saved[-1]) == expected
