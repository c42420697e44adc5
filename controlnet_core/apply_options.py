"""How one control is applied: the options every apply and stack node gives (pure, no ComfyUI).

Apply ControlNet, Apply ControlNet Union and the two stack entries take the same inputs; the
node builds one `ApplyOptions` from them and hands it to the control object, which checks
what needs the model (block weights need its residual count, masks its hint size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import control_modes
from .errors import ControlNetError
from .schedule import LatentStrengths, StrengthSchedule


@dataclass(frozen=True)
class ApplyOptions:
    strength: float = 1.0
    start_percent: float = 0.0  # of the sampling, as ComfyUI's Apply ControlNet
    end_percent: float = 1.0
    control_mode: str = control_modes.BALANCED
    mask: torch.Tensor | None = None  # B×H×W (ComfyUI MASK), any size: fitted to the hint later
    block_weights: str = ""  # text, parsed against the model's residuals when configured
    strength_schedule: StrengthSchedule | None = None
    latent_strengths: LatentStrengths | None = None
    uncond_multiplier: float = 1.0  # the unconditional rows' share of the control (Advanced-ControlNet's)

    def __post_init__(self) -> None:
        control_modes.check_mode(self.control_mode)
        check_uncond_multiplier(self.uncond_multiplier, self.control_mode)
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ControlNetError(
                f"start_percent ({self.start_percent}) must not exceed end_percent ({self.end_percent}); both lie in 0..1"
            )

    @property
    def percent_range(self) -> tuple[float, float]:
        return (self.start_percent, self.end_percent)

    def is_plain(self) -> bool:
        """Balanced mode with nothing else: what every ControlNet object, ours or not, can do."""
        extras = (self.mask, self.strength_schedule, self.latent_strengths)
        return (
            self.control_mode == control_modes.BALANCED
            and not self.block_weights.strip()
            and self.uncond_multiplier == 1.0
            and all(extra is None for extra in extras)
        )


def check_uncond_multiplier(uncond_multiplier: float, control_mode: str) -> None:
    """Refuse a multiplier outside 0..1, and one between 0 and 1 in a mode that gives the
    unconditional rows no control (it would change nothing); 0 there says the same as the mode."""
    if not 0.0 <= uncond_multiplier <= 1.0:
        raise ControlNetError(f"uncond_multiplier ({uncond_multiplier}) lies in 0..1 (1: the same control on both branches)")
    if 0.0 < uncond_multiplier < 1.0 and control_modes.is_cond_only(control_mode):
        raise ControlNetError(
            f"uncond_multiplier {uncond_multiplier} has nothing to scale: control mode '{control_mode}' gives the "
            "unconditional branch no control. Set uncond_multiplier to 1, or choose balanced or prompt_more_important"
        )
