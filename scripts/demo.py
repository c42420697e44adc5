"""Embedded default: create a ControlNet from a base U-Net, save it, load it back, run it.

No real Stable Diffusion weights can ship with the pack, so the base U-Net here is an SD1.5-
topology U-Net encoder with RANDOM weights, generated on the spot. Files go to output/demo/.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from controlnet_core import ControlNet, load_controlnet, sd_config  # noqa: E402
from controlnet_core.create import create_controlnet_from_unet, save_controlnet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--width", type=int, default=64, help="model_channels of the generated base (SD1.5: 320)")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    torch.manual_seed(0)

    print(f"Generating an SD1.5-topology base U-Net encoder with random weights (width {args.width}); "
          "these are NOT real Stable Diffusion weights.")
    base = ControlNet(sd_config(model_channels=args.width, context_dim=768)).state_dict()
    base = {k: v for k, v in base.items() if not k.startswith(("zero_convs", "middle_block_out", "input_hint_block"))}

    controlnet = create_controlnet_from_unet(base)
    path = os.path.join(args.output, "control_demo_sd15.safetensors")
    save_controlnet(controlnet, path)
    print(f"Created a ControlNet by the paper's trainable copy and saved it: {path}")

    loaded = load_controlnet(path)
    print(f"Loaded back: layout={loaded.layout} family={loaded.family} residuals={loaded.config.num_outputs}")

    x = torch.randn(1, 4, 32, 32)
    hint = torch.rand(1, 3, 256, 256)
    context = torch.randn(1, 77, 768)
    start = time.perf_counter()
    with torch.no_grad():
        residuals = loaded.model(x, hint, torch.tensor([500.0]), context)
    largest = max(r.abs().max().item() for r in residuals)
    print(f"One forward pass: {len(residuals)} residuals in {time.perf_counter() - start:.2f} s; "
          f"largest |residual| = {largest} (exactly 0: zero convolutions, so the base model is untouched)")


if __name__ == "__main__":
    main()
