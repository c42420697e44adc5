"""Our controls under the two common tiling nodes, which hand a control each tile's part of the
hint in two ways (controlnet_core/comfy_control.py's docstring):

- Ultimate SD Upscale (ssitu/ComfyUI_UltimateSDUpscale, usdu_utils.py `crop_controlnet`) samples
  tile by tile: it copies the control and replaces `cond_hint_original` with the tile's crop;
- Tiled Diffusion (shiimizu/ComfyUI-TiledDiffusion, tiled_diffusion.py `process_controlnet` and
  its tile loop) batches tiles: it resizes `cond_hint_original` to the whole latent's pixel size,
  crops it per tile, sets the crops as `cond_hint`, one row per latent row, and calls the control
  on the tiles' latents.

Each emulation below does what that node's code does to a control, no more. The reference is the
same control configured directly with each tile's crop of the image and run on that tile's
latent: what a tile must get.
"""

import pytest
import torch

from .conftest import CONTEXT_DIM, IMAGE_SIDE, LATENT_SIDE, TOKENS
from .test_control_object import COND_OR_UNCOND, STRENGTH, prepared
from .test_foreign_control import ACROSS_IMPLEMENTATIONS
from .test_t2i_adapter_options import comfy_adapter, entries
from .test_sdxl import ADM_CHANNELS
from .test_sdxl import CONTEXT_DIM as SDXL_CONTEXT_DIM
from .test_union_control import CANNY, DEPTH, union_conditions

