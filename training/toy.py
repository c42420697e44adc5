"""The synthetic experiment: does a ControlNet trained with the paper's method learn to follow
its condition, and how suddenly? Small enough for a CPU in minutes.

1. Data: 16x16 RGB images of one filled shape (disc or square, random place and size) in one of
   four colours on a plain dark background. The "prompt" is the colour; the condition is the
   shape's mask.
2. Base: a tiny original-layout U-Net (our training.unet.UNet; pixel space, no VAE) plus a
   learned prompt embedding (the "text encoder"; one extra entry is the empty prompt), trained
   here from scratch as a colour-conditional DDPM (eps prediction, L2).
3. ControlNet: the paper's trainable copy of that U-Net's encoder (zero convolutions; a hint
   encoder at the model's own resolution, as there is no latent), trained with
   training.loop.Trainer: base locked, 50% empty prompts, L2 on the noise, AdamW.
4. Condition following: every `eval_every` steps, 32 fixed (mask, colour, noise) triples are
   sampled with deterministic DDIM; the shape is the set of pixels far from the background
   colour; IoU with the mask is averaged. Step 0 is checked to equal the base model's samples
   bit for bit.

Simplifications, stated: pixel space instead of a VAE latent; a 5-entry embedding instead of a
text encoder; 16x16 images; a learning rate above the paper's 1e-5 (the toy has minutes, not
days; the paper's batch/step counts do not apply).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .create import new_controlnet
from .data import EncodedDataset
from .files import atomic_write
from .loop import Trainer, TrainingOptions
from .noise import NoiseSchedule, ddim_sample
from .plot import render_curves, save_loss_curve, save_png
from .unet import UNet, control_dict, tiny_config

SIDE = 16
BACKGROUND = (-0.6, -0.6, -0.6)  # dark grey, in the model's -1..1 range
COLOURS = {  # the "prompts"
    "red": (0.9, -0.9, -0.9),
    "green": (-0.9, 0.9, -0.9),
    "blue": (-0.9, -0.9, 0.9),
    "yellow": (0.9, 0.9, -0.9),
}
EMPTY_PROMPT = len(COLOURS)  # embedding index of the empty prompt
SHAPES = ("disc", "square")
MIN_SIZE, MAX_SIZE = 3, 5  # radius / half side in pixels
EMBED_DIM = 32
EVAL_SAMPLES = 32
DDIM_STEPS = 20


@dataclass
class ToyOptions:
    base_steps: int = 600
    base_batch_size: int = 32
    base_learning_rate: float = 2e-3
    base_prompt_dropout: float = 0.1  # so the base also knows the empty prompt
    ema_decay: float = 0.99
    control_steps: int = 400
    control_batch_size: int = 32
    control_learning_rate: float = 3e-4
    control_examples: int = 2000
    eval_every: int = 25
    seed: int = 0
    threads: int = 1


class PromptEmbedding(nn.Module):
    """The toy's text encoder: one learned 1-token context per colour, plus the empty prompt."""

    def __init__(self, prompts: int = len(COLOURS) + 1, dim: int = EMBED_DIM):
        super().__init__()
        self.table = nn.Embedding(prompts, dim)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return self.table(prompt)[:, None, :]


def base_config():
    return tiny_config(in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       transformer_depth=(0, 1), context_dim=EMBED_DIM)


