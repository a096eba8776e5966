"""The shipped workflows: UI files are consistent with the real node definitions; API files run end to end."""

import json
from pathlib import Path

import av
import pytest

from svi_infinity.demo.workflows import (SHIPPED, WORKFLOWS_DIR, is_widget, load_api_workflow, object_info, ordered_inputs,
                                         spec_type, widget_extras, with_tiny_models)

UI_FILES = sorted(WORKFLOWS_DIR.glob("*.json"))
API_NAMES = sorted(SHIPPED)
TINY_LENGTH = 17  # frames per tiny clip: 5 latent frames


def check_ui_workflow(workflow: dict, info_of) -> None:
    """Node types exist, every link joins an output to an input of the same type, widget values fit their widgets."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    for link_id, src, src_slot, dst, dst_slot, link_type in workflow["links"]:
        output = nodes[src]["outputs"][src_slot]
        target = nodes[dst]["inputs"][dst_slot]
        assert link_id in output["links"], f"link {link_id} missing from node {src}'s output list"
        assert target["link"] == link_id, f"node {dst} input {target['name']} does not point back at link {link_id}"
        assert output["type"] == link_type == target["type"] or target["type"] == "*", f"link {link_id}: {output['type']} -> {target['type']}"
    for node in workflow["nodes"]:
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


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_matches_node_definitions(path, comfy_runtime):
    check_ui_workflow(json.loads(path.read_text()), object_info)


def test_workflow_files_are_up_to_date(comfy_runtime, tmp_path):
    """workflows/ holds exactly what demo/workflows.py builds (run scripts/build_workflows.py after a change)."""
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
