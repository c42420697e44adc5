"""The paper's trainable copy: created from a base U-Net, it changes nothing until trained."""

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from controlnet_core import load_controlnet
from controlnet_core.create import create_controlnet_from_unet, save_controlnet
from controlnet_core.formats import diffusers_to_original_keys
from tests.core.tiny import DIFFUSERS_CONFIGS, inputs, randomize

SD1 = DIFFUSERS_CONFIGS["SD1.x"]


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=SD1["block_out_channels"],
        down_block_types=SD1["down_block_types"],
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=SD1["cross_attention_dim"],
        attention_head_dim=SD1["attention_head_dim"],
        layers_per_block=2,
    )
    return randomize(unet, seed).eval()


def test_created_controlnet_is_exactly_zero_and_leaves_unet_bit_identical():
    unet = tiny_unet()
    controlnet = create_controlnet_from_unet(unet.state_dict())
    x, hint, t, context, _ = inputs("SD1.x")

    with torch.no_grad():
        residuals = controlnet(x, hint, t, context)
        plain = unet(x, t, context).sample
        controlled = unet(
            x, t, context, down_block_additional_residuals=residuals[:-1], mid_block_additional_residual=residuals[-1]
        ).sample

    assert len(residuals) == 13
    assert all(torch.count_nonzero(r) == 0 for r in residuals)
    assert torch.equal(plain, controlled)


def test_copy_matches_diffusers_from_unet():
    """Every copied tensor equals what diffusers' ControlNetModel.from_unet copies; the zero
    convolutions are zero in both; only the hint encoder's random init differs."""
    unet = tiny_unet(seed=1)
    ours = create_controlnet_from_unet(unet.state_dict()).state_dict()
    theirs = ControlNetModel.from_unet(unet).state_dict()
    mapping = diffusers_to_original_keys(theirs)

    assert set(mapping) == set(ours)
    for key, their_key in mapping.items():
        if key.startswith("input_hint_block.") and not key.startswith("input_hint_block.14."):
            continue  # random init in both
        assert torch.equal(ours[key], theirs[their_key]), key
    zero = [k for k in ours if k.startswith(("zero_convs.", "middle_block_out.", "input_hint_block.14."))]
    assert len(zero) == 2 * 13 + 2 and all(torch.count_nonzero(ours[k]) == 0 for k in zero)


def test_one_optimizer_step_moves_the_zero_convolutions():
    """The paper's gradient argument: dL/dW of a zero conv is its (non-zero) input times the
    upstream gradient, so one step makes the 13 output zero convolutions non-zero. Everything
    behind them, the trainable copy and the hint encoder's own zero conv, gets exactly zero
    gradient at step 1 and starts moving at step 2."""
    controlnet = create_controlnet_from_unet(tiny_unet(seed=2).state_dict()).train()
    x, hint, t, context, _ = inputs("SD1.x")
    targets = [torch.randn_like(r) for r in controlnet(x, hint, t, context)]
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    output_convs = [m[0] for m in controlnet.zero_convs] + [controlnet.middle_block_out[0]]
    hint_zero_conv = controlnet.input_hint_block[14]

    def step():
        optimizer.zero_grad()
        loss = sum(((r - target) ** 2).mean() for r, target in zip(controlnet(x, hint, t, context), targets))
        loss.backward()
        grads = [p.grad for n, p in controlnet.named_parameters() if n.startswith("input_blocks.1.")]
        optimizer.step()
        return grads

    copy_grads = step()
    assert all(torch.count_nonzero(conv.weight) > 0 for conv in output_convs)
    assert all(torch.count_nonzero(g) == 0 for g in copy_grads)
    assert torch.count_nonzero(hint_zero_conv.weight) == 0

    copy_grads = step()
    assert torch.count_nonzero(hint_zero_conv.weight) > 0
    assert all(torch.count_nonzero(g) > 0 for g in copy_grads if g.ndim > 1)


def test_saved_copy_loads_in_original_layout(tmp_path):
    controlnet = create_controlnet_from_unet(tiny_unet(seed=3).state_dict())
    path = tmp_path / "control_new.safetensors"
    save_controlnet(controlnet, str(path))

    loaded = load_controlnet(str(path))

    assert loaded.layout == "original" and loaded.family == "SD1.x"
    expected = controlnet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    assert not list(tmp_path.glob("*.tmp"))


def test_saved_copy_loads_in_diffusers_from_single_file(tmp_path):
    unet = tiny_unet(seed=4)
    controlnet = create_controlnet_from_unet(unet.state_dict())
    with torch.no_grad():  # give the zero convs values so the comparison is not 0 == 0
        for conv in [m[0] for m in controlnet.zero_convs] + [controlnet.middle_block_out[0], controlnet.input_hint_block[14]]:
            conv.weight.normal_(0, 0.1)
    path = tmp_path / "control_new.safetensors"
    save_controlnet(controlnet, str(path))
    config_dir = tmp_path / "config"
    ControlNetModel.from_unet(unet).save_config(config_dir)

    theirs = ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True).eval()

    x, hint, t, context, _ = inputs("SD1.x")
    with torch.no_grad():
        down, mid = theirs(x, t, context, hint, return_dict=False)
        ours = controlnet.eval()(x, hint, t, context)
    for a, b in zip(ours, [*down, mid]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
