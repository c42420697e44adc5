"""Restore Brightness inside ComfyUI: per image and broadcast batches, and a map of another size
fitted as the ControlNet fits its hint (centre crop, then resize), each checked against the
annotator called directly on a map prepared by hand."""

from __future__ import annotations

import pytest
import torch

from .test_annotator_nodes import PHOTOS, Pack

GENERATED = PHOTOS.flip(0)  # stands in for sampled images: two photos, not the maps' own


@pytest.fixture(scope="module")
def pack(host) -> Pack:
    return Pack(host)


def luminance_maps(pack) -> torch.Tensor:
    (maps,) = pack.run("CNS_ImageLuminance", image=PHOTOS, gamma_correction=1.0, lab_order="a1111", resolution=0)
    return maps


def restored(pack, images: torch.Tensor, maps: torch.Tensor, brightness: str) -> torch.Tensor:
    return torch.stack([torch.from_numpy(pack.module("annotators").restore_brightness(image.numpy(), m.numpy(), brightness))
                        for image, m in zip(images, maps)])


@pytest.mark.parametrize("brightness", ["luminance", "intensity"])
def test_one_map_per_image_and_one_map_for_all(pack, brightness):
    maps = luminance_maps(pack)
    (result,) = pack.run("CNS_RestoreBrightness", image=GENERATED, brightness_map=maps, brightness=brightness)
    assert result.shape == GENERATED.shape and result.dtype == torch.float32
    assert torch.equal(result, restored(pack, GENERATED, maps, brightness))
    assert not torch.equal(result[0], result[1])
    (shared,) = pack.run("CNS_RestoreBrightness", image=GENERATED, brightness_map=maps[:1], brightness=brightness)
    assert torch.equal(shared, restored(pack, GENERATED, maps[:1].expand(2, -1, -1, -1), brightness))


def test_a_map_twice_the_size_is_averaged_down(pack):
    """Bilinear halving samples between each 2x2 block's pixels: their mean."""
    maps = luminance_maps(pack)
    doubled = maps.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    doubled[:, ::2, ::2] = (doubled[:, ::2, ::2] + 0.2).clamp(0, 1)  # not a plain upscale: the mean is what counts
    block_mean = doubled.reshape(2, maps.shape[1], 2, maps.shape[2], 2, 3).mean(dim=(2, 4))
    (result,) = pack.run("CNS_RestoreBrightness", image=GENERATED, brightness_map=doubled, brightness="intensity")
    expected = restored(pack, GENERATED, block_mean, "intensity")
    assert torch.allclose(result, expected, rtol=0, atol=1 / 255 + 1e-6)  # a mean on a .5 may round either way
    assert (result != expected).float().mean() < 0.01


def test_a_wider_map_is_centre_cropped(pack):
    maps = luminance_maps(pack)
    margin = 16
    sides = torch.rand(2, maps.shape[1], margin, 3, generator=torch.Generator().manual_seed(0))
    wider = torch.cat([sides, maps, sides.flip(2)], dim=2)
    (result,) = pack.run("CNS_RestoreBrightness", image=GENERATED, brightness_map=wider, brightness="luminance")
    assert torch.equal(result, restored(pack, GENERATED, maps, "luminance"))


def test_a_batch_of_maps_that_does_not_fit_is_named(pack):
    maps = luminance_maps(pack)
    with pytest.raises(ValueError) as error:
        pack.run("CNS_RestoreBrightness", image=GENERATED, brightness_map=torch.cat([maps, maps[:1]]), brightness="luminance")
    assert str(error.value) == "brightness_map has 3 images for 2 generated images; give one map, or one per image"


def test_a_colour_map_is_refused(pack):
    """A1111 reads the map's first channel; a colour image there (a wrong link) would restore its
    red channel as brightness, silently."""
    maps = luminance_maps(pack)
    coloured = maps.clone()
    coloured[0, 5, 7, 1] = 0.5
    with pytest.raises(ValueError) as error:
        pack.run("CNS_RestoreBrightness", image=GENERATED, brightness_map=coloured, brightness="luminance")
    assert str(error.value) == ("the brightness map has differing colour channels: it must be the gray map Image "
                                "Luminance or Image Intensity makes, not a colour image")
