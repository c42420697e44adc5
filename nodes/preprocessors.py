"""Preprocessor (annotator) nodes: photos -> control maps, and fitting maps to the generation size.

preprocessors_common: shared inputs and batch handling; preprocessors_models: learned networks
under ComfyUI's model management; the nodes in preprocessors_weight_free, preprocessors_learned,
preprocessors_resolution and pose_keypoint_files; preprocessors_any runs any of them by name.
"""

from . import (pose_keypoint_files, preprocessors_any, preprocessors_learned, preprocessors_resolution,
               preprocessors_weight_free)

_NODES = {**preprocessors_weight_free.NODES, **preprocessors_learned.NODES, **preprocessors_resolution.NODES,
          **pose_keypoint_files.NODES, **preprocessors_any.NODES}
DISPLAY_NAME_SUFFIX = " (ControlNet Suite)"

NODE_CLASS_MAPPINGS: dict[str, type] = {node_id: cls for node_id, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {node_id: name + DISPLAY_NAME_SUFFIX for node_id, (_, name) in _NODES.items()}