CANVAS = 2 * LATENT_SIDE  # latent side of the picture the tiles are cut from
TILE = LATENT_SIDE  # latent side of a tile
PIXELS = IMAGE_SIDE // LATENT_SIDE  # image pixels per latent pixel
TILES = [(0, 0), (TILE // 2, TILE)]  # (top, left) of two overlapping tiles, in latent pixels


def canvas_inputs(seed, context_dim=CONTEXT_DIM, y_dim=None):
    """One step's inputs for the whole picture: one latent twice (uncond row, cond row), as
    ComfyUI batches CFG, a sigma, and each row's text context (and y, for SDXL)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, 4, CANVAS, CANVAS, generator=gen) * 5).repeat(2, 1, 1, 1)
    cond = {"c_crossattn": torch.randn(2, TOKENS, context_dim, generator=gen)}
    if y_dim is not None:
        cond["y"] = torch.randn(2, y_dim, generator=gen)
    return x, torch.full((2,), 4.0), cond


def canvas_images(seed, count=1):
    """`count` ComfyUI IMAGEs of the whole picture's pixel size."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, CANVAS * PIXELS, CANVAS * PIXELS, 3, generator=gen) for _ in range(count)]


def pixel_crop(image, top, left):
    """A tile's crop of a ComfyUI IMAGE (BHWC)."""
    return image[:, top * PIXELS : (top + TILE) * PIXELS, left * PIXELS : (left + TILE) * PIXELS]


def latent_crop(tensor, top, left):
    return tensor[..., top : top + TILE, left : left + TILE]


def hint_crop(hint, top, left):
    """A tile's crop of a hint (BCHW) at the whole latent's pixel size."""
    return hint[..., top * PIXELS : (top + TILE) * PIXELS, left * PIXELS : (left + TILE) * PIXELS]


def step(control, x, sigma, cond):
    """One step's residuals: every entry of the control dict (a T2I-Adapter's are 'input' ones)."""
    with torch.no_grad():
        out = control.get_control(x, sigma, cond, len(COND_OR_UNCOND), {"cond_or_uncond": COND_OR_UNCOND})
    return [tensor for _, _, tensor in entries(out)]


def ultimate_sd_upscale_tile(control, top, left):
    """USDU's crop_controlnet for one tile: a copy of the control whose `cond_hint_original` (BCHW)
    is cropped to the tile (already the tile's size here, so its resize changes nothing)."""
    tile = control.copy()
    tile.cond_hint_original = hint_crop(control.cond_hint_original, top, left)
    return tile


def tiled_diffusion_step(control, x, sigma, cond, tiles=TILES, kept=None):
    """Tiled Diffusion's call for one batch of tiles: the control's hint resized to the whole
    latent's pixel size (its upscale method, centre crop), repeated to the latent's rows and
    cropped per tile into `cond_hint` (kept in `kept` per batch of tiles and set again at later
    steps, as its control_params); the tiles' latents, every other input repeated to their rows
    (its repeat_to_batch_size); then the control's get_control."""
    import comfy.utils

    if kept is not None and tuple(tiles) in kept:
        control.cond_hint = kept[tuple(tiles)]
    else:
        hint = comfy.utils.common_upscale(
            control.cond_hint_original, x.shape[-1] * PIXELS, x.shape[-2] * PIXELS, control.upscale_algorithm, "center"
        )
        hint = control.preprocess_image(hint).expand(x.shape[0], -1, -1, -1)
        control.cond_hint = torch.cat([hint_crop(hint, top, left) for top, left in tiles])
        if kept is not None:
            kept[tuple(tiles)] = control.cond_hint
    x_tiles = torch.cat([latent_crop(x, top, left) for top, left in tiles])
    sigma_tiles = sigma.repeat(len(tiles))
    cond_tiles = {key: value.repeat(len(tiles), *[1] * (value.ndim - 1)) for key, value in cond.items()}
    return step(control, x_tiles, sigma_tiles, cond_tiles)


def per_tile(make_control, x, sigma, cond, tiles=TILES):
    """The reference: for each tile, `make_control(top, left)` (configured with the tile's crop,
    prepared) run on that tile's latent; the tiles' rows in Tiled Diffusion's order."""
    results = [step(make_control(top, left), latent_crop(x, top, left), sigma, cond) for top, left in tiles]
    # a residual of one row (a T2I-Adapter's on one image) is broadcast to the tile's rows
    return [torch.cat([r.expand(x.shape[0], *r.shape[1:]) for r in rows]) for rows in zip(*results, strict=True)]


def assert_close(got, expected, what):
    assert got and len(got) == len(expected), what
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        scale = e.abs().max().item()
        assert scale > 1e-3, f"{what} residual {i}: no effect to compare"
        assert (g - e).abs().max().item() <= ACROSS_IMPLEMENTATIONS * scale, f"{what} residual {i}"


# --- the node's output, before sampling prepares it ------------------------------------------

def applied(host, control_net, image, mode="balanced", **options):
    """The control our Apply ControlNet node puts on the positive conditioning (not prepared)."""
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, control_net, image, STRENGTH, 0.0, 1.0, mode, **options
    )
    return positive[0][1]["control"]


def applied_union(host, union_sdxl, images):
    """Our Apply ControlNet Union node with depth (weight 0.6) and, when given, canny (1.3)."""
    conditions = union_conditions(host, *[(image, kind, weight) for image, kind, weight in zip(images, (DEPTH, CANNY), (0.6, 1.3))])
    positive, _ = host.node("CNS_ApplyControlNetUnion").apply(
        union_sdxl.positive, union_sdxl.negative, union_sdxl.control_net, conditions, STRENGTH, 0.0, 1.0, "balanced"
    )
    return positive[0][1]["control"]


# --- Ultimate SD Upscale ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["balanced", "controlnet_more_important"])
def test_ultimate_sd_upscale_tiles_give_each_tile_its_crop(host, files, mode):
    (image,) = canvas_images(1)
    control_net = host.suite_controlnet(files.original)
    control = applied(host, control_net, image, mode)
    x, sigma, cond = canvas_inputs(2)
    for top, left in TILES:
        got = step(prepared(host, ultimate_sd_upscale_tile(control, top, left)), latent_crop(x, top, left), sigma, cond)
        expected = step(prepared(host, applied(host, control_net, pixel_crop(image, top, left), mode)), latent_crop(x, top, left), sigma, cond)
        assert_close(got, expected, f"tile {top, left}")


@pytest.mark.parametrize("conditions", [1, 2])
def test_ultimate_sd_upscale_tiles_give_each_union_condition_its_crop(host, union_sdxl, conditions):
    """One condition, and two fused: every condition's image follows the crop USDU makes of the
    hint it sees (before, the conditions' whole images reached every tile)."""
    images = canvas_images(3, conditions)
    control = applied_union(host, union_sdxl, images)
    x, sigma, cond = canvas_inputs(4, SDXL_CONTEXT_DIM, ADM_CHANNELS)
    for top, left in TILES:
        tile = prepared(host, ultimate_sd_upscale_tile(control, top, left), union_sdxl.model)
        got = step(tile, latent_crop(x, top, left), sigma, cond)
        direct = applied_union(host, union_sdxl, [pixel_crop(image, top, left) for image in images])
        expected = step(prepared(host, direct, union_sdxl.model), latent_crop(x, top, left), sigma, cond)
        assert_close(got, expected, f"tile {top, left}")


def test_ultimate_sd_upscale_tiles_of_a_builtin_loaded_controlnet_with_options(host, files):
    """A ComfyUI-loaded ControlNet in our wrapper (a soft mode) hands the crop to ComfyUI's object."""
    (image,) = canvas_images(5)
    builtin_net = host.builtin_controlnet(files.original)
    control = applied(host, builtin_net, image, "prompt_more_important")
    x, sigma, cond = canvas_inputs(6)
    for top, left in TILES:
        got = step(prepared(host, ultimate_sd_upscale_tile(control, top, left)), latent_crop(x, top, left), sigma, cond)
        direct = applied(host, builtin_net, pixel_crop(image, top, left), "prompt_more_important")
        assert_close(got, step(prepared(host, direct), latent_crop(x, top, left), sigma, cond), f"tile {top, left}")


# --- Tiled Diffusion ----------------------------------------------------------------------------

def test_tiled_diffusion_batches_give_each_tile_its_crop(host, files):
    (image,) = canvas_images(7)
    control_net = host.suite_controlnet(files.original)
    x, sigma, cond = canvas_inputs(8)
    got = tiled_diffusion_step(prepared(host, applied(host, control_net, image)), x, sigma, cond)
    expected = per_tile(lambda top, left: prepared(host, applied(host, control_net, pixel_crop(image, top, left))), x, sigma, cond)
    assert_close(got, expected, "ours")


def test_tiled_diffusion_batches_give_what_comfyuis_own_controlnet_gives(host, files):
    """The same tiling on ComfyUI's built-in ControlNet (ComfyUI's Apply ControlNet node) and ours,
    balanced, on the same weights."""
    (image,) = canvas_images(9)
    x, sigma, cond = canvas_inputs(10)
    ours = tiled_diffusion_step(prepared(host, applied(host, host.suite_controlnet(files.original), image)), x, sigma, cond)
    positive, _ = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        host.positive, host.negative, host.builtin_controlnet(files.original), image, STRENGTH, 0.0, 1.0
    )
    builtin = tiled_diffusion_step(prepared(host, positive[0][1]["control"]), x, sigma, cond)
    assert_close(ours, builtin, "ours against the built-in")


