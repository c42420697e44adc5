"""The pack as ComfyUI sees it: its custom-node loader, the node definitions, a running server."""

import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import COMFYUI, REPO_ROOT

# Every node the pack promises (workflows shared by users name these IDs), by Add Node category.
NODES_BY_CATEGORY = {
    "ControlNet Suite/loaders": ("CNS_ControlNetLoader", "CNS_ControlNetLoaderWithModel"),
    "ControlNet Suite/preprocessors": (
        "CNS_Canny", "CNS_HoughLines", "CNS_Scribble", "CNS_ScribbleXDoG", "CNS_LineartStandard", "CNS_Binary",
        "CNS_ColorGrid", "CNS_ContentShuffle", "CNS_Tile", "CNS_InpaintHint", "CNS_NormalFromDepth",
        "CNS_ColorizeSegmentation", "CNS_ImageLuminance", "CNS_ImageIntensity", "CNS_RestoreBrightness",
        "CNS_DrawPoseKeypoints", "CNS_SavePoseKeypoints", "CNS_LoadPoseKeypoints",
        "CNS_HED", "CNS_PiDiNet", "CNS_TEED", "CNS_MLSD", "CNS_OpenPose", "CNS_DWPose", "CNS_AnimalPose", "CNS_Lineart",
        "CNS_LineartAnime", "CNS_MangaLine", "CNS_AnyLine", "CNS_MiDaSDepth", "CNS_MiDaSNormal", "CNS_DepthAnything",
        "CNS_DepthAnythingV2", "CNS_LeReSDepth", "CNS_ZoeDepth", "CNS_PyraCanny", "CNS_TTPlanetTileGuidedFilter",
        "CNS_TTPlanetTileSimple",
        "CNS_NormalBAE", "CNS_DSINENormal", "CNS_UniFormerSegmentation", "CNS_OneFormerSegmentation", "CNS_AnimeFaceSegmentation",
        "CNS_ResizeForControl", "CNS_PixelPerfectResolution", "CNS_AnyPreprocessor", "CNS_AllPreprocessors",
    ),
    "ControlNet Suite/apply": ("CNS_ApplyControlNet", "CNS_UnionCondition", "CNS_ApplyControlNetUnion", "CNS_StrengthSchedule", "CNS_LatentStrengths"),
    "ControlNet Suite/stack": ("CNS_ControlStackEntry", "CNS_UnionStackEntry", "CNS_ApplyControlStack"),
    "ControlNet Suite/training": ("CNS_CreateControlNet", "CNS_TrainControlNet"),
}
NODE_IDS = {node_id: category for category, ids in NODES_BY_CATEGORY.items() for node_id in ids}
SERVER_START_TIMEOUT_S = 180  # importing every built-in node on a slow CPU runner
POLL_INTERVAL_S = 0.5


def test_custom_node_loader_registers_every_node(host):
    for node_id, category in NODE_IDS.items():
        cls = host.nodes.NODE_CLASS_MAPPINGS.get(node_id)
        assert cls is not None, f"{node_id} not registered"
        assert cls is host.pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == category
        assert cls.DESCRIPTION
        assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    assert set(host.pack.NODE_CLASS_MAPPINGS) == set(NODE_IDS)


def test_every_input_has_a_tooltip(host):
    for node_id in NODE_IDS:
        inputs = host.nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def test_every_optional_widget_declares_the_default_its_node_uses(host):
    """An optional widget left out of a prompt (one saved before the input existed) takes the
    node method's default; the front end and workflows/graph.py fill in the declared one. They
    must be the same value."""
    checked = 0
    for node_id in NODE_IDS:
        cls = host.nodes.NODE_CLASS_MAPPINGS[node_id]
        parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        for name, (kind, options) in cls.INPUT_TYPES().get("optional", {}).items():
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                assert "default" in options, f"{node_id}.{name} declares no default"
                assert parameters[name].default == options["default"], f"{node_id}.{name}"
                checked += 1
    assert checked >= 2  # block_weights (apply and stack nodes), Inpaint Hint's masked_pixels


def test_loader_lists_the_controlnet_folder(host, files):
    (choices, _) = host.nodes.NODE_CLASS_MAPPINGS["CNS_ControlNetLoader"].INPUT_TYPES()["required"]["control_net_name"]
    assert {files.original, files.bare, files.diffusers} <= set(choices)


def test_annotators_model_folder_is_registered(host):
    assert any(path.endswith(os.path.join("models", "annotators")) for path in host.folder_paths.get_folder_paths("annotators"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_node_appears_in_object_info_of_a_running_server(host, tmp_path):
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "controlnet_suite").symlink_to(REPO_ROOT, target_is_directory=True)
    port = free_port()
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
        "--disable-all-custom-nodes", "--whitelist-custom-nodes", "controlnet_suite",
    ]
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        (tmp_path / "frontend").mkdir()
        command += ["--front-end-root", str(tmp_path / "frontend")]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(command, cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    try:
        info = None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=10) as response:
                    info = json.load(response)
                break
            except OSError:
                time.sleep(POLL_INTERVAL_S)
        if info is None:
            pytest.fail(f"server did not answer /object_info (exit code {server.poll()}); log:\n"
                        + (tmp_path / "server.log").read_text()[-4000:])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    for node_id, category in NODE_IDS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["category"] == category
        assert info[node_id]["python_module"].startswith("custom_nodes")
