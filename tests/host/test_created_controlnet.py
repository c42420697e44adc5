"""A ControlNet created by the paper's trainable copy from ComfyUI's U-Net loads in ComfyUI's
built-in loader with exactly the weights we saved, and changes nothing until trained."""

import torch

from controlnet_core.create import create_controlnet_from_unet, save_controlnet


def test_created_controlnet_loads_in_the_builtin_loader(host):
    unet = host.model.model.diffusion_model.state_dict()  # ComfyUI's U-Net, original key names
    controlnet = create_controlnet_from_unet(unet)
    save_controlnet(controlnet, str(host.models_dir / "created_copy.safetensors"))

    builtin = host.builtin_controlnet("created_copy.safetensors")

    theirs = builtin.control_model.state_dict()
    ours = controlnet.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert all(torch.equal(ours[k], unet[k]) for k in ours if k in unet)  # the copy is the U-Net's encoder


def test_created_controlnet_leaves_sampling_bit_identical(host):
    controlnet = create_controlnet_from_unet(host.model.model.diffusion_model.state_dict())
    save_controlnet(controlnet, str(host.models_dir / "created_zero.safetensors"))
    control = host.suite_controlnet("created_zero.safetensors")
    positive, negative = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, control, host.image, 1.0, 0.0, 1.0, "balanced"
    )
    assert torch.equal(host.sample(positive, negative), host.sample(host.positive, host.negative))
