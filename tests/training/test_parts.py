"""The pieces training is built from, each against an independent reference."""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from controlnet_core import load_controlnet
from tests.training.tiny import CONTEXT_DIM, DIFFUSERS_UNET, LATENT_SIDE, TOKENS, base_unet, dataset
from training import cli, toy
from training.create import new_controlnet
from training.data import EncodedDataset, encode_triples, read_triples
from training.files import atomic_write, atomic_write_bytes
from training.noise import NoiseSchedule, ddim_sample
from training.plot import HEIGHT, WIDTH, moving_average, save_loss_curve
from training.unet import control_dict, load_unet


def test_unet_matches_diffusers_on_converted_weights():
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = base_unet(seed=4)
    config = {**DIFFUSERS_UNET, "sample_size": LATENT_SIDE, "in_channels": 4, "out_channels": 4}
    theirs = UNet2DConditionModel(**config).eval()
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, dict(theirs.config)), strict=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, LATENT_SIDE, LATENT_SIDE, generator=gen)
    t = torch.tensor([800, 40])
    context = torch.randn(2, TOKENS, CONTEXT_DIM, generator=gen)
    residuals = [torch.randn(2, 64, s, s, generator=gen) for s in (8, 8, 4, 4)] + [torch.randn(2, 64, 4, 4, generator=gen)]

    with torch.no_grad():
        for control in (None, control_dict(residuals)):
            mine = ours(x, t, context, control=control)
            extra = {} if control is None else {
                "down_block_additional_residuals": residuals[:-1], "mid_block_additional_residual": residuals[-1]}
            expected = theirs(x, t, context, **extra).sample
            assert (mine - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_noise_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    ours = NoiseSchedule.stable_diffusion("v")
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-6)
    assert torch.allclose(ours.target(x0, noise, t), ref.get_velocity(x0, noise, t), atol=1e-6)
    linear = DDPMScheduler(beta_schedule="linear", num_train_timesteps=1000)
    assert torch.allclose(NoiseSchedule.linear().alphas_cumprod.float(), linear.alphas_cumprod, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_with_a_perfect_model_returns_the_data(prediction):
    schedule = NoiseSchedule.linear(prediction=prediction)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))

    def oracle(x_t, t):  # the output that makes x0 the prediction at every step
        abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1).float()
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return eps if prediction == "eps" else abar.sqrt() * eps - (1 - abar).sqrt() * x0

    assert torch.allclose(ddim_sample(oracle, noise, schedule, steps=10), x0, atol=1e-4)


def test_hint_encoder_without_downsampling_for_pixel_space_models():
    unet = base_unet()
    controlnet = new_controlnet(unet.state_dict(), hint_channels=1, hint_downsampling=0)
    hint = torch.rand(2, 1, LATENT_SIDE, LATENT_SIDE)
    assert controlnet.encode_hint(hint).shape == (2, 64, LATENT_SIDE, LATENT_SIDE)
    assert controlnet.config.hint_encoder_channels == (16,)
    with pytest.raises(ValueError, match="hint_channels must be >= 1"):
        new_controlnet(unet.state_dict(), hint_channels=0)


def write_folder(root, names=("a", "b"), conditions=True):
    (root / "images").mkdir(parents=True)
    if conditions:
        (root / "conditions").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
        cv2.rectangle(image, (20, 10), (60, 40), (255, 255, 255), -1)
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        if conditions:
            cv2.imwrite(str(root / "conditions" / f"{name}.png"), np.full((48, 80, 3), 255, np.uint8))
    (root / "images" / f"{names[0]}.txt").write_text("a red house\n", encoding="utf-8")


def test_dataset_folder_reads_triples_and_encodes_them(tmp_path):
    write_folder(tmp_path)
    triples = read_triples(tmp_path, resolution=32)
    assert [t.name for t in triples] == ["a", "b"] and [t.prompt for t in triples] == ["a red house", ""]
    assert triples[0].image.shape == (32, 32, 3) and -1 <= triples[0].image.min() and triples[0].image.max() <= 1
    assert np.all(triples[0].condition == 1.0)

    encoded = encode_triples(
        triples,
        encode_images=lambda images: torch.nn.functional.avg_pool2d(images, 8),
        encode_prompts=lambda prompts: torch.tensor([[[float(len(p))] * 4] * 2 for p in prompts]),
    )
    assert encoded.latents.shape == (2, 3, 4, 4) and encoded.hints.shape == (2, 3, 32, 32)
    assert encoded.contexts[:, 0, 0].tolist() == [11.0, 0.0] and torch.all(encoded.empty_context == 0)
    encoded.save(str(tmp_path / "enc.safetensors"))
    loaded = EncodedDataset.load(str(tmp_path / "enc.safetensors"))
    assert torch.equal(loaded.latents, encoded.latents) and torch.equal(loaded.contexts, encoded.contexts)


def test_dataset_folder_errors_name_the_fix(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "conditions" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"no condition map in .* for: b.png"):
        read_triples(tmp_path, 32)
    with pytest.raises(ValueError, match="has no 'images/' folder"):
        read_triples(tmp_path / "nothing", 32)


