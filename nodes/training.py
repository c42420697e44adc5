"""Training nodes: create a new ControlNet from a base model, and train it with the paper's
method (docs/training.md)."""

from __future__ import annotations

import os

CATEGORY = "ControlNet Suite/training"
NO_ANNOTATOR = "none"
MAX_STEPS = 1_000_000
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _controlnet_folder() -> str:
    import folder_paths

    return folder_paths.get_folder_paths("controlnet")[0]


def _output_path(name: str) -> str:
    name = name.strip()
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise ValueError(f"file name {name!r} must be a plain file name (no folders), e.g. 'control_mine'")
    return os.path.join(_controlnet_folder(), name if name.endswith(".safetensors") else name + ".safetensors")


def _annotators() -> list[str]:
    try:
        from ..annotators import batch
    except ImportError:  # an annotator's dependency is missing: training still works with condition folders
        return [NO_ANNOTATOR]
    return [NO_ANNOTATOR, *sorted(batch.ANNOTATORS), *sorted(batch.LEARNED)]


class CNS_CreateControlNet:
    DESCRIPTION = (
        "Makes a new ControlNet from the model (SD1.x, SD2.x or SDXL) with the paper's trainable copy: the U-Net "
        "encoder copied, zero convolutions, and a hint encoder for the chosen number of condition channels. Saved in "
        "models/controlnet in the original layout. Until trained it changes nothing."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET", "STRING")
    RETURN_NAMES = ("control_net", "file_name")
    OUTPUT_TOOLTIPS = ("The new (untrained) ControlNet.", "Its file name in models/controlnet, for the training node.")
    FUNCTION = "create"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model whose U-Net encoder is copied (and that stays locked in training)."}),
                "hint_channels": ("INT", {"default": 3, "min": 1, "max": 16, "tooltip": "Channels of the condition image: 3 for RGB maps (edges, depth, pose), 1 for a mask."}),
                "file_name": ("STRING", {"default": "control_new", "tooltip": "File name in models/controlnet (.safetensors is added)."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace a file of the same name. Off: an existing file is an error."}),
            }
        }

    def create(self, model, hint_channels: int, file_name: str, overwrite: bool):
        from ..controlnet_core.comfy_control import load_control
        from ..controlnet_core.create import save_controlnet
        from ..training.comfy_host import controlnet_from_comfy

        path = _output_path(file_name)
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"'{path}' exists: choose another file name or turn on overwrite")
        save_controlnet(controlnet_from_comfy(model, hint_channels), path)
        return (load_control(path), os.path.basename(path))


