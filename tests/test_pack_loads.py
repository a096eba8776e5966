"""The pack loads in real ComfyUI v0.33.0 through its V3 entrypoint and declares complete node schemas."""

import pytest

from svi_infinity.demo.comfy_runtime import TESTED_COMFYUI_VERSION, ComfyUINotFound, comfyui_version, find_comfyui

PACK_NODES = {"SVIEncodeAnchor", "SVIMotionLatent", "SVIMotionFrames", "SVIConditioning", "SVILoraStack",
              "SVITurboSampler", "SVIJoinClips", "SVILongVideo"}


def test_runtime_is_the_pinned_comfyui(comfy_dir):
    assert comfyui_version(comfy_dir) == TESTED_COMFYUI_VERSION


def test_missing_comfyui_names_both_places(monkeypatch, tmp_path):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ComfyUINotFound) as error:
        find_comfyui(tmp_path / "a" / "b" / "pack")
    assert "COMFYUI_PATH" in str(error.value) and "custom_nodes" in str(error.value)


def test_grandparent_comfyui_is_found(monkeypatch, comfy_dir, tmp_path):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    pack = tmp_path / "custom_nodes" / "svi-infinity"
    pack.mkdir(parents=True)
    for name in ("main.py", "comfy"):
        (tmp_path / name).symlink_to(comfy_dir / name)
    assert find_comfyui(pack) == tmp_path.resolve()


def test_nodes_registered_through_v3_entrypoint(comfy_runtime):
    import nodes
    from comfy_api.latest import io

    registered = {name for name in nodes.NODE_CLASS_MAPPINGS if name.startswith("SVI") and "StandIn" not in name}
    assert PACK_NODES <= registered
    for name in PACK_NODES:
        node_class = nodes.NODE_CLASS_MAPPINGS[name]
        assert issubclass(node_class, io.ComfyNode)
        schema = node_class.define_schema()
        assert schema.category.startswith("SVI/") and schema.description and schema.display_name.startswith("SVI")
