"""End-to-end sampling through ComfyUI's sampler with our nodes, against ComfyUI's built-in
ControlNet nodes on the same files."""

import pytest
import torch

# |ours − built-in| ≤ 1e-4 · |built-in − no control| (largest element): the two implementations
# differ only in float rounding (different attention kernels), far below the control's effect.
RELATIVE_TO_EFFECT = 1e-4
# The random control must move the latent visibly, or the comparison would prove nothing.
MIN_EFFECT = 1e-2


def apply_ours(host, positive, negative, control_net, strength=1.0, start=0.0, end=1.0, mode="balanced", image=None):
    image = host.image if image is None else image
    return host.node("CNS_ApplyControlNet").apply(positive, negative, control_net, image, strength, start, end, mode)


def apply_builtin(host, positive, negative, control_net, image=None):
    image = host.image if image is None else image
    return host.nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, image, 1.0, 0.0, 1.0)


def test_zero_convs_leave_the_sampled_latent_unchanged(host, files):
    plain = host.sample(host.positive, host.negative)
    with_control = host.sample(*apply_ours(host, host.positive, host.negative, host.suite_controlnet(files.zero)))
    assert torch.equal(with_control, plain)


@pytest.mark.parametrize("layout", ["original", "bare", "diffusers"])
def test_balanced_full_strength_equals_builtin(host, files, layout):
    plain = host.sample(host.positive, host.negative)
    # ComfyUI cannot detect a tiny diffusers file: its reference is the same weights in the
    # original layout (converted by diffusers' own converter in the fixture).
    builtin_file = files.original if layout == "diffusers" else getattr(files, layout)
    builtin_net = host.builtin_controlnet(builtin_file)
    builtin = host.sample(*apply_builtin(host, host.positive, host.negative, builtin_net, host.wide_image))
    ours_net = host.suite_controlnet(getattr(files, layout))
    ours = host.sample(*apply_ours(host, host.positive, host.negative, ours_net, image=host.wide_image))

    assert ours_net.loaded.layout == {"original": "original", "bare": "original-bare", "diffusers": "diffusers"}[layout]
    effect = (builtin - plain).abs().max().item()
    assert effect > MIN_EFFECT
    assert (ours - builtin).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def test_hint_is_encoded_once_per_sampling_run(host, files):
    control_net = host.suite_controlnet(files.original)
    calls = {"encode_hint": 0, "forward": 0}
    model = control_net.loaded.model
    original_encode, original_forward = model.encode_hint, model.forward

    def encode_hint(*args, **kwargs):
        calls["encode_hint"] += 1
        return original_encode(*args, **kwargs)

    def forward(*args, **kwargs):
        calls["forward"] += 1
        return original_forward(*args, **kwargs)

    model.encode_hint, model.forward = encode_hint, forward
    try:
        steps = 4
        host.sample(*apply_ours(host, host.positive, host.negative, control_net), steps=steps)
        # positive and negative share the control, so each step is one batched call
        assert calls == {"encode_hint": 1, "forward": steps}
        host.sample(*apply_ours(host, host.positive, host.negative, control_net), steps=steps)
        assert calls == {"encode_hint": 2, "forward": 2 * steps}  # a new run encodes afresh
    finally:
        del model.encode_hint, model.forward


def test_stack_of_two_equals_two_chained_apply_nodes(host, files):
    first, second = host.suite_controlnet(files.original), host.suite_controlnet(files.second)
    chained = apply_ours(host, host.positive, host.negative, first, 0.8, 0.0, 1.0, "balanced")
    chained = apply_ours(host, *chained, second, 0.6, 0.0, 0.7, "controlnet_more_important")

    entry = host.node("CNS_ControlStackEntry")
    (stack,) = entry.add(first, host.image, 0.8, 0.0, 1.0, "balanced")
    (stack,) = entry.add(second, host.image, 0.6, 0.0, 0.7, "controlnet_more_important", control_stack=stack)
    stacked = host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, stack)

    plain = host.sample(host.positive, host.negative)
    chained_latent, stacked_latent = host.sample(*chained), host.sample(*stacked)
    assert (chained_latent - plain).abs().max() > MIN_EFFECT
    assert torch.equal(stacked_latent, chained_latent)


def test_family_mismatch_fails_before_sampling(host):
    sdxl_like = host.controlnet_state_dict(
        seed=21, channel_mult=(1, 2, 2), transformer_depth=(0, 1, 1), adm_in_channels=32, use_linear_projection=True
    )
    name = host.write("tiny_sdxl.safetensors", sdxl_like)
    control_net = host.suite_controlnet(name)
    assert control_net.loaded.family == "SDXL"

    unet = host.model.model.diffusion_model
    calls = []
    unet.forward = lambda *args, **kwargs: calls.append(1)
    try:
        with pytest.raises(host.errors.FamilyMismatchError) as error:
            host.sample(*apply_ours(host, host.positive, host.negative, control_net))
    finally:
        del unet.forward
    assert str(error.value) == "this ControlNet is for SDXL, the model is SD1.x: pick a ControlNet made for SD1.x"
    assert calls == []  # the U-Net never ran


def test_difference_file_through_the_loader_with_model(host, files):
    """A "difference" file stores ControlNet − base U-Net for the copied encoder; loaded with the
    model it must give the same ControlNet (hence the same sampled latent) as the full file."""
    base = {k: v.float() for k, v in host.model.model.diffusion_model.state_dict().items()}
    difference = {
        f"control_model.{k}": (v - base[k]) if k in base else v for k, v in files.weights.items()
    }
    assert sum(k[len("control_model."):] in base for k in difference) > 100  # the encoder is stored as deltas
    difference["difference"] = torch.zeros(1)
    name = host.write("tiny_difference.safetensors", difference)

    from_difference = host.node("CNS_ControlNetLoaderWithModel").load(host.model, name)[0]
    assert from_difference.loaded.layout == "difference"
    full = host.suite_controlnet(files.original)
    plain = host.sample(host.positive, host.negative)
    expected = host.sample(*apply_ours(host, host.positive, host.negative, full))
    got = host.sample(*apply_ours(host, host.positive, host.negative, from_difference))
    effect = (expected - plain).abs().max().item()
    assert effect > MIN_EFFECT
    assert (got - expected).abs().max().item() <= RELATIVE_TO_EFFECT * effect
