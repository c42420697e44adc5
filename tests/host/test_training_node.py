"""Training inside ComfyUI: the U-Net we train through is the function ComfyUI samples with, the
create node's file reads in ComfyUI's built-in loader, and the train node trains the tiny model
for a few steps (as ComfyUI runs nodes: in inference mode), leaving the base model untouched."""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import load_file

from tests.host.conftest import CONTEXT_DIM, IMAGE_SIDE, LATENT_SIDE, TOKENS


@pytest.fixture(scope="module", autouse=True)
def nodes_write_to_the_test_folder(host):
    """The nodes write to the first models/controlnet folder: make it the test's, not ComfyUI's."""
    paths = host.folder_paths.folder_names_and_paths["controlnet"][0]
    before = list(paths)
    host.folder_paths.add_model_folder_path("controlnet", str(host.models_dir), is_default=True)
    yield
    paths[:] = before


@pytest.fixture(scope="module")
def comfy_host(host):
    return importlib.import_module(f"{host.pack.__name__}.training.comfy_host")


def encoded_dataset(host, path, examples: int = 4) -> str:
    data_module = importlib.import_module(f"{host.pack.__name__}.training.data")
    gen = torch.Generator().manual_seed(5)
    data_module.EncodedDataset(
        latents=torch.randn(examples, 4, LATENT_SIDE, LATENT_SIDE, generator=gen),
        hints=torch.rand(examples, 3, IMAGE_SIDE, IMAGE_SIDE, generator=gen),
        contexts=torch.randn(examples, TOKENS, CONTEXT_DIM, generator=gen),
        empty_context=torch.randn(TOKENS, CONTEXT_DIM, generator=gen),
    ).save(str(path))
    return str(path)


def test_the_unet_we_train_through_is_comfyuis(host, comfy_host):
    unet, schedule = comfy_host.base_from_comfy(host.model, torch.device("cpu"))
    theirs = host.model.model.diffusion_model
    assert set(unet.state_dict()) == set(theirs.state_dict())
    controlnet = comfy_host.controlnet_from_comfy(host.model, 3)
    with torch.no_grad():  # give the new ControlNet's zero convs values so the residuals are not 0
        for module in [*controlnet.zero_convs, controlnet.middle_block_out, controlnet.input_hint_block[-1:]]:
            for p in module.parameters():
                p.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, LATENT_SIDE, LATENT_SIDE, generator=gen)
    t = torch.tensor([700.0, 15.0])
    context = torch.randn(2, TOKENS, CONTEXT_DIM, generator=gen)
    hint = torch.rand(2, 3, IMAGE_SIDE, IMAGE_SIDE, generator=gen)
    unet_module = importlib.import_module(f"{host.pack.__name__}.training.unet")

    with torch.no_grad():
        residuals = controlnet(x, hint, t, context)
        for control in (None, "all", "middle"):
            make = lambda: None if control is None else unet_module.control_dict([r.clone() for r in residuals], control == "middle")  # noqa: E731
            ours = unet(x, t, context, control=make())
            expected = theirs(x, t, context, control=make(), transformer_options={})
            assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max(), control
    # ComfyUI's SD1.5 sigmas are the scaled-linear schedule the paper trained with
    noise = importlib.import_module(f"{host.pack.__name__}.training.noise")
    assert torch.allclose(schedule.alphas_cumprod, noise.NoiseSchedule.stable_diffusion().alphas_cumprod, rtol=1e-5)
    assert schedule.prediction == "eps"


def test_create_node_file_loads_in_the_builtin_loader(host):
    with torch.inference_mode():
        control, file_name = host.node("CNS_CreateControlNet").create(host.model, 3, "node_created", True)
    ours = load_file(str(host.models_dir / file_name))
    builtin = host.builtin_controlnet(file_name).control_model.state_dict()
    assert file_name == "node_created.safetensors" and control is not None
    assert set(builtin) == {k.removeprefix("control_model.") for k in ours}
    assert all(torch.equal(builtin[k.removeprefix("control_model.")], v) for k, v in ours.items())
    with pytest.raises(ValueError, match="exists: choose another file name or turn on overwrite"):
        host.node("CNS_CreateControlNet").create(host.model, 3, "node_created", False)


def test_train_node_trains_the_tiny_model_inside_comfyui(host, tmp_path):
    with torch.inference_mode():
        host.node("CNS_CreateControlNet").create(host.model, 3, "to_train", True)
    data = encoded_dataset(host, tmp_path / "encoded.safetensors")
    base_before = {k: v.clone() for k, v in host.model.model.diffusion_model.state_dict().items()}
    node = host.node("CNS_TrainControlNet")
    arguments = dict(model=host.model, start_from="to_train.safetensors", dataset=data, output_name="trained_tiny",
                     batch_size=2, learning_rate=1e-3, prompt_dropout=0.5, resolution=64, seed=0, checkpoint_every=2)

    with torch.inference_mode():  # as ComfyUI executes nodes
        control, curve, file_name = node.train(steps=3, **arguments)

    assert file_name == "trained_tiny.safetensors"
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3 and 0 <= curve.min() and curve.max() <= 1
    saved = load_file(str(host.models_dir / file_name))
    assert all(torch.count_nonzero(saved[f"control_model.zero_convs.{i}.0.weight"]) > 0 for i in range(12))
    builtin = host.builtin_controlnet(file_name).control_model.state_dict()
    assert all(torch.equal(builtin[k.removeprefix("control_model.")], v) for k, v in saved.items())
    base_after = host.model.model.diffusion_model.state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # the locked base, bit-identical
    checkpoint = torch.load(host.models_dir / "trained_tiny.train.ckpt", weights_only=True)
    assert checkpoint["step"] == 3 and len(checkpoint["losses"]) == 3

    positive, negative = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, control, host.image, 1.0, 0.0, 1.0, "balanced"
    )
    assert not torch.equal(host.sample(positive, negative), host.sample(host.positive, host.negative))

    with torch.inference_mode():  # resuming continues the same run to the new total
        node.train(steps=5, **arguments)
    resumed = torch.load(host.models_dir / "trained_tiny.train.ckpt", weights_only=True)
    assert resumed["step"] == 5 and torch.equal(resumed["losses"][:3], checkpoint["losses"])
