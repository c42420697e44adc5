"""ComfyUI in this process, headless, with the pack loaded: validate and execute API prompts
exactly as the server does (execution.validate_prompt, then execution.PromptExecutor).

ComfyUI is looked for at $COMFYUI_PATH, then the folder above custom_nodes/ when the pack is
installed there, then ~/comfy/ComfyUI (comfy-cli's default).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_PROBE_NODE = "CNS_ApplyControlNet"  # present once ComfyUI has loaded the pack
# ComfyUI's built-in extra node modules (comfy_extras/) the shared workflows use, loaded as the
# server loads them: the inpaint workflow softens, applies and composites its mask with them.
BUILTIN_EXTRAS = {
    "nodes_mask.py": "ImageCompositeMasked",  # module: a node it registers
    "nodes_post_processing.py": "ImageBlur",
}
MODEL_FOLDER_KINDS = ("checkpoints", "controlnet", "annotators")


def find_comfyui() -> tuple[Path | None, str]:
    """(ComfyUI root, '') or (None, why not)."""
    above_custom_nodes = REPO_ROOT.parent.parent if REPO_ROOT.parent.name == "custom_nodes" else None
    candidates = [
        ("$COMFYUI_PATH", os.environ.get("COMFYUI_PATH") or None),
        ("the folder above custom_nodes/", above_custom_nodes),
        ("~/comfy/ComfyUI", Path.home() / "comfy" / "ComfyUI"),
    ]
    for _, candidate in candidates:
        if candidate and (Path(candidate) / "comfy" / "controlnet.py").is_file() and (Path(candidate) / "nodes.py").is_file():
            return Path(candidate).resolve(), ""
    tried = ", ".join(f"{label} ({path or 'not applicable'})" for label, path in candidates)
    return None, f"no ComfyUI checkout found; looked at {tried}"


def import_comfyui(root: Path | None = None, cpu: bool = True) -> Path:
    """Make ComfyUI's modules (comfy.*, nodes, folder_paths) importable in this process and, with
    `cpu`, keep it on the CPU; returns ComfyUI's root. Raises RuntimeError when none is found."""
    if root is None:
        root, why_not = find_comfyui()
        if root is None:
            raise RuntimeError(why_not)
    # ComfyUI's root goes first: the pack's own `nodes/` package would shadow ComfyUI's `nodes`.
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    if cpu:
        args.cpu = True  # before model_management is imported: a CPU-only torch fails otherwise
    return root


class _ServerStub:
    """The four members execution.py and the progress handler touch when there is no web server."""

    client_id = None
    last_node_id = None
    sockets_metadata: dict = {}

    def send_sync(self, event, data, sid=None) -> None:
        pass


class PromptError(RuntimeError):
    """A prompt failed ComfyUI's validation or its execution."""


@dataclass
class RunResult:
    prompt_id: str
    ui: dict[str, Any]  # node id -> the node's UI output (saved images, ...), as /history shows it
    outputs: dict[str, list] = field(repr=False, default_factory=dict)  # node id -> raw output values


class Comfy:
    """ComfyUI booted on the CPU (or its own device choice with `cpu=False`) with the pack loaded."""

    def __init__(self, root: Path | None = None, cpu: bool = True):
        self.root = import_comfyui(root, cpu)
        import execution
        import folder_paths
        import nodes

        if not str(getattr(nodes, "__file__", "")).startswith(str(self.root)):
            raise RuntimeError(f"'nodes' resolved to {nodes.__file__}, not ComfyUI's nodes.py in {self.root}")
        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        for module, probe in BUILTIN_EXTRAS.items():
            if probe not in nodes.NODE_CLASS_MAPPINGS:
                path = str(self.root / "comfy_extras" / module)
                if not asyncio.run(nodes.load_custom_node(path, module_parent="comfy_extras")):
                    raise RuntimeError(f"ComfyUI could not import its own {path} (see the log above)")
        if PACK_PROBE_NODE not in nodes.NODE_CLASS_MAPPINGS:
            loaded = asyncio.run(nodes.load_custom_node(str(REPO_ROOT), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
            if not loaded or PACK_PROBE_NODE not in nodes.NODE_CLASS_MAPPINGS:
                raise RuntimeError("ComfyUI could not import the pack (see the log above)")
        self.executor = execution.PromptExecutor(_ServerStub())

    def node_classes(self) -> dict[str, type]:
        return self.nodes.NODE_CLASS_MAPPINGS

    def use_model_folder(self, kind: str, folder: str, first: bool = False) -> None:
        """Add `folder` to ComfyUI's list for `kind` (checkpoints, controlnet, annotators); `first`
        makes its files win over same-named files elsewhere."""
        self.folder_paths.add_model_folder_path(kind, os.path.abspath(folder), is_default=first)

    def find_model(self, kind: str, file_name: str) -> str | None:
        """Full path of `file_name` in ComfyUI's folders for `kind`, or None."""
        return self.folder_paths.get_full_path(kind, file_name)

    def set_io_folders(self, input_dir: str, output_dir: str) -> None:
        os.makedirs(input_dir, exist_ok=True)
        os.makedirs(output_dir, exist_ok=True)
        self.folder_paths.set_input_directory(os.path.abspath(input_dir))
        self.folder_paths.set_output_directory(os.path.abspath(output_dir))

    def validate(self, prompt: dict) -> list[str]:
        """ComfyUI's own prompt validation; returns the output node ids, or raises PromptError with
        every reason it gives."""
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not ok or node_errors:
            reasons = [f"{error['message']}: {error['details']}"] if error else []
            for node_id, info in node_errors.items():
                for reason in info["errors"]:
                    reasons.append(f"node {node_id} ({info['class_type']}): {reason['message']}: {reason['details']}")
            raise PromptError("prompt failed validation:\n  " + "\n  ".join(reasons))
        return outputs

    def run(self, prompt: dict) -> RunResult:
        """Validate, then execute the prompt to the end; raises PromptError with ComfyUI's message
        and traceback if a node fails."""
        import copy

        prompt = copy.deepcopy(prompt)  # validate_prompt converts widget values in place
        outputs = self.validate(prompt)
        prompt_id = str(uuid.uuid4())
        self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            failures = [data for event, data in self.executor.status_messages if event == "execution_error"]
            detail = "\n".join(
                f"node {f['node_id']} ({f['node_type']}): {f['exception_type']}: {f['exception_message']}\n"
                + "".join(f["traceback"]) for f in failures
            )
            raise PromptError(f"prompt failed to execute:\n{detail}")
        raw = {node_id: self.executor.caches.outputs.get(node_id) for node_id in prompt}
        return RunResult(prompt_id, self.executor.history_result["outputs"], raw)


_BOOTED: Comfy | None = None


def boot(root: Path | None = None, cpu: bool = True) -> Comfy:
    """The process-wide Comfy (ComfyUI can be imported once per process); `cpu` applies to the
    first call only."""
    global _BOOTED
    if _BOOTED is None:
        _BOOTED = Comfy(root, cpu=cpu)
    return _BOOTED