def test_tiled_diffusion_batches_give_each_tile_its_crop_of_two_union_conditions(host, union_sdxl):
    images = canvas_images(11, 2)
    x, sigma, cond = canvas_inputs(12, SDXL_CONTEXT_DIM, ADM_CHANNELS)
    got = tiled_diffusion_step(prepared(host, applied_union(host, union_sdxl, images), union_sdxl.model), x, sigma, cond)

    def direct(top, left):
        return prepared(host, applied_union(host, union_sdxl, [pixel_crop(image, top, left) for image in images]), union_sdxl.model)

    assert_close(got, per_tile(direct, x, sigma, cond), "fused conditions")


@pytest.mark.parametrize("kind", ["builtin-loaded ControlNet", "T2I-Adapter"])
def test_tiled_diffusion_batches_of_comfyuis_objects_in_our_wrapper(host, files, kind):
    """In a soft mode our wrapper runs ComfyUI's object (foreign_control): it gets the tiles too."""
    (image,) = canvas_images(13)
    control_net = host.builtin_controlnet(files.original) if kind == "builtin-loaded ControlNet" else comfy_adapter(host)
    x, sigma, cond = canvas_inputs(14)
    got = tiled_diffusion_step(prepared(host, applied(host, control_net, image, "prompt_more_important")), x, sigma, cond)

    def direct(top, left):
        return prepared(host, applied(host, control_net, pixel_crop(image, top, left), "prompt_more_important"))

    assert_close(got, per_tile(direct, x, sigma, cond), kind)