class CNS_TrainControlNet:
    DESCRIPTION = (
        "Trains a ControlNet with the paper's method: base model locked, L2 loss on the predicted noise, a share of "
        "prompts replaced by the empty prompt, AdamW. Writes the ControlNet, a resumable checkpoint and the loss curve "
        "into models/controlnet. Dataset: a folder with images/ (+ a .txt prompt beside each) and conditions/ (or an "
        "annotator to make them), or an encoded dataset .safetensors."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET", "IMAGE", "STRING")
    RETURN_NAMES = ("control_net", "loss_curve", "file_name")
    OUTPUT_TOOLTIPS = ("The trained ControlNet.", "The loss per step and its moving average.", "Its file name in models/controlnet.")
    FUNCTION = "train"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model (locked unless the decoder is unlocked below)."}),
                "start_from": (folder_paths.get_filename_list("controlnet"), {"tooltip": "The ControlNet to train, e.g. the one 'Create ControlNet' made for this model."}),
                "dataset": ("STRING", {"default": "", "tooltip": "A folder with images/ and conditions/ (same file names; prompts in images/<name>.txt), or an encoded dataset .safetensors."}),
                "output_name": ("STRING", {"default": "control_trained", "tooltip": "File name in models/controlnet for the trained ControlNet; its checkpoint and loss curve go beside it."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": MAX_STEPS, "tooltip": "Optimizer steps in total (a resumed run continues up to this)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "Examples per batch (the paper's tutorial: 4)."}),
                "learning_rate": ("FLOAT", {"default": 1e-5, "min": 1e-8, "max": 1e-2, "step": 1e-6, "round": False, "tooltip": "AdamW learning rate (the paper: 1e-5)."}),
                "prompt_dropout": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Share of prompts replaced by the empty prompt (the paper: 0.5), so the ControlNet learns the condition's meaning."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip": "Images and conditions are centre-cropped to this square (dataset folders only)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "tooltip": "Seed for batches, timesteps, noise and prompt dropout."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Encodes the dataset folder's images (not needed for an encoded dataset)."}),
                "clip": ("CLIP", {"tooltip": "Encodes the dataset folder's prompts (not needed for an encoded dataset)."}),
                "annotator": (_annotators(), {"default": NO_ANNOTATOR, "tooltip": "Makes conditions/ from images/ when the folder has none (kept for the next run)."}),
                "gradient_accumulation": ("INT", {"default": 1, "min": 1, "max": 1024, "tooltip": "Batches per optimizer step: a larger effective batch in the same memory (the original's advice over more steps)."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "Recompute activations in the backward pass: less memory, one extra forward pass of compute per step."}),
                "mixed_precision": (["auto", "no", "fp16", "bf16"], {"default": "auto", "tooltip": "auto: bf16 (else fp16) autocast on CUDA GPUs, full precision elsewhere."}),
                "middle_only_steps": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS, "tooltip": "The paper's small-scale recipe: connect only the middle block for this many first steps."}),
                "unlock_decoder_at": ("INT", {"default": -1, "min": -1, "max": MAX_STEPS, "tooltip": "The paper's large-scale recipe: from this step also train the U-Net decoder (-1: never). Its weights are saved beside the ControlNet."}),
                "decoder_learning_rate": ("FLOAT", {"default": 2e-6, "min": 1e-9, "max": 1e-3, "step": 1e-7, "round": False, "tooltip": "Learning rate of the unlocked decoder (the original docs: 2e-6)."}),
                "checkpoint_every": ("INT", {"default": 500, "min": 1, "max": MAX_STEPS, "tooltip": "Steps between resumable checkpoints (written atomically)."}),
                "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue from the checkpoint beside the output, if there is one."}),
            },
        }

    def train(self, model, start_from: str, dataset: str, output_name: str, steps: int, batch_size: int,
              learning_rate: float, prompt_dropout: float, resolution: int, seed: int, vae=None, clip=None,
              annotator: str = NO_ANNOTATOR, gradient_accumulation: int = 1, gradient_checkpointing: bool = False,
              mixed_precision: str = "auto", middle_only_steps: int = 0, unlock_decoder_at: int = -1,
              decoder_learning_rate: float = 2e-6, checkpoint_every: int = 500, resume: bool = True):
        import folder_paths

        from ..controlnet_core.comfy_control import load_control
        from ..training.comfy_host import train_in_comfy

        path, loss_curve = train_in_comfy(
            model=model, start_from=folder_paths.get_full_path_or_raise("controlnet", start_from), dataset=dataset,
            output=_output_path(output_name), vae=vae, clip=clip, resolution=resolution,
            annotator=None if annotator == NO_ANNOTATOR else annotator, resume=resume, checkpoint_every=checkpoint_every,
            options=dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate, prompt_dropout=prompt_dropout,
                         seed=seed, gradient_accumulation=gradient_accumulation,
                         gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision,
                         middle_only_steps=middle_only_steps,
                         unlock_decoder_at=None if unlock_decoder_at < 0 else unlock_decoder_at,
                         decoder_learning_rate=decoder_learning_rate),
        )
        return (load_control(path), loss_curve, os.path.basename(path))


NODE_CLASS_MAPPINGS = {"CNS_CreateControlNet": CNS_CreateControlNet, "CNS_TrainControlNet": CNS_TrainControlNet}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CNS_CreateControlNet": "Create ControlNet (ControlNet Suite)",
    "CNS_TrainControlNet": "Train ControlNet (ControlNet Suite)",
}
