"""One training run with its files: resume from the checkpoint, write it as training goes, and
save the ControlNet (original layout), the loss curve and, if unlocked, the U-Net decoder.

Files next to `output` (e.g. models/controlnet/control_mine.safetensors):
    control_mine.safetensors          the trained ControlNet (`control_model.` prefix)
    control_mine.train.ckpt           resumable checkpoint (weights, optimizer, RNG, losses)
    control_mine.loss.png             the loss curve
    control_mine.unet_decoder.safetensors   only when the decoder was unlocked: the changed
                                      U-Net output_blocks/out (`model.diffusion_model.` prefix)
    control_mine.encoded.safetensors  the encoded dataset the ComfyUI node caches (a folder's
                                      latents and text encodings; the command line takes it)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from safetensors.torch import save_file

from ._core import create
from .files import atomic_write
from .loop import StepCallback, Trainer
from .plot import save_loss_curve
from .unet import DECODER_MODULES

DEFAULT_CHECKPOINT_EVERY = 500


@dataclass(frozen=True)
class OutputFiles:
    controlnet: str
    checkpoint: str
    loss_curve: str
    decoder: str
    encoded: str

    @classmethod
    def beside(cls, output: str) -> "OutputFiles":
        stem = output[: -len(".safetensors")] if output.endswith(".safetensors") else output
        return cls(stem + ".safetensors", stem + ".train.ckpt", stem + ".loss.png", stem + ".unet_decoder.safetensors",
                   stem + ".encoded.safetensors")


def train(
    trainer: Trainer,
    output: str,
    resume: bool = True,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    on_step: StepCallback | None = None,
    log: Callable[[str], None] = print,
) -> OutputFiles:
    """Train to trainer.options.steps, continuing from the checkpoint beside `output` when
    `resume` and one exists; returns the files written."""
    files = OutputFiles.beside(output)
    if resume and os.path.exists(files.checkpoint):
        trainer.load_checkpoint(files.checkpoint)
        log(f"resuming from {files.checkpoint} at step {trainer.step}")
    trainer.run(on_step=on_step, checkpoint_path=files.checkpoint, checkpoint_every=checkpoint_every)
    create.save_controlnet(trainer.controlnet, files.controlnet, {"training_steps": str(trainer.step)})
    save_loss_curve(files.loss_curve, trainer.losses)
    if trainer.decoder_unlocked:
        decoder = {create.LDM_UNET_PREFIX + k: v.detach().cpu().contiguous()
                   for k, v in trainer.unet.state_dict().items() if k.startswith(DECODER_MODULES)}
        atomic_write(files.decoder, lambda tmp: save_file(decoder, tmp, metadata={"format": "pt"}))
    log(f"wrote {files.controlnet} ({trainer.step} steps, last loss {trainer.losses[-1] if trainer.losses else float('nan'):.4f})")
    return files
