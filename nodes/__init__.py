"""ComfyUI node classes: the only code that knows ComfyUI's types. Bodies call into
controlnet_core; ComfyUI modules are imported inside them, so importing this package is cheap
and works without ComfyUI."""

from . import apply, loaders, stack

NODE_CLASS_MAPPINGS = {**loaders.NODE_CLASS_MAPPINGS, **apply.NODE_CLASS_MAPPINGS, **stack.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {
    **loaders.NODE_DISPLAY_NAME_MAPPINGS,
    **apply.NODE_DISPLAY_NAME_MAPPINGS,
    **stack.NODE_DISPLAY_NAME_MAPPINGS,
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