def test_tiled_diffusion_tiles_are_encoded_once_each_per_run(host, files):
    """Two batches of tiles, one after the other at each of three steps: the hint encoder runs
    once per batch of tiles, on its rows."""
    (image,) = canvas_images(15)
    control_net = host.suite_controlnet(files.original)
    control = prepared(host, applied(host, control_net, image))
    x, sigma, cond = canvas_inputs(16)
    model = control_net.loaded.model
    encoded, original = [], model.encode_hint
    model.encode_hint = lambda hint: encoded.append(hint.shape[0]) or original(hint)
    kept = {}
    try:
        for _ in range(3):
            for tiles in (TILES[:1], TILES):
                tiled_diffusion_step(control, x, sigma, cond, tiles, kept)
    finally:
        del model.encode_hint
        control.cleanup()
    assert encoded == [2, 4]  # each batch's rows: 2 per tile (uncond, cond)


# --- what cannot follow the tiles is refused ----------------------------------------------------

MASK_REFUSAL = (
    "this control has a mask, and a tiling node (such as Ultimate SD Upscale or Tiled Diffusion) has cut its image "
    "into tiles: the mask cannot follow the tiles, so every tile would get the whole mask. Remove the mask from this "
    "control, or sample without tiles"
)


@pytest.mark.parametrize("tiler", ["Ultimate SD Upscale", "Tiled Diffusion"])
def test_a_masked_control_under_a_tiling_node_is_refused(host, files, tiler):
    (image,) = canvas_images(17)
    mask = torch.ones(1, CANVAS * PIXELS, CANVAS * PIXELS)
    control = applied(host, host.suite_controlnet(files.original), image, mask=mask)
    x, sigma, cond = canvas_inputs(18)
    with pytest.raises(host.errors.ControlNetError) as error:
        if tiler == "Ultimate SD Upscale":
            step(prepared(host, ultimate_sd_upscale_tile(control, *TILES[0])), latent_crop(x, *TILES[0]), sigma, cond)
        else:
            tiled_diffusion_step(prepared(host, control), x, sigma, cond)
    assert str(error.value) == MASK_REFUSAL
    # untiled, the same control runs, and so does a copy whose hint is an equal clone (some packs
    # clone conditionings), with the same residuals
    expected = step(prepared(host, control.copy()), x, sigma, cond)
    cloned = control.copy()
    cloned.cond_hint_original = control.cond_hint_original.clone()
    assert_close(step(prepared(host, cloned), x, sigma, cond), expected, "cloned hint")


def test_a_masked_control_whose_hint_batch_is_sliced_is_not_a_tile(host, files):
    """Packs that sample a batch image by image give each run one image of the hint batch
    (`cond_hint_original[i:i+1]`): the images are the hint's, the mask still fits, and the
    control runs as one configured with that image."""
    images = torch.cat(canvas_images(21, 2))
    mask = torch.zeros(1, CANVAS * PIXELS, CANVAS * PIXELS)
    mask[..., : CANVAS * PIXELS // 2] = 1.0
    control_net = host.suite_controlnet(files.original)
    x, sigma, cond = canvas_inputs(22)
    one_by_one = applied(host, control_net, images, mask=mask).copy()
    one_by_one.cond_hint_original = one_by_one.cond_hint_original[1:2]
    expected = step(prepared(host, applied(host, control_net, images[1:2], mask=mask)), x, sigma, cond)
    assert_close(step(prepared(host, one_by_one), x, sigma, cond), expected, "second image")


@pytest.mark.parametrize("mode", ["controlnet_more_important", "cfg_resolution_weighting"])
def test_a_cond_only_mode_under_tiled_diffusion_is_refused(host, files, mode):
    (image,) = canvas_images(19)
    x, sigma, cond = canvas_inputs(20)
    with pytest.raises(host.errors.ControlNetError) as error:
        tiled_diffusion_step(prepared(host, applied(host, host.suite_controlnet(files.original), image, mode)), x, sigma, cond)
    assert str(error.value) == (
        f"control mode '{mode}' runs the control on the conditional rows only, and Tiled Diffusion batches the rows "
        "of several tiles together in an order that does not tell them apart: use balanced or prompt_more_important "
        "with Tiled Diffusion (Ultimate SD Upscale, which samples tile by tile, takes every mode)"
    )
