"""Loader nodes: a ControlNet file from models/controlnet, with or without the base model."""

from __future__ import annotations

CATEGORY = "ControlNet Suite/loaders"
CONTROL_NET_NAME_TOOLTIP = (
    "A ControlNet in models/controlnet: original .pth/.safetensors (with or without the control_model. prefix) "
    "or a diffusers folder's diffusion_pytorch_model.safetensors; also ControlNet Union, T2I-Adapter and SDXL "
    "ControlNet-LLLite files. The layout is detected."
)


def _controlnet_files() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("controlnet")


def _load(control_net_name: str, model=None):
    import folder_paths

    from ..controlnet_core.comfy_control import load_control

    return (load_control(folder_paths.get_full_path_or_raise("controlnet", control_net_name), model),)


class CNS_ControlNetLoader:
    DESCRIPTION = (
        "Loads an SD1.x, SD2.x or SDXL ControlNet in any common layout (original, bare, diffusers), a ControlNet "
        "Union, a T2I-Adapter or an SDXL ControlNet-LLLite. "
        "For \"difference\" ControlNets and Control-LoRAs use 'Load ControlNet with Model (ControlNet Suite)'."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for the Apply ControlNet and control stack nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": (_controlnet_files(), {"tooltip": CONTROL_NET_NAME_TOOLTIP})}}

    def load(self, control_net_name: str):
        return _load(control_net_name)


class CNS_ControlNetLoaderWithModel(CNS_ControlNetLoader):
    DESCRIPTION = (
        "Loads a ControlNet that needs its base model: \"difference\" ControlNets (ControlNet minus the base "
        "U-Net) and Stability Control-LoRAs. Any other ControlNet loads here too."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model the ControlNet was made for (its U-Net weights are read)."}),
                "control_net_name": (_controlnet_files(), {"tooltip": CONTROL_NET_NAME_TOOLTIP}),
            }
        }

    def load(self, model, control_net_name: str):
        return _load(control_net_name, model)


NODE_CLASS_MAPPINGS = {
    "CNS_ControlNetLoader": CNS_ControlNetLoader,
    "CNS_ControlNetLoaderWithModel": CNS_ControlNetLoaderWithModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CNS_ControlNetLoader": "Load ControlNet (ControlNet Suite)",
    "CNS_ControlNetLoaderWithModel": "Load ControlNet with Model (ControlNet Suite)",
}