def draw(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n examples: images (n,3,S,S) in -1..1, masks (n,1,S,S) in {0,1}, colour index (n,)."""
    images = np.empty((n, SIDE, SIDE, 3), np.float32)
    masks = np.zeros((n, SIDE, SIDE), np.uint8)
    colours = rng.integers(len(COLOURS), size=n)
    palette = np.array(list(COLOURS.values()), np.float32)
    for i in range(n):
        size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
        cx, cy = (int(v) for v in rng.integers(size, SIDE - size, size=2))
        if SHAPES[int(rng.integers(len(SHAPES)))] == "disc":
            cv2.circle(masks[i], (cx, cy), size, 1, -1)
        else:
            cv2.rectangle(masks[i], (cx - size, cy - size), (cx + size - 1, cy + size - 1), 1, -1)
        images[i] = np.where(masks[i][..., None] > 0, palette[colours[i]], np.array(BACKGROUND, np.float32))
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks).float()[:, None],
            torch.from_numpy(colours).long())


def shape_mask(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(n,S,S) bool: the pixels closer to the prompt's colour than to the background colour
    (robust to a small model's off-colour background)."""
    palette = torch.tensor(list(COLOURS.values()))[colours].view(-1, 3, 1, 1)
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    return (images - palette).norm(dim=1) < (images - background).norm(dim=1)


def iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample intersection over union of two (n,S,S) boolean masks (1 when both empty)."""
    inter = (predicted & target).flatten(1).sum(1).float()
    union = (predicted | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def train_base(opts: ToyOptions, schedule: NoiseSchedule, log: Callable[[str], None]) -> tuple[UNet, PromptEmbedding, list[float]]:
    """The tiny base model, trained from scratch on fresh synthetic batches (EMA weights)."""
    torch.manual_seed(opts.seed)
    unet, embed = UNet(base_config()), PromptEmbedding()
    ema_unet, ema_embed = UNet(base_config()), PromptEmbedding()
    ema_unet.load_state_dict(unet.state_dict())
    ema_embed.load_state_dict(embed.state_dict())
    params = list(unet.parameters()) + list(embed.parameters())
    optimizer = torch.optim.AdamW(params, lr=opts.base_learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    losses = []
    for step in range(1, opts.base_steps + 1):
        images, _, colours = draw(opts.base_batch_size, rng)
        drop = torch.rand(len(colours), generator=gen) < opts.base_prompt_dropout
        prompts = torch.where(drop, torch.full_like(colours, EMPTY_PROMPT), colours)
        t = torch.randint(schedule.timesteps, (len(images),), generator=gen)
        noise = torch.randn(images.shape, generator=gen)
        loss = F.mse_loss(unet(schedule.add_noise(images, noise, t), t, embed(prompts)), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for g in optimizer.param_groups:  # cosine decay to a tenth
            g["lr"] = opts.base_learning_rate * (0.55 + 0.45 * math.cos(math.pi * step / opts.base_steps))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_embed, embed)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - opts.ema_decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == opts.base_steps:
            log(f"base step {step}/{opts.base_steps}  loss {np.mean(losses[-50:]):.4f}")
    return ema_unet.eval().requires_grad_(False), ema_embed.eval().requires_grad_(False), losses


@dataclass
class EvalSet:
    masks: torch.Tensor  # (n,1,S,S)
    colours: torch.Tensor
    noise: torch.Tensor


def eval_set(seed: int) -> EvalSet:
    _, masks, colours = draw(EVAL_SAMPLES, np.random.default_rng(seed + 10_000))
    noise = torch.randn(EVAL_SAMPLES, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed + 10_000))
    return EvalSet(masks, colours, noise)


def sample(unet: UNet, embed: PromptEmbedding, schedule: NoiseSchedule, ev: EvalSet, controlnet=None) -> torch.Tensor:
    context = embed(ev.colours)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        control = control_dict(controlnet(x, ev.masks, t, context)) if controlnet is not None else None
        return unet(x, t, context, control=control)

    with torch.no_grad():
        return ddim_sample(model, ev.noise, schedule, DDIM_STEPS, clip=1.0)


def sample_grid(rows: list[tuple[str, torch.Tensor]], columns: int = 12, scale: int = 6) -> np.ndarray:
    """Labelled rows of images (n,3,S,S) in -1..1 -> BGR uint8."""
    label_width, gap = 170, 2
    cell = SIDE * scale
    out = np.full((len(rows) * (cell + gap), label_width + columns * (cell + gap), 3), 255, np.uint8)
    for r, (label, images) in enumerate(rows):
        y = r * (cell + gap)
        cv2.putText(out, label, (5, y + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for c in range(min(columns, len(images))):
            rgb = ((images[c].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            big = cv2.resize(rgb, (cell, cell), interpolation=cv2.INTER_NEAREST)
            x = label_width + c * (cell + gap)
            out[y:y + cell, x:x + cell] = cv2.cvtColor(big, cv2.COLOR_RGB2BGR)
    return out


def load_base(path: Path) -> tuple[UNet, PromptEmbedding]:
    """A base model written by an earlier run (toy_base.safetensors)."""
    weights = load_file(str(path))
    unet, embed = UNet(base_config()), PromptEmbedding()
    unet.load_state_dict({k.removeprefix("model.diffusion_model."): v for k, v in weights.items() if k.startswith("model.")})
    embed.load_state_dict({k.removeprefix("prompt_embedding."): v for k, v in weights.items() if k.startswith("prompt_embedding.")})
    return unet.eval().requires_grad_(False), embed.eval().requires_grad_(False)


def run(opts: ToyOptions, out_dir: Path, plot_path: Path, log: Callable[[str], None] = print,
        base_path: Path | None = None) -> dict:
    torch.set_num_threads(opts.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    schedule = NoiseSchedule.linear()

    base_file = out_dir / "toy_base.safetensors"
    if base_path is not None:
        (unet, embed), base_losses = load_base(base_path), []
        log(f"base model loaded from {base_path}")
    else:
        unet, embed, base_losses = train_base(opts, schedule, log)
    save_file({**{f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()},
               **{f"prompt_embedding.{k}": v for k, v in embed.state_dict().items()}}, str(base_file))
    base_seconds = time.perf_counter() - started

    ev = eval_set(opts.seed)
    target = ev.masks[:, 0] > 0.5
    base_samples = sample(unet, embed, schedule, ev)
    base_iou = float(iou(shape_mask(base_samples, ev.colours), target).mean())
    # chance level: the same masks against the shapes of an independent draw
    _, other_masks, _ = draw(EVAL_SAMPLES, np.random.default_rng(opts.seed + 20_000))
    chance_iou = float(iou(other_masks[:, 0] > 0.5, target).mean())
    log(f"base model trained in {base_seconds:.0f}s; IoU of its samples with the eval masks {base_iou:.3f} (chance {chance_iou:.3f})")

    images, masks, colours = draw(opts.control_examples, np.random.default_rng(opts.seed + 1))
    with torch.no_grad():
        data = EncodedDataset(images, masks, embed(colours), embed(torch.tensor([EMPTY_PROMPT]))[0])
    torch.manual_seed(opts.seed)
    controlnet = new_controlnet(unet.state_dict(), hint_channels=1, hint_downsampling=0)
    options = TrainingOptions(steps=opts.control_steps, batch_size=opts.control_batch_size,
                              learning_rate=opts.control_learning_rate, seed=opts.seed)
    trainer = Trainer(unet, controlnet, schedule, data, options)

    steps, ious = [], []

    def evaluate() -> None:
        controlnet.eval()
        samples = sample(unet, embed, schedule, ev, controlnet)
        controlnet.train()
        if trainer.step == 0:
            results["step0_equals_base"] = bool(torch.equal(samples, base_samples))
            log(f"step 0: ControlNet samples equal the base model's bit for bit: {results['step0_equals_base']}")
        steps.append(trainer.step)
        ious.append(float(iou(shape_mask(samples, ev.colours), target).mean()))
        results["final_samples"] = samples
        log(f"control step {trainer.step}/{opts.control_steps}  loss {np.mean(trainer.losses[-opts.eval_every:] or [float('nan')]):.4f}  IoU {ious[-1]:.3f}")

    results: dict = {}
    control_started = time.perf_counter()
    evaluate()
    while trainer.step < opts.control_steps:
        trainer.run(until=min(trainer.step + opts.eval_every, opts.control_steps))
        evaluate()
    control_seconds = time.perf_counter() - control_started
    save_file({f"control_model.{k}": v.contiguous() for k, v in controlnet.state_dict().items()},
              str(out_dir / "toy_controlnet.safetensors"))

    final_samples = results.pop("final_samples")
    summary = {
        "options": asdict(opts),
        "step0_equals_base": results["step0_equals_base"],
        "base_iou": base_iou,
        "chance_iou": chance_iou,
        "steps": steps,
        "iou": ious,
        "control_losses": trainer.losses,
        "base_losses": base_losses,
        "seconds": {"base": round(base_seconds, 1), "controlnet_with_evals": round(control_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(),
        "base_trained_here": base_path is None,
    }
    summary["first_step_iou_above_half"] = next((s for s, v in zip(steps, ious) if v >= 0.5), None)
    atomic_write(str(out_dir / "results.json"), lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    save_loss_curve(str(out_dir / "controlnet_loss.png"), trainer.losses, "toy ControlNet: L2 noise loss")

    curve = render_curves(
        {"ControlNet samples": (steps, ious), "base model (no control)": ([0, steps[-1]], [base_iou] * 2),
         "chance (random masks)": ([0, steps[-1]], [chance_iou] * 2)},
        f"Toy: IoU of the generated shape with the condition mask ({EVAL_SAMPLES} samples, DDIM {DDIM_STEPS})",
        "ControlNet optimizer step", "mean IoU", y_range=(0.0, 1.0),
    )
    grid = sample_grid([("condition mask", ev.masks.repeat(1, 3, 1, 1) * 2 - 1), ("base model", base_samples),
                        (f"ControlNet, step {steps[-1]}", final_samples)])
    width = max(curve.shape[1], grid.shape[1])
    pad = lambda im: np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    save_png(str(plot_path), np.concatenate([pad(curve), pad(grid)], axis=0))
    log(f"done in {summary['seconds']['total']:.0f}s: IoU {ious[0]:.3f} at step 0 -> {ious[-1]:.3f} at step {steps[-1]}; "
        f"plot {plot_path}, numbers {out_dir / 'results.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    defaults = ToyOptions()
    parser = argparse.ArgumentParser(prog="python -m training.toy", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("output/toy_experiment"), help="folder for weights and numbers")
    parser.add_argument("--plot", type=Path, default=None, help="the plot PNG (default: <out>/toy_experiment.png)")
    for name in ("base_steps", "control_steps", "eval_every", "seed", "threads", "control_examples"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--control-learning-rate", type=float, default=defaults.control_learning_rate)
    parser.add_argument("--base", type=Path, default=None,
                        help="reuse the base model of an earlier run (its toy_base.safetensors) instead of training one")
    args = parser.parse_args(argv)
    opts = ToyOptions(**{k: getattr(args, k) for k in asdict(defaults) if hasattr(args, k)})
    summary = run(opts, args.out, args.plot or args.out / "toy_experiment.png", lambda m: print(m, file=sys.stderr, flush=True),
                  args.base)
    return 0 if summary["step0_equals_base"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
