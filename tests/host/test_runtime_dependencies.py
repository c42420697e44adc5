"""Everything the pack imports at run time is installed on a user's machine: Python's standard
library, our requirements.txt (what ComfyUI-Manager installs), ComfyUI's requirements.txt and
ComfyUI's own modules. A dev-only package (scikit-image, diffusers, transformers' oracles...)
imported by a node's code would work in our tests and fail for users.

Imports inside `try: ... except ImportError` (optional features that say what to install) are
exempt. Read statically from the source, so code paths the tests never reach are covered too.
Without a ComfyUI checkout (CI), ComfyUI 0.3.64's requirements and modules stand in for it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from workflows.headless import REPO_ROOT, find_comfyui

COMFYUI, WHY_NOT = find_comfyui()
RUNTIME_CODE = ("__init__.py", "annotators", "controlnet_core", "nodes")
# Distribution name -> module name, where they differ.
IMPORT_NAMES = {
    "opencv-python-headless": "cv2", "opencv-python": "cv2", "pillow": "PIL", "pyyaml": "yaml",
    "scikit-image": "skimage", "comfyui-frontend-package": "comfyui_frontend_package",
    "pydantic-settings": "pydantic_settings",
}
OPTIONAL_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}
# ComfyUI 0.3.64 (the version the host tests run against): requirements.txt as module names, and
# the top-level modules and packages of its checkout that a custom node may import.
COMFYUI_0_3_64_REQUIREMENTS = {
    "comfyui_frontend_package", "comfyui_workflow_templates", "comfyui_embedded_docs", "torch", "torchsde",
    "torchvision", "torchaudio", "numpy", "einops", "transformers", "tokenizers", "sentencepiece", "safetensors",
    "aiohttp", "yarl", "yaml", "PIL", "scipy", "tqdm", "psutil", "alembic", "sqlalchemy", "av", "kornia",
    "spandrel", "pydantic", "pydantic_settings",
}
COMFYUI_0_3_64_MODULES = {
    "comfy", "comfy_extras", "comfy_api", "comfy_api_nodes", "comfy_config", "comfy_execution", "folder_paths",
    "node_helpers", "nodes", "server", "execution", "latent_preview", "main", "cuda_malloc", "new_updater",
    "protocol", "hook_breaker_ac10a0", "comfyui_version", "app", "api_server", "middleware", "utils",
}


def required_modules(requirements: Path) -> set[str]:
    """Module names of the distributions a requirements file lists."""
    names = set()
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)", line.split("#", 1)[0])
        if match:
            distribution = match.group(1).lower()
            names.add(IMPORT_NAMES.get(distribution, distribution.replace("-", "_")))
    return names


def comfyui_modules(root: Path) -> set[str]:
    """ComfyUI's own top-level modules and packages (comfy, folder_paths, comfy_extras...;
    some are namespace packages, without __init__.py)."""
    return {path.stem for path in root.glob("*.py")} | {path.name for path in root.iterdir()
                                                       if path.is_dir() and any(path.glob("*.py"))}


def _is_optional(handlers: list[ast.ExceptHandler]) -> bool:
    names = set()
    for handler in handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & OPTIONAL_IMPORT_ERRORS)


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """(top-level module, line) of every absolute import outside an ImportError guard."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try):
            body_guarded = guarded or _is_optional(node.handlers)
            for child in node.body:
                visit(child, body_guarded)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        if not guarded:
            if isinstance(node, ast.Import):
                found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module.split(".")[0], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def runtime_files() -> list[Path]:
    files = []
    for entry in RUNTIME_CODE:
        path = REPO_ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def test_the_import_reader_sees_plain_and_nested_imports_but_not_guarded_ones():
    tree = ast.parse(
        "import os.path\nfrom skimage.measure import label\n"
        "def f():\n    import scipy\n"
        "try:\n    import selenium\nexcept ImportError:\n    pass\n"
        "try:\n    import mmcv\nexcept ValueError:\n    pass\n"
        "from . import sibling\n"
    )
    assert sorted(name for name, _ in imported_modules(tree)) == ["mmcv", "os", "scipy", "skimage"]


def test_the_stand_in_for_comfyui_is_its_checkout():
    if COMFYUI is None:
        pytest.skip(WHY_NOT)
    assert required_modules(COMFYUI / "requirements.txt") == COMFYUI_0_3_64_REQUIREMENTS
    assert COMFYUI_0_3_64_MODULES <= comfyui_modules(COMFYUI)


def test_every_runtime_import_is_installed_with_comfyui_or_the_pack():
    comfyui = (
        required_modules(COMFYUI / "requirements.txt") | comfyui_modules(COMFYUI) if COMFYUI is not None
        else COMFYUI_0_3_64_REQUIREMENTS | COMFYUI_0_3_64_MODULES
    )
    available = set(sys.stdlib_module_names) | required_modules(REPO_ROOT / "requirements.txt") | comfyui
    missing = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for path in runtime_files()
        for module, line in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if module not in available
    ]
    assert missing == []
