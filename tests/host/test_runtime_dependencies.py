"""Everything the pack imports at run time is installed on a user's machine: Python's standard
library, our requirements.txt (what ComfyUI-Manager installs), ComfyUI's requirements.txt and
ComfyUI's own modules. A dev-only package (scikit-image, diffusers, transformers' oracles...)
imported by a node's code would work in our tests and fail for users.

Imports inside `try: ... except ImportError` (optional features that say what to install) are
exempt. Read statically from the source, so code paths the tests never reach are covered too.
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
    """ComfyUI's own top-level modules and packages (comfy, folder_paths, comfy_extras...)."""
    return {path.stem for path in root.glob("*.py")} | {path.name for path in root.iterdir() if (path / "__init__.py").is_file()
                                                       or path.name in ("comfy", "comfy_extras", "comfy_api")}


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


def test_every_runtime_import_is_installed_with_comfyui_or_the_pack():
    if COMFYUI is None:
        pytest.skip(WHY_NOT)
    available = (
        set(sys.stdlib_module_names)
        | required_modules(REPO_ROOT / "requirements.txt")
        | required_modules(COMFYUI / "requirements.txt")
        | comfyui_modules(COMFYUI)
    )
    missing = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for path in runtime_files()
        for module, line in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if module not in available
    ]
    assert missing == []
