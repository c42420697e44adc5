"""A tiny SD1-shaped base U-Net, its ControlNet and a random encoded dataset for training tests.

Widths are 64 (one 64-channel head per attention), the default every loader assumes for
non-standard shapes, so saved files read the same in our loader, ComfyUI and diffusers.
"""

from __future__ import annotations

import torch

from tests.core.tiny import randomize
from training.create import new_controlnet
from training.data import EncodedDataset
from training.loop import Trainer, TrainingOptions
from training.noise import NoiseSchedule
from training.unet import UNet, tiny_config

MODEL_CHANNELS = 64
CHANNEL_MULT = (1, 1)
TRANSFORMER_DEPTH = (0, 1)
CONTEXT_DIM = 32
TOKENS = 3
LATENT_SIDE = 8
EXAMPLES = 6
# The same U-Net in diffusers' terms (UNet2DConditionModel / ControlNetModel keyword arguments).
DIFFUSERS_UNET = dict(
    block_out_channels=(64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=CONTEXT_DIM,
    attention_head_dim=[1, 1],  # head counts (diffusers' misnomer): 64-channel heads
    layers_per_block=1,
)


def base_unet(seed: int = 0) -> UNet:
    cfg = tiny_config(
        model_channels=MODEL_CHANNELS, channel_mult=CHANNEL_MULT, transformer_depth=TRANSFORMER_DEPTH, context_dim=CONTEXT_DIM
    )
    return randomize(UNet(cfg), seed).eval()


def dataset(seed: int = 0, examples: int = EXAMPLES) -> EncodedDataset:
    gen = torch.Generator().manual_seed(seed)
    side = LATENT_SIDE
    return EncodedDataset(
        latents=torch.randn(examples, 4, side, side, generator=gen),
        hints=torch.rand(examples, 3, side * 8, side * 8, generator=gen),
        contexts=torch.randn(examples, TOKENS, CONTEXT_DIM, generator=gen),
        empty_context=torch.randn(TOKENS, CONTEXT_DIM, generator=gen),
    )


def trainer(seed: int = 0, **options) -> Trainer:
    """A fresh base (seed), its new ControlNet and the dataset; options override the paper's
    defaults, with a larger learning rate so a few steps move the weights visibly."""
    unet = base_unet(seed)
    torch.manual_seed(seed)  # the hint encoder's default init
    controlnet = new_controlnet(unet.state_dict())
    opts = TrainingOptions(**{"batch_size": 2, "learning_rate": 1e-3, **options})
    return Trainer(unet, controlnet, NoiseSchedule.stable_diffusion(), dataset(seed), opts)
