"""The diffusion forward process, the training target, and a DDIM sampler.

x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. The network predicts eps (SD1.x, the paper) or
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (SD2.x 768-v); the loss is L2 against that target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

EPS = "eps"
V_PREDICTION = "v"
PREDICTIONS = (EPS, V_PREDICTION)
# Stable Diffusion's "scaled_linear" schedule (v1-inference.yaml: linear_start, linear_end, timesteps).
SD_BETA_START, SD_BETA_END, SD_TIMESTEPS = 0.00085, 0.012, 1000
# DDPM's linear schedule (Ho et al. 2020, §4), used by the pixel-space toy.
DDPM_BETA_START, DDPM_BETA_END = 1e-4, 0.02


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # abar_t for t = 0 .. T-1, float64
    prediction: str = EPS

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {self.prediction!r}")

    @classmethod
    def stable_diffusion(cls, prediction: str = EPS) -> "NoiseSchedule":
        betas = torch.linspace(SD_BETA_START**0.5, SD_BETA_END**0.5, SD_TIMESTEPS, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1 - betas, 0), prediction)

    @classmethod
    def linear(cls, timesteps: int = 1000, prediction: str = EPS) -> "NoiseSchedule":
        betas = torch.linspace(DDPM_BETA_START, DDPM_BETA_END, timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), prediction)

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, prediction: str = EPS) -> "NoiseSchedule":
        """From k-diffusion sigmas (ComfyUI's model_sampling.sigmas): sigma^2 = (1 - abar) / abar."""
        return cls(1.0 / (1.0 + sigmas.double() ** 2), prediction)

    @property
    def timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(t.device)[t].view(-1, *([1] * (like.ndim - 1)))
        return abar.sqrt().to(like.dtype), (1 - abar).sqrt().to(like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == EPS:
            return noise
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    def x0_and_eps(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) implied by the network output at x_t."""
        a, s = self._coefficients(t, x_t)
        if self.prediction == EPS:
            return (x_t - s * output) / a, output
        return a * x_t - s * output, s * x_t + a * output


@torch.no_grad()
def ddim_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    clip: float | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0, Song et al. 2021) from pure noise; model(x_t, t) -> output.
    `clip` bounds the predicted x_0 (pixel-space models: 1.0)."""
    ts = torch.linspace(schedule.timesteps - 1, 0, steps).round().long().tolist()
    x = noise
    for i, t in enumerate(ts):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0, eps = schedule.x0_and_eps(x, model(x, t_batch), t_batch)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        if i == len(ts) - 1:
            return x0
        prev = torch.full_like(t_batch, ts[i + 1])
        x = schedule.add_noise(x0, eps, prev)
    return x
