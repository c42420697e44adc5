"""Command line: create a ControlNet from a base model, train it, or run the toy experiment.

    python -m training.cli create --base sd15.safetensors --output control_new.safetensors
    python -m training.cli train  --base sd15.safetensors --data encoded.safetensors \
        --output control_mine.safetensors [--controlnet control_new.safetensors] --steps 10000
    python -m training.cli toy

`--data` is a dataset folder (docs/training.md) or an encoded dataset (latents, hints, text
encodings: EncodedDataset). A folder is encoded once with the VAE and text encoder of the
`--base` checkpoint, which ComfyUI loads (the pack has no VAE or CLIP of its own; ComfyUI is
found as the tests find it: $COMFYUI_PATH, the folder above custom_nodes/, ~/comfy/ComfyUI), and
cached beside the output as <output>.encoded.safetensors, as the Train ControlNet node does.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Callable

import torch

from ._core import create, loader
from .create import new_controlnet, new_controlnet_from_file
from .data import EncodedDataset
from .loop import MIXED_PRECISION, Trainer, TrainingOptions
from .noise import PREDICTIONS, NoiseSchedule
from .comfy_host import cached_encoding, dataset_for_comfy, load_checkpoint_with_comfy
from .session import DEFAULT_CHECKPOINT_EVERY, train
from .unet import load_unet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def progress(total: int, start: int) -> tuple[Callable[[int, int, float], None], Callable[[], None]]:
    """(on_step, close): tqdm when installed (it comes with ComfyUI), else a line every 5%."""
    try:
        from tqdm import tqdm
    except ImportError:
        every = max(1, total // 20)

        def plain(step: int, until: int, loss: float) -> None:
            if step % every == 0 or step == until:
                _say(f"step {step}/{until}  loss {loss:.4f}")

        return plain, lambda: None
    bar = tqdm(total=total, initial=start, unit="step", desc="training")

    def update(step: int, until: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}")

    return update, bar.close


def cmd_create(args: argparse.Namespace) -> int:
    controlnet = new_controlnet_from_file(args.base, args.hint_channels, dtype=DTYPES[args.dtype])
    create.save_controlnet(controlnet, args.output, {"base_model": os.path.basename(args.base)})
    _say(f"wrote {args.output}: {controlnet.config.family} ControlNet, {controlnet.config.hint_channels} condition channels, "
         f"{sum(p.numel() for p in controlnet.parameters()):,} parameters")
    return 0


def encode_folder(args: argparse.Namespace, device: torch.device) -> EncodedDataset:
    """The dataset folder encoded with the --base checkpoint's VAE and text encoder, through
    ComfyUI (cached beside the output; a resumed run reuses the cache without ComfyUI)."""
    cached = cached_encoding(args.output, resume=not args.restart, log=_say)
    if cached is not None:
        return cached
    try:
        from workflows.headless import import_comfyui

        import_comfyui(cpu=device.type == "cpu")
    except (ImportError, RuntimeError) as error:
        raise SystemExit(
            f"error: '{args.data}' is a dataset folder, and encoding its images and prompts needs ComfyUI (for the "
            f"checkpoint's VAE and text encoder): {error}. Set COMFYUI_PATH to a ComfyUI checkout, or pass an encoded "
            "dataset (.safetensors) written by the Train ControlNet node"
        ) from None

    import comfy.model_management

    model, clip, vae = load_checkpoint_with_comfy(args.base)
    data = dataset_for_comfy(args.data, args.output, model, vae, clip, args.resolution, args.annotator,
                             resume=not args.restart, log=_say)
    comfy.model_management.unload_all_models()  # the VAE and text encoder are done with: free them for training
    comfy.model_management.soft_empty_cache()
    return data


def cmd_train(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = encode_folder(args, device) if os.path.isdir(args.data) else EncodedDataset.load(args.data)
    unet = load_unet(args.base, device=device)
    if args.controlnet:
        controlnet = loader.load_controlnet(args.controlnet).model
    else:
        controlnet = new_controlnet(unet.state_dict(), int(data.hints.shape[1]))
    values = {f.name: getattr(args, f.name) for f in fields(TrainingOptions) if getattr(args, f.name, None) is not None}
    options = TrainingOptions(**values)
    trainer = Trainer(unet, controlnet, NoiseSchedule.stable_diffusion(args.prediction), data, options, device)
    on_step, close = progress(options.steps, 0)
    try:
        train(trainer, args.output, resume=not args.restart, checkpoint_every=args.checkpoint_every, on_step=on_step, log=_say)
    finally:
        close()
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m training.cli", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    make = sub.add_parser("create", help="a new ControlNet from a base model (trainable copy + zero convolutions)")
    make.add_argument("--base", required=True, help="SD1.x / SD2.x / SDXL checkpoint (.safetensors/.ckpt) or bare U-Net")
    make.add_argument("--output", required=True, help="the ControlNet file to write (.safetensors, original layout)")
    make.add_argument("--hint-channels", type=int, default=3, help="condition image channels (3: RGB map, 1: mask)")
    make.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="stored precision (train in fp32)")
    make.set_defaults(run=cmd_create)

    tr = sub.add_parser("train", help="train a ControlNet on a dataset folder or an encoded dataset with the paper's recipe")
    tr.add_argument("--base", required=True, help="the base checkpoint (its U-Net stays locked)")
    tr.add_argument("--data", required=True, help="a dataset folder (images/, conditions/) or an encoded dataset .safetensors")
    tr.add_argument("--resolution", type=int, default=512, help="dataset folders: centre-cropped to this square (default 512)")
    tr.add_argument("--annotator", help="dataset folders without conditions/: the annotator that makes them (e.g. canny)")
    tr.add_argument("--output", required=True, help="the trained ControlNet file; checkpoint and loss curve go beside it")
    tr.add_argument("--controlnet", help="start from this ControlNet (default: a new trainable copy of the base)")
    tr.add_argument("--prediction", choices=PREDICTIONS, default="eps", help="v for SD2.x 768-v models")
    tr.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    tr.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY, help="steps between checkpoints")
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint instead of resuming from it")
    defaults = TrainingOptions()
    for f in fields(TrainingOptions):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            tr.add_argument(flag, action="store_true", default=None)
        elif f.name == "mixed_precision":
            tr.add_argument(flag, choices=MIXED_PRECISION, default=None, help=f"default {default}")
        elif f.name == "unlock_decoder_at":
            tr.add_argument(flag, type=int, default=None, help="large-scale recipe: unlock the decoder from this step")
        else:
            tr.add_argument(flag, type=type(default), default=None, help=f"default {default}")
    tr.set_defaults(run=cmd_train)

    toy = sub.add_parser("toy", help="the synthetic experiment (CPU, minutes); options: python -m training.toy --help")
    toy.add_argument("rest", nargs=argparse.REMAINDER)
    toy.set_defaults(run=lambda args: __import__(f"{__package__}.toy", fromlist=["main"]).main(args.rest))
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
