"""The training command on a dataset FOLDER: ComfyUI loads the checkpoint's VAE and text encoder,
the folder is encoded once (cached beside the output), and training runs on it.

The checkpoint is the tiny random SD1.5 file the workflow tests use (TAESD as its VAE, a
full-size CLIP text encoder)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from training import cli
from training.data import EncodedDataset, read_triples
from training.session import OutputFiles
from workflows import random_models

RESOLUTION = 64
NAMES = ("red", "blue", "green")


@pytest.fixture(scope="module")
def checkpoint(host, tmp_path_factory) -> str:
    return random_models.write_sd15_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny_sd15.safetensors"))


def dataset_folder(root, with_conditions: bool = True):
    rng = np.random.default_rng(4)
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        cv2.imwrite(str(root / "images" / f"{name}.png"), rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
        if i < 2:  # the third has no prompt file: its prompt is ""
            (root / "images" / f"{name}.txt").write_text(f"a {name} square", encoding="utf-8")
    if with_conditions:
        (root / "conditions").mkdir()
        for name in NAMES:
            cv2.imwrite(str(root / "conditions" / f"{name}.png"), rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    return root


def train_args(checkpoint: str, data, output, *extra: str) -> list[str]:
    return ["train", "--base", checkpoint, "--data", str(data), "--output", str(output), "--steps", "2",
            "--batch-size", "2", "--resolution", str(RESOLUTION), "--device", "cpu", "--checkpoint-every", "1", *extra]


def test_a_dataset_folder_is_encoded_with_the_checkpoints_vae_and_clip_then_trained(checkpoint, tmp_path):
    data = dataset_folder(tmp_path / "dataset")
    output = tmp_path / "out" / "control_mine.safetensors"
    output.parent.mkdir()

    assert cli.main(train_args(checkpoint, data, output)) == 0

    files = OutputFiles.beside(str(output))
    encoded = EncodedDataset.load(files.encoded)
    assert len(encoded) == len(NAMES)
    # independently: the same crops through ComfyUI's VAE and CLIP loaded from the same file
    from training.comfy_host import load_checkpoint_with_comfy

    model, clip, vae = load_checkpoint_with_comfy(checkpoint)
    triples = read_triples(data, RESOLUTION)
    pixels = torch.from_numpy(np.stack([(t.image + 1) / 2 for t in triples]))
    latents = model.model.latent_format.process_in(vae.encode(pixels)).float()
    assert torch.allclose(encoded.latents, latents, atol=1e-5)
    hints = torch.from_numpy(np.stack([t.condition for t in triples])).permute(0, 3, 1, 2)
    assert torch.equal(encoded.hints, hints)
    prompt_of = {t.name: t.prompt for t in triples}
    assert prompt_of == {"red": "a red square", "blue": "a blue square", "green": ""}
    empty = clip.encode_from_tokens(clip.tokenize(""))
    assert torch.allclose(encoded.empty_context, empty[0].float(), atol=1e-5)
    blue = [t.name for t in triples].index("blue")
    assert torch.allclose(encoded.contexts[blue], clip.encode_from_tokens(clip.tokenize("a blue square"))[0].float(), atol=1e-5)

    trained = cli.loader.load_controlnet(str(output)).model
    assert any(torch.count_nonzero(conv[0].weight) > 0 for conv in trained.zero_convs)  # it trained
    checkpoint_state = torch.load(files.checkpoint, weights_only=True)
    assert checkpoint_state["step"] == 2

    # resuming reads the cached encoding (it does not encode the folder again)
    (data / "images" / "red.png").unlink()
    assert cli.main(train_args(checkpoint, data, output, "--steps", "3")) == 0  # the last --steps counts
    assert len(EncodedDataset.load(files.encoded)) == len(NAMES)
    assert torch.load(files.checkpoint, weights_only=True)["step"] == 3


def test_a_folder_without_conditions_uses_the_named_annotator(checkpoint, tmp_path):
    data = dataset_folder(tmp_path / "dataset", with_conditions=False)
    output = tmp_path / "control_canny.safetensors"

    assert cli.main(train_args(checkpoint, data, output, "--annotator", "canny", "--steps", "1")) == 0

    assert sorted(p.stem for p in (data / "conditions").iterdir()) == sorted(NAMES)
    assert EncodedDataset.load(OutputFiles.beside(str(output)).encoded).hints.shape == (len(NAMES), 3, RESOLUTION, RESOLUTION)


def test_a_checkpoint_without_vae_or_text_encoder_is_refused_with_the_fix(host, tmp_path):
    unet_only = tmp_path / "unet_only.safetensors"
    from safetensors.torch import save_file

    tensors = random_models.sd15_checkpoint_state_dict()
    save_file({k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}, str(unet_only))
    data = dataset_folder(tmp_path / "dataset")

    with pytest.raises(ValueError) as error:
        cli.main(train_args(str(unet_only), data, tmp_path / "control.safetensors"))
    assert str(error.value) == (
        f"'{unet_only}' has no text encoder and VAE: encoding a dataset folder needs a full checkpoint (U-Net, VAE and "
        "text encoder in one file, e.g. v1-5-pruned-emaonly.safetensors)"
    )


def test_a_file_comfyui_cannot_recognise_is_refused_with_the_fix(host, tmp_path):
    not_sd = tmp_path / "not_sd.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.weight": torch.zeros(2)}, str(not_sd))
    data = dataset_folder(tmp_path / "dataset")

    with pytest.raises(ValueError) as error:
        cli.main(train_args(str(not_sd), data, tmp_path / "control.safetensors"))
    message = str(error.value)
    assert message.startswith(f"ComfyUI does not recognise '{not_sd}' as a checkpoint it can load (")
    assert message.endswith(
        "encoding a dataset folder needs a full SD1.x / SD2.x / SDXL checkpoint (U-Net, VAE and text encoder in one file)"
    )
