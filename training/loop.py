"""The paper's training procedure (§3.3, §4.1; the original `cldm.py` and `tutorial_train.py`).

- L2 loss between the U-Net's output and the noise (or v) target, the U-Net getting the
  ControlNet's residuals; timesteps uniform over the schedule.
- Each prompt is replaced by the empty prompt with probability `prompt_dropout` (paper: 50%),
  so the ControlNet learns the condition's meaning without the text.
- The base U-Net is locked: only the ControlNet (trainable copy, zero convolutions, hint
  encoder) is given to AdamW (lr 1e-5). Options: the small-scale recipe connects only the
  middle block for the first `middle_only_steps`; the large-scale recipe unlocks the U-Net's
  decoder (`output_blocks`, `out`: sd_locked=False) from step `unlock_decoder_at` at
  `decoder_learning_rate` (the original docs suggest 2e-6).
- Gradient accumulation (one optimizer step per `gradient_accumulation` batches), gradient
  checkpointing, autocast mixed precision on CUDA.
- All randomness (batches, timesteps, noise, dropout) comes from one generator whose state is
  checkpointed with the weights and the optimizer, so a resumed run continues the same curve.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._core import errors
from .data import EncodedDataset
from .files import atomic_torch_save
from .memory import gradient_checkpointing
from .noise import NoiseSchedule
from .unet import DECODER_MODULES, UNet, control_dict

CHECKPOINT_FORMAT = "controlnet-suite-training/1"
PAPER_LEARNING_RATE = 1e-5  # tutorial_train.py, paper §4.1
UNLOCKED_DECODER_LEARNING_RATE = 2e-6  # original docs/train.md for sd_locked=False
ADAMW_WEIGHT_DECAY = 1e-2  # torch.optim.AdamW's default, which the original uses
PAPER_PROMPT_DROPOUT = 0.5  # paper §3.3
PAPER_BATCH_SIZE = 4  # tutorial_train.py
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainingOptions:
    steps: int = 1000
    batch_size: int = PAPER_BATCH_SIZE
    learning_rate: float = PAPER_LEARNING_RATE
    weight_decay: float = ADAMW_WEIGHT_DECAY
    prompt_dropout: float = PAPER_PROMPT_DROPOUT
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto: bf16 (else fp16) autocast on CUDA, none elsewhere
    middle_only_steps: int = 0  # small-scale recipe: only the middle block connected at first
    unlock_decoder_at: int | None = None  # large-scale recipe: train output_blocks/out from this step
    decoder_learning_rate: float = UNLOCKED_DECODER_LEARNING_RATE
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 0, "steps must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.gradient_accumulation >= 1, "gradient_accumulation must be >= 1"),
            (0.0 <= self.prompt_dropout <= 1.0, "prompt_dropout must be between 0 and 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.middle_only_steps >= 0, "middle_only_steps must be >= 0"),
            (self.unlock_decoder_at is None or self.unlock_decoder_at >= 0, "unlock_decoder_at must be >= 0 or None"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (got {asdict(self)})")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


StepCallback = Callable[[int, int, float], None]  # (step done, total steps, loss)


class Trainer:
    """Trains `controlnet` on top of the locked `unet` (any module with the UNet's forward
    signature and `output_blocks`/`out`, e.g. ours or ComfyUI's UNetModel)."""

    def __init__(
        self,
        unet: UNet | nn.Module,
        controlnet: nn.Module,
        schedule: NoiseSchedule,
        data: EncodedDataset,
        options: TrainingOptions,
        device: torch.device | str = "cpu",
    ):
        if len(data) == 0:
            raise ValueError("the dataset is empty: nothing to train on")
        self.unet, self.controlnet, self.schedule, self.data, self.options = unet, controlnet, schedule, data, options
        self.device = torch.device(device)
        self.unet.to(self.device).requires_grad_(False).eval()
        self.controlnet.to(self.device).requires_grad_(True).train()
        self.generator = torch.Generator().manual_seed(options.seed)
        self.step = 0
        self.losses: list[float] = []
        self.decoder_unlocked = False
        self.optimizer = torch.optim.AdamW(
            [{"params": list(self.controlnet.parameters()), "lr": options.learning_rate}],
            lr=options.learning_rate,
            weight_decay=options.weight_decay,
        )
        self.autocast_dtype = _autocast_dtype(options.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    # what trains

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.unet.named_parameters() if name.startswith(DECODER_MODULES)]

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter the optimizer may change now, by name (`controlnet.` / `unet.`)."""
        named = {f"controlnet.{n}": p for n, p in self.controlnet.named_parameters()}
        if self.decoder_unlocked:
            named.update({f"unet.{n}": p for n, p in self.unet.named_parameters() if n.startswith(DECODER_MODULES)})
        return named

    def _unlock_decoder(self) -> None:
        decoder = self.decoder_parameters()
        if not decoder:
            raise errors.ControlNetError("the base U-Net has no output_blocks/out to unlock")
        for p in decoder:
            p.requires_grad_(True)
        self.unet.train()
        self.optimizer.add_param_group({"params": decoder, "lr": self.options.decoder_learning_rate})
        self.decoder_unlocked = True

    def middle_only(self) -> bool:
        return self.step < self.options.middle_only_steps

    # one optimizer step

    def _sample(self) -> dict[str, torch.Tensor]:
        opts, gen = self.options, self.generator
        index = torch.randint(len(self.data), (opts.batch_size,), generator=gen)
        drop = torch.rand(opts.batch_size, generator=gen) < opts.prompt_dropout
        batch = self.data.batch(index, drop)
        latents = batch["latents"]
        t = torch.randint(self.schedule.timesteps, (opts.batch_size,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen, dtype=latents.dtype)
        batch.update(noise=noise, t=t)
        return {k: v.to(self.device) for k, v in batch.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2 between the U-Net's output (with the ControlNet's residuals) and the target."""
        x0, noise, t = batch["latents"], batch["noise"], batch["t"]
        x_t = self.schedule.add_noise(x0, noise, t)
        context, y = batch.get("contexts"), batch.get("ys")
        with self._autocast():
            residuals = self.controlnet(x_t, batch["hints"], t, context, y)
            control = control_dict(residuals, middle_only=self.middle_only())
            output = self.unet(x_t, t, context=context, y=y, control=control, transformer_options={})
        return F.mse_loss(output.float(), self.schedule.target(x0, noise, t).float())

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> float:
        """One optimizer step over `gradient_accumulation` batches; returns their mean loss."""
        opts = self.options
        if opts.unlock_decoder_at is not None and self.step >= opts.unlock_decoder_at and not self.decoder_unlocked:
            self._unlock_decoder()
        total = 0.0
        with gradient_checkpointing(self.controlnet, self.unet, enabled=opts.gradient_checkpointing):
            for _ in range(opts.gradient_accumulation):
                loss = self.loss(self._sample())
                scaled = loss / opts.gradient_accumulation
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                total += float(loss.detach())
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean = total / opts.gradient_accumulation
        if not math.isfinite(mean):
            raise errors.ControlNetError(
                f"the loss became {mean} at step {self.step + 1}: lower the learning rate or use mixed_precision='no'"
            )
        self.step += 1
        self.losses.append(mean)
        return mean

    def run(
        self,
        until: int | None = None,
        on_step: StepCallback | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every: int = 0,
    ) -> list[float]:
        """Train up to step `until` (default: options.steps). With `checkpoint_path`, a
        resumable checkpoint is written every `checkpoint_every` steps and at the end."""
        until = self.options.steps if until is None else until
        while self.step < until:
            loss = self.train_step()
            if on_step:
                on_step(self.step, until, loss)
            if checkpoint_path and checkpoint_every and self.step % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_path)
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        self.controlnet.eval()
        return self.losses

    # resumable checkpoints

    def state_dict(self) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "options": asdict(self.options),
            "controlnet": {k: v.detach().cpu() for k, v in self.controlnet.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "decoder_unlocked": self.decoder_unlocked,
        }
        if self.decoder_unlocked:
            state["decoder"] = {k: v.detach().cpu() for k, v in self.unet.state_dict().items() if k.startswith(DECODER_MODULES)}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def save_checkpoint(self, path: str) -> None:
        """Written to a temporary file and renamed: an interruption leaves the previous one."""
        atomic_torch_save(path, self.state_dict())

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise errors.ControlNetFormatError(
                f"{source} is not a ControlNet Suite training checkpoint (format {state.get('format')!r}, "
                f"expected {CHECKPOINT_FORMAT!r})"
            )
        try:
            self.controlnet.load_state_dict(state["controlnet"], strict=True)
        except RuntimeError as exc:
            raise errors.ControlNetFormatError(
                f"{source} was written for a different ControlNet shape: start from the same base model and hint "
                f"channels ({str(exc).splitlines()[0]})"
            ) from None
        if state["decoder_unlocked"]:
            self.unet.load_state_dict(state["decoder"], strict=False)
            if not self.decoder_unlocked:
                self._unlock_decoder()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]

    def load_checkpoint(self, path: str) -> None:
        """Continue from a checkpoint written by save_checkpoint (same base, ControlNet shape,
        dataset and options give the same curve as an uninterrupted run)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state, f"'{path}'")


def _autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA device; on a CPU use 'no' or 'bf16'")
    return torch.float16 if mode == "fp16" else torch.bfloat16


@contextlib.contextmanager
def training_mode(enabled: bool = True) -> Iterator[None]:
    """Gradients on even where the caller disabled them (ComfyUI runs nodes in inference mode)."""
    with torch.inference_mode(False), torch.enable_grad() if enabled else contextlib.nullcontext():
        yield
