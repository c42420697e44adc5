"""ControlNet Suite: a ComfyUI custom node pack for ControlNet.

ComfyUI imports this folder under a module name derived from its path, so every import inside
the pack is relative (ComfyUI's own top-level `nodes` module would shadow ours).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_model_folders

register_model_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
