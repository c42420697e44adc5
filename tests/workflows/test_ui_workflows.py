"""Every UI workflow opened in ComfyUI's real front end (the comfyui-frontend-package that
ComfyUI's requirements pin, served by ComfyUI on loopback) in headless Chromium: the front end
must report no missing node types and convert the graph to the same API prompt as the
committed API file. A screenshot of each graph is taken (CNS_UPDATE_SCREENSHOTS=1 writes them
to docs/workflows/ for the README).

Skips, saying why, without a ComfyUI checkout, Chromium + chromedriver (Debian: chromium,
chromium-driver) or selenium.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workflows import build
from workflows.example_image import EXAMPLE_IMAGE, write_example_photo

from .conftest import COMFYUI, PHOTO_SIDE, WHY_NOT, WORKFLOW_NAMES, load_json

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "docs" / "workflows"
SCREENSHOT_WIDTH = 960  # small enough for the README, large enough to read node titles
SCREENSHOT_COLOURS = 64
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SERVER_START_TIMEOUT_S = 180  # importing ComfyUI takes 10-60 s on a busy 2-core runner
PAGE_READY_TIMEOUT_S = 90
PACK_DIR_NAME = "controlnet_suite"
FRONT_END_SETTINGS = {
    "Comfy.TutorialCompleted": True,  # else a fresh user gets a template dialog and an empty graph
    "Comfy.Minimap.Visible": False,  # keep the screenshots to the graph
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,  # draw text at the zoom that fits a whole graph
}

# The front end is ready once its app has set up and loaded the startup graph (browser_recipe.md).
READY_JS = """
const a = window.app;
return !!(a && a.canvas && a.graph && window.LiteGraph &&
          Object.keys(LiteGraph.registered_node_types).length > 0 && a.graph.nodes.length > 0);
"""
# The front end's own missing-node list arrives in the afterConfigureGraph hook.
CAPTURE_MISSING_JS = """
window.__missing = null;
app.registerExtension({name: 'controlnet_suite.test.captureMissing',
  afterConfigureGraph(missing) { window.__missing = JSON.parse(JSON.stringify(missing)); }});
"""
# JSON crosses the WebDriver boundary as strings only (objects lose undefined/null distinctions).
LOAD_AND_CONVERT_JS = """
return (async (workflowText) => {
  window.__missing = null;
  await app.loadGraphData(JSON.parse(workflowText), true, true, null,
                          {showMissingNodesDialog: false, showMissingModelsDialog: false});
  await new Promise(r => requestAnimationFrame(() => r()));
  const prompt = await app.graphToPrompt();
  return JSON.stringify({
    missing: window.__missing,
    unregistered: app.graph.nodes.filter(n => !(n.type in LiteGraph.registered_node_types)).map(n => n.type),
    output: prompt.output,
  });
})(arguments[0]);
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _why_no_browser() -> str | None:
    if COMFYUI is None:
        return WHY_NOT
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    try:
        import comfyui_frontend_package  # noqa: F401
    except ImportError:
        return "comfyui-frontend-package is not installed (it is in ComfyUI's requirements.txt)"
    return None


def make_custom_nodes_dir(root: Path) -> Path:
    """A custom_nodes folder holding only this pack (a link to the checkout under test)."""
    custom_nodes = root / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    return custom_nodes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI's server on loopback with the pack loaded, all state in a temporary folder."""
    why_not = _why_no_browser()
    if why_not:
        pytest.skip(why_not)
    root = tmp_path_factory.mktemp("comfy_server")
    custom_nodes = make_custom_nodes_dir(root)
    (root / "extra_model_paths.yaml").write_text(f"controlnet_suite_test:\n  custom_nodes: {custom_nodes}\n")
    # LoadImage lists the input folder: without one it drops out of /object_info.
    (root / "input").mkdir()
    write_example_photo(str(root / "input" / EXAMPLE_IMAGE), side=PHOTO_SIDE)
    user = root / "user" / "default"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps(FRONT_END_SETTINGS))
    port = _free_port()
    log = open(root / "server.log", "w")
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        "--extra-model-paths-config", str(root / "extra_model_paths.yaml"),
        "--user-directory", str(root / "user"), "--output-directory", str(root / "output"),
        "--temp-directory", str(root / "temp"), "--input-directory", str(root / "input"),
        "--database-url", "sqlite:///:memory:",
    ]
    process = subprocess.Popen(command, cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        object_info = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/object_info", timeout=5) as response:
                    object_info = json.load(response)
                break
            except OSError:
                time.sleep(0.5)
        if object_info is None:
            log.flush()
            tail = (root / "server.log").read_text()[-3000:]
            pytest.fail(f"ComfyUI's server did not answer within {SERVER_START_TIMEOUT_S} s:\n{tail}")
        yield type("Server", (), {"url": url, "object_info": object_info, "log": root / "server.log"})
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1600,1000", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_script_timeout(60)
        driver.get(server.url)
        WebDriverWait(driver, PAGE_READY_TIMEOUT_S, poll_frequency=0.2).until(lambda d: d.execute_script(READY_JS))
        driver.execute_script(CAPTURE_MISSING_JS)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_server_registered_the_pack(server):
    nodes_used = {node["class_type"] for name in WORKFLOW_NAMES for node in load_json(build.paths(name)[1]).values()}
    missing = sorted(nodes_used - set(server.object_info))
    assert missing == [], f"/object_info lacks {missing}; server log: {server.log}"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_front_end_opens_the_workflow_and_converts_it_to_the_api_file(browser, name, tmp_path):
    ui_path, api_path = build.paths(name)
    result = json.loads(browser.execute_script(LOAD_AND_CONVERT_JS, ui_path.read_text(encoding="utf-8")))
    assert result["missing"] == [], f"the front end reports missing node types: {result['missing']}"
    assert result["unregistered"] == []

    expected = load_json(api_path)
    converted = result["output"]
    assert sorted(converted) == sorted(expected)
    for node_id, node in expected.items():
        assert converted[node_id]["class_type"] == node["class_type"]
        assert converted[node_id]["inputs"] == node["inputs"], f"node {node_id} ({node['class_type']})"
        assert converted[node_id]["_meta"]["title"] == node["_meta"]["title"]

    _screenshot(browser, name, tmp_path)


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    raw = tmp_path / f"{name}_raw.png"
    driver.find_element(By.ID, "graph-canvas").screenshot(str(raw))
    image = Image.open(raw).convert("RGB")
    pixels = np.asarray(image)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "the canvas screenshot is blank"
    height = round(image.height * SCREENSHOT_WIDTH / image.width)
    small = image.resize((SCREENSHOT_WIDTH, height), Image.LANCZOS).quantize(SCREENSHOT_COLOURS)
    target = SCREENSHOT_DIR if os.environ.get("CNS_UPDATE_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    small.save(target / f"{name}.png", optimize=True)