def test_an_annotator_makes_the_conditions(tmp_path):
    from annotators.canny import canny

    write_folder(tmp_path, conditions=False)
    triples = read_triples(tmp_path, resolution=48, annotator="canny")
    image = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / "a.png")), cv2.COLOR_BGR2RGB)
    expected = read_triples.__globals__["square_crop"](canny(image), 48)
    expected = np.repeat(expected[..., None], 3, axis=2) if expected.ndim == 2 else expected
    assert (tmp_path / "conditions" / "a.png").exists()
    assert np.array_equal(triples[0].condition, expected.astype(np.float32) / 255)


def test_loss_curve_png_and_moving_average(tmp_path):
    losses = [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert moving_average(losses, 2) == pytest.approx([1.0, 0.75, 0.375, 0.1875, 0.09375])
    save_loss_curve(str(tmp_path / "loss.png"), losses)
    image = cv2.imread(str(tmp_path / "loss.png"))
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert np.any(np.all(image == (180, 119, 31), axis=2))  # the curve's colour is drawn


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write_bytes(str(path), b"first")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would make it, not owner-only

    def interrupted(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(b"sec")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), interrupted)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_cli_creates_and_trains_from_a_checkpoint_file(tmp_path, capsys):
    unet = base_unet(seed=2)
    checkpoint = {f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    checkpoint["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # other parts of a full checkpoint
    save_file(checkpoint, str(tmp_path / "base.safetensors"))
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in load_unet(str(tmp_path / "base.safetensors")).state_dict().items())

    assert cli.main(["create", "--base", str(tmp_path / "base.safetensors"), "--output", str(tmp_path / "new.safetensors")]) == 0
    created = load_controlnet(str(tmp_path / "new.safetensors")).model.state_dict()
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in created.items() if k in unet.state_dict())

    dataset().save(str(tmp_path / "enc.safetensors"))
    train = ["train", "--base", str(tmp_path / "base.safetensors"), "--data", str(tmp_path / "enc.safetensors"),
             "--controlnet", str(tmp_path / "new.safetensors"), "--output", str(tmp_path / "mine.safetensors"),
             "--batch-size", "2", "--learning-rate", "1e-3", "--checkpoint-every", "1"]
    assert cli.main([*train, "--steps", "2"]) == 0
    assert cli.main([*train, "--steps", "3"]) == 0  # resumes from mine.train.ckpt
    state = torch.load(tmp_path / "mine.train.ckpt", weights_only=True)
    assert state["step"] == 3 and (tmp_path / "mine.loss.png").exists()
    trained = load_file(str(tmp_path / "mine.safetensors"))
    assert torch.equal(trained["control_model.middle_block_out.0.weight"], state["controlnet"]["middle_block_out.0.weight"])
    assert "resuming from" in capsys.readouterr().err



def test_cli_without_comfyui_says_a_dataset_folder_needs_it(tmp_path, monkeypatch):
    """Encoding a folder needs ComfyUI's VAE and text encoder (tests/host/test_training_cli.py
    covers the folder path with ComfyUI); without one the command says why and what to do."""
    import workflows.headless

    monkeypatch.setattr(workflows.headless, "find_comfyui", lambda: (None, "no ComfyUI checkout found; looked at X"))
    with pytest.raises(SystemExit) as error:
        cli.main(["train", "--base", str(tmp_path / "base.safetensors"), "--data", str(tmp_path),
                  "--output", str(tmp_path / "x.safetensors")])
    assert str(error.value) == (
        f"error: '{tmp_path}' is a dataset folder, and encoding its images and prompts needs ComfyUI (for the "
        "checkpoint's VAE and text encoder): no ComfyUI checkout found; looked at X. Set COMFYUI_PATH to a ComfyUI "
        "checkout, or pass an encoded dataset (.safetensors) written by the Train ControlNet node"
    )


def test_toy_metric_recovers_the_drawn_shapes_exactly():
    images, masks, colours = toy.draw(64, np.random.default_rng(0))
    segmented = toy.shape_mask(images, colours)
    assert torch.equal(segmented, masks[:, 0] > 0.5)
    assert torch.all(toy.iou(segmented, masks[:, 0] > 0.5) == 1.0)
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2], b[0, 1:3] = True, True  # 8 and 8 pixels sharing 4
    assert toy.iou(a, b).item() == pytest.approx(4 / 12)
    assert set(colours.tolist()) <= set(range(len(toy.COLOURS)))
    json.dumps(toy.ToyOptions().__dict__)  # the options are recorded in results.json


def test_toy_experiment_runs_end_to_end_and_starts_exactly_at_the_base(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "EVAL_SAMPLES", 4)  # a smoke run: few samples, few sampling steps
    monkeypatch.setattr(toy, "DDIM_STEPS", 4)
    options = toy.ToyOptions(base_steps=2, base_batch_size=4, control_steps=2, control_batch_size=4, eval_every=1,
                             control_examples=8)
    summary = toy.run(options, tmp_path, tmp_path / "plot.png", log=lambda message: None)

    assert summary["step0_equals_base"] is True
    assert summary["iou"][0] == summary["base_iou"] and summary["steps"] == [0, 1, 2]
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == [0, 1, 2]
    assert cv2.imread(str(tmp_path / "plot.png")) is not None
    reloaded, _ = toy.load_base(tmp_path / "toy_base.safetensors")
    assert reloaded.state_dict().keys() == toy.UNet(toy.base_config()).state_dict().keys()
