"""ComfyUI node classes: the only code that knows ComfyUI's types. Bodies call into
controlnet_core; ComfyUI modules are imported inside them, so importing this package is cheap
and works without ComfyUI."""

from . import apply, loaders, preprocessors, stack, training, union

# In the order the Add Node menu lists our categories: loaders, preprocessors, apply, stack, training.
_NODE_MODULES = (loaders, preprocessors, apply, union, stack, training)
NODE_CLASS_MAPPINGS = {node_id: cls for module in _NODE_MODULES for node_id, cls in module.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {
    node_id: name for module in _NODE_MODULES for node_id, name in module.NODE_DISPLAY_NAME_MAPPINGS.items()
}


def register_model_folders() -> None:
    """models/annotators for annotator weights (ControlNets use ComfyUI's models/controlnet)."""
    try:
        import folder_paths
    except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting the repo)
        return
    import os

    folder_paths.add_model_folder_path("annotators", os.path.join(folder_paths.models_dir, "annotators"))


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_model_folders"]
