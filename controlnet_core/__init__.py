"""ControlNet Suite core: the ControlNet model, checkpoint layouts and the trainable copy.

Plain PyTorch; nothing here imports ComfyUI.
"""

from .config import SD1, SD2, SDXL, BlockSpec, ControlNetConfig, config_from_state_dict, sd_config
from .errors import ControlNetError, ControlNetFileError, ControlNetFormatError, FamilyMismatchError
from .formats import detect_layout
from .loader import LoadedControlNet, load_controlnet
from .model import ControlNet

__all__ = [
    "SD1", "SD2", "SDXL", "BlockSpec", "ControlNetConfig", "config_from_state_dict", "sd_config",
    "ControlNetError", "ControlNetFileError", "ControlNetFormatError", "FamilyMismatchError",
    "detect_layout", "LoadedControlNet", "load_controlnet", "ControlNet",
]
