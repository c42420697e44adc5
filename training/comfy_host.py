"""Training inside ComfyUI: the base U-Net, noise schedule, VAE and text encoder come from the
workflow's MODEL, VAE and CLIP. ComfyUI is imported inside the functions only.

The locked base is copied out of ComfyUI's model (with any patches, e.g. LoRAs, applied) into
our `UNet`: ComfyUI's weights may be inference-mode tensors that autograd cannot use, and the
copy is the same function ComfyUI samples with (tests/host/test_training_node.py checks it).
The ControlNet uses the head split every loader assumes for its shape, so the saved file reads
back as the model that was trained.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ._core import files
from .create import new_controlnet
from .data import EncodedDataset, Triple
from .noise import EPS, V_PREDICTION, NoiseSchedule
from .session import OutputFiles
from .unet import UNet, unet_from_weights


def comfy_heads(model: Any) -> dict:
    """The U-Net's head split as ComfyUI built it."""
    cfg = model.model.model_config.unet_config
    if cfg.get("num_head_channels", -1) != -1:
        return {"head_channels": int(cfg["num_head_channels"])}
    return {"num_heads": int(cfg["num_heads"])}


def base_unet_weights(model: Any) -> dict[str, torch.Tensor]:
    """The U-Net's weights as ComfyUI samples with them (patches applied), as normal tensors."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    with torch.inference_mode(False):
        return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


def base_from_comfy(model: Any, device: torch.device) -> tuple[UNet, NoiseSchedule]:
    """(the locked U-Net in fp32 on `device`, its noise schedule and prediction type)."""
    import comfy.model_base

    model_type = model.model.model_type
    predictions = {comfy.model_base.ModelType.EPS: EPS, comfy.model_base.ModelType.V_PREDICTION: V_PREDICTION}
    if model_type not in predictions:
        raise ValueError(
            f"this model predicts {model_type.name}; ControlNet training here supports eps and v prediction models "
            "(SD1.x, SD2.x, SDXL)"
        )
    with torch.inference_mode(False):
        unet = unet_from_weights(base_unet_weights(model), torch.float32, device, heads=comfy_heads(model), source="the MODEL")
    schedule = NoiseSchedule.from_sigmas(model.model.model_sampling.sigmas.detach().cpu(), predictions[model_type])
    return unet, schedule


def controlnet_from_comfy(model: Any, hint_channels: int):
    """A new ControlNet (trainable copy of the MODEL's U-Net encoder)."""
    with torch.inference_mode(False):
        return new_controlnet(base_unet_weights(model), hint_channels)


@torch.no_grad()  # the encoders are never trained: a graph through them would outlive the first step
def encode_with_comfy(triples: Sequence[Triple], model: Any, vae: Any, clip: Any, batch_size: int = 4) -> EncodedDataset:
    """Latents with the VAE (scaled as the model takes them) and prompts with CLIP; for SDXL the
    pooled text + size embedding `y` too. Prompts longer than the empty prompt's token count are
    cut to it (one 77-token chunk for CLIP)."""
    latent_format = model.model.latent_format

    def encode_images(images: torch.Tensor) -> torch.Tensor:
        pixels = ((images + 1) / 2).clamp(0, 1).movedim(1, -1)  # ComfyUI IMAGE: BHWC in 0..1
        return latent_format.process_in(vae.encode(pixels)).float()

    def encode_prompt(text: str, side: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        y = model.model.encode_adm(pooled_output=pooled, width=side, height=side, crop_w=0, crop_h=0,
                                   target_width=side, target_height=side, prompt_type="positive")
        return cond[0].float().cpu(), (y[0].float().cpu() if y is not None else None)

    side = triples[0].image.shape[0]
    empty_context, empty_y = encode_prompt("", side)
    tokens = empty_context.shape[0]
    contexts, ys, latents = [], [], []
    for triple in triples:
        context, y = encode_prompt(triple.prompt, side)
        contexts.append(context[:tokens])
        ys.append(y)
    for start in range(0, len(triples), batch_size):
        chunk = triples[start:start + batch_size]
        images = torch.from_numpy(np.stack([t.image for t in chunk])).permute(0, 3, 1, 2)
        latents.append(encode_images(images).cpu())
    hints = torch.from_numpy(np.stack([t.condition for t in triples])).permute(0, 3, 1, 2).contiguous()
    has_y = empty_y is not None
    return EncodedDataset(torch.cat(latents), hints, torch.stack(contexts), empty_context,
                          torch.stack(ys) if has_y else None, empty_y)


def load_checkpoint_with_comfy(path: str) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) of a full checkpoint, loaded by ComfyUI as its checkpoint loader does;
    for the command line, which has no VAE or text encoder of its own. ComfyUI must already be
    importable (workflows.headless.import_comfyui)."""
    import comfy.sd

    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    except RuntimeError as error:  # "Could not detect model type of: ..." and ComfyUI's hint
        raise ValueError(
            f"ComfyUI does not recognise '{path}' as a checkpoint it can load ({str(error).splitlines()[0]}): encoding "
            "a dataset folder needs a full SD1.x / SD2.x / SDXL checkpoint (U-Net, VAE and text encoder in one file)"
        ) from error
    # ComfyUI builds a VAE even from a file without VAE weights (randomly initialised, with a
    # warning): look at the file's keys under the prefixes ComfyUI reads for this model family.
    config = model.model.model_config
    keys = files.open_weights(path).shapes
    parts = (("text encoder", config.text_encoder_key_prefix), ("VAE", config.vae_key_prefix))
    missing = [name for name, prefixes in parts if not any(k.startswith(tuple(prefixes)) for k in keys)]
    if missing or clip is None:
        raise ValueError(
            f"'{path}' has no {' and '.join(missing or ['text encoder'])}: encoding a dataset folder needs a full "
            "checkpoint (U-Net, VAE and text encoder in one file, e.g. v1-5-pruned-emaonly.safetensors)"
        )
    return model, clip, vae


def cached_encoding(output: str, resume: bool, log: Any = print) -> EncodedDataset | None:
    """The encoded dataset a run writing `output` cached earlier, when resuming and it exists."""
    import os

    cache = OutputFiles.beside(output).encoded
    if not (resume and os.path.isfile(cache)):
        return None
    log(f"using the encoded dataset cached in {cache}")
    return EncodedDataset.load(cache)


def dataset_for_comfy(
    dataset: str, output: str, model: Any, vae: Any, clip: Any, resolution: int, annotator: str | None, resume: bool,
    log: Any = print,
) -> EncodedDataset:
    """An encoded dataset file as is; a folder encoded once with the VAE and CLIP and cached
    beside the output (`<name>.encoded.safetensors`, which the command line also takes)."""
    import os

    from .data import read_triples

    if os.path.isfile(dataset):
        return EncodedDataset.load(dataset)
    if not os.path.isdir(dataset):
        raise ValueError(f"dataset '{dataset}' is neither a folder of images nor an encoded dataset file")
    cached = cached_encoding(output, resume, log)
    if cached is not None:
        return cached
    cache = OutputFiles.beside(output).encoded
    if vae is None or clip is None:
        raise ValueError("a dataset folder needs the VAE and CLIP inputs connected, to encode the images and prompts")
    encoded = encode_with_comfy(read_triples(dataset, resolution, annotator), model, vae, clip)
    encoded.save(cache)
    log(f"encoded {len(encoded)} examples into {cache}")
    return encoded



def train_in_comfy(
    model: Any, start_from: str, dataset: str, output: str, vae: Any, clip: Any, resolution: int,
    annotator: str | None, resume: bool, checkpoint_every: int, options: dict,
) -> tuple[str, torch.Tensor]:
    """The Train ControlNet node's work: (the trained ControlNet's path, the loss curve as a
    ComfyUI IMAGE)."""
    import logging

    import comfy.model_management
    import comfy.utils
    import cv2

    from ._core import loader
    from .loop import Trainer, TrainingOptions, training_mode
    from .session import train

    log = logging.getLogger("ControlNet Suite").info
    device = comfy.model_management.get_torch_device()
    with training_mode():
        data = dataset_for_comfy(dataset, output, model, vae, clip, resolution, annotator, resume, log)
        unet, schedule = base_from_comfy(model, device)
        controlnet = loader.load_controlnet(start_from, dtype=torch.float32, device=device).model
        trainer = Trainer(unet, controlnet, schedule, data, TrainingOptions(**options), device)
        bar = comfy.utils.ProgressBar(trainer.options.steps)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update_absolute(step, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        files = train(trainer, output, resume=resume, checkpoint_every=checkpoint_every, on_step=on_step, log=log)
    curve = cv2.cvtColor(cv2.imread(files.loss_curve), cv2.COLOR_BGR2RGB)
    image = torch.from_numpy(curve).float().div(255)[None]
    return files.controlnet, image
