"""T2I-Adapters: every layout loads, and the features equal independent implementations.

- diffusers layout: a random diffusers T2IAdapter (full, light, SDXL) saved with save_pretrained,
  loaded by `load_t2i_adapter`, features compared with diffusers' forward;
- original TencentARC layout: the same weights renamed by the published key patterns, written
  out here (ComfyUI's `load_t2i_adapter` prefix table for diffusers -> original; the module names
  of comfy/t2i_adapter/adapter.py), compared with diffusers' forward;
- published full-size layouts: key sets written from the reference patterns load strictly on the
  meta device and have the parameter counts measured in the reference notes;
- ComfyUI's own adapter module (when a ComfyUI checkout is found): the variants diffusers lacks
  (3x3 kernels, conv downsampling) and the placement of features in ComfyUI's control dict.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch
from diffusers import T2IAdapter as DiffusersT2IAdapter
from safetensors.torch import save_file

from controlnet_core import ControlNetFormatError
from controlnet_core.files import WeightFile, open_weights
from controlnet_core.t2i_adapter import FULL, INJECTION, LIGHT, comfy_control, features_in, load_t2i_adapter
from tests.core.tiny import randomize

RELATIVE_TOLERANCE = 1e-5
HINT_SIZE = 128  # 16x16 after the SD unshuffle (8), 8x8 after the SDXL one (16)
LATENT_PIXELS = 8  # image pixels per latent pixel (the SD VAE)
TINY = {
    "full": dict(channels=[32, 64, 128, 128], num_res_blocks=2, adapter_type="full_adapter"),
    "light": dict(channels=[32, 64, 128], num_res_blocks=2, adapter_type="light_adapter"),  # 4 levels
    "xl": dict(channels=[32, 64, 128, 128], num_res_blocks=2, adapter_type="full_adapter_xl", downscale_factor=16),
}
EXPECTED = {"full": (FULL, "SD1.x"), "light": (LIGHT, "SD1.x"), "xl": (FULL, "SDXL")}


def hint(channels: int = 3, batch: int = 2, seed: int = 4) -> torch.Tensor:
    return torch.rand(batch, channels, HINT_SIZE, HINT_SIZE, generator=torch.Generator().manual_seed(seed))


def diffusers_adapter(variant: str, seed: int = 3, in_channels: int = 3) -> DiffusersT2IAdapter:
    return randomize(DiffusersT2IAdapter(in_channels=in_channels, **TINY[variant]), seed).eval()


def assert_features_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"feature {i}"
        assert b.abs().max() > 1e-3, f"feature {i} is trivially small; the test would prove nothing"
        error = (a - b).abs().max().item()
        assert error <= RELATIVE_TOLERANCE * b.abs().max().item(), f"feature {i}: max error {error:.2e}"


def features(model, image):
    with torch.no_grad():
        return model(image)


@pytest.mark.parametrize("variant", list(TINY))
def test_diffusers_layout_matches_diffusers(variant, tmp_path):
    reference = diffusers_adapter(variant)
    reference.save_pretrained(tmp_path)

    model = load_t2i_adapter(open_weights(str(tmp_path / "diffusion_pytorch_model.safetensors")))

    assert (model.config.kind, model.config.family) == EXPECTED[variant]
    assert_features_equal(features(model, hint()), features(reference, hint()))


# --- the original TencentARC layout, written from the published patterns ----------------------


def to_original_full(diffusers_sd: dict, blocks_per_level: int = 2) -> dict:
    """ComfyUI's diffusers -> original prefix table (comfy/controlnet.py load_t2i_adapter), which
    assumes the published 2 blocks per level: adapter.body.i.resnets.j. -> body.(2i+j).,
    adapter.body.i. -> body.(2i)., adapter. -> ''."""
    assert blocks_per_level == 2
    out = {}
    for key, value in diffusers_sd.items():
        key = re.sub(r"^adapter\.body\.(\d+)\.resnets\.(\d+)\.", lambda m: f"body.{2 * int(m[1]) + int(m[2])}.", key)
        key = re.sub(r"^adapter\.body\.(\d+)\.", lambda m: f"body.{2 * int(m[1])}.", key)
        out[key.removeprefix("adapter.")] = value
    return out


def to_original_light(diffusers_sd: dict) -> dict:
    """Adapter_light names (comfy/t2i_adapter/adapter.py): body[i] is an `extractor` with in_conv,
    body (a Sequential of ResnetBlock_light: block1, block2) and out_conv."""
    out = {}
    for key, value in diffusers_sd.items():
        key = re.sub(r"^adapter\.body\.(\d+)\.resnets\.(\d+)\.", r"body.\1.body.\2.", key)
        out[key.removeprefix("adapter.")] = value
    return out


@pytest.mark.parametrize("variant, wrapped", [("full", False), ("full", True), ("light", False), ("xl", False)])
def test_original_layout_matches_diffusers(variant, wrapped, tmp_path):
    reference = diffusers_adapter(variant, seed=5)
    rename = to_original_light if variant == "light" else to_original_full
    sd = rename(reference.state_dict())
    assert not any(k.startswith("adapter.") for k in sd)
    path = tmp_path / f"t2iadapter_{variant}_sd14v1.pth"
    torch.save({"adapter": sd} if wrapped else sd, path)  # some exports wrap the dict in "adapter"

    model = load_t2i_adapter(open_weights(str(path)))

    assert (model.config.kind, model.config.family) == EXPECTED[variant]
    assert_features_equal(features(model, hint()), features(reference, hint()))


def test_sketch_adapter_takes_the_mean_of_an_rgb_hint(tmp_path):
    reference = diffusers_adapter("full", in_channels=1)
    reference.save_pretrained(tmp_path)
    model = load_t2i_adapter(open_weights(str(tmp_path / "diffusion_pytorch_model.safetensors")))
    gray = hint(channels=1)

    assert model.config.hint_channels == 1
    assert_features_equal(features(model, gray.expand(-1, 3, -1, -1)), features(reference, gray))


# --- published full-size layouts --------------------------------------------------------------

SD15_CHANNELS = (320, 640, 1280, 1280)  # TencentARC Adapter default


def published_full_shapes(cin: int, ksize: int = 1, use_conv: bool = False, xl: bool = False) -> dict:
    """Key -> shape of a TencentARC full adapter (2 blocks per level, sk=True), from the patterns
    in the reference notes (§1.6): conv_in, body.N.block1 (3x3) / block2 (k x k), body.N.in_conv
    where the width changes, body.N.down_opt.op where a level downsamples with use_conv."""
    shapes = {"conv_in.weight": (320, cin, 3, 3), "conv_in.bias": (320,)}
    downsampling = (2,) if xl else (1, 2, 3)
    for level, width in enumerate(SD15_CHANNELS):
        previous = SD15_CHANNELS[max(level - 1, 0)]
        for j in range(2):
            n = 2 * level + j
            shapes |= {f"body.{n}.block1.weight": (width, width, 3, 3), f"body.{n}.block1.bias": (width,)}
            shapes |= {f"body.{n}.block2.weight": (width, width, ksize, ksize), f"body.{n}.block2.bias": (width,)}
            if j == 0 and previous != width:
                shapes |= {f"body.{n}.in_conv.weight": (width, previous, ksize, ksize), f"body.{n}.in_conv.bias": (width,)}
            if j == 0 and use_conv and level in downsampling:
                shapes |= {f"body.{n}.down_opt.op.weight": (previous, previous, 3, 3), f"body.{n}.down_opt.op.bias": (previous,)}
    return shapes


def published_light_shapes(cin: int = 192, blocks: int = 4) -> dict:
    shapes = {}
    for level, width in enumerate(SD15_CHANNELS):
        inner, previous = width // 4, cin if level == 0 else SD15_CHANNELS[level - 1]
        shapes |= {f"body.{level}.in_conv.weight": (inner, previous, 1, 1), f"body.{level}.in_conv.bias": (inner,)}
        shapes |= {f"body.{level}.out_conv.weight": (width, inner, 1, 1), f"body.{level}.out_conv.bias": (width,)}
        for k in range(blocks):
            for conv in ("block1", "block2"):
                shapes |= {f"body.{level}.body.{k}.{conv}.weight": (inner, inner, 3, 3), f"body.{level}.body.{k}.{conv}.bias": (inner,)}
    return shapes


# Parameter counts measured in the reference notes (§1.6) on the ComfyUI / TencentARC modules.
PUBLISHED = {
    "sd15-full": (published_full_shapes(192), 77_369_280, "SD1.x"),
    "sd15-full-use_conv": (published_full_shapes(192, use_conv=True), 96_725_120, "SD1.x"),
    "sdxl-full": (published_full_shapes(768, xl=True), 79_028_160, "SDXL"),
    "sd15-light": (published_light_shapes(), 18_689_200, "SD1.x"),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_layout_loads_strictly(name):
    shapes, measured_params, family = PUBLISHED[name]
    weights = WeightFile(f"{name}.pth", shapes, lambda key: torch.empty(shapes[key], device="meta"))

    model = load_t2i_adapter(weights, torch.float16, "meta")  # every key used, every weight found

    assert set(model.state_dict()) == set(shapes)
    assert sum(p.numel() for p in model.parameters()) == measured_params
    assert model.config.family == family


def test_missing_key_is_a_clear_error(tmp_path):
    sd = to_original_full(diffusers_adapter("full").state_dict())
    del sd["body.3.block2.bias"]
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "t2i_broken.safetensors")

    with pytest.raises(ControlNetFormatError, match="'t2i_broken.safetensors' lacks the weight 'body.3.block2.bias'"):
        load_t2i_adapter(open_weights(str(tmp_path / "t2i_broken.safetensors")))


def test_unknown_variant_weight_is_a_clear_error(tmp_path):
    sd = to_original_full(diffusers_adapter("full").state_dict())
    sd["body.0.skep.weight"] = torch.zeros(32, 32, 1, 1)  # sk=False adapters: a skip conv per block
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "t2i_skep.safetensors")

    with pytest.raises(ControlNetFormatError, match=r"'t2i_skep.safetensors' has weights this T2I-Adapter does not have \(body.0.skep.weight"):
        load_t2i_adapter(open_weights(str(tmp_path / "t2i_skep.safetensors")))


# --- ComfyUI's residual convention ------------------------------------------------------------

# After which U-Net input blocks the features are added (reference §1.6: A1111 t2i_injection),
# and how many input blocks the U-Net has.
INJECTED_AFTER = {"SD1.x": ((2, 5, 8, 11), 12, False), "SDXL": ((3, 5, 8), 9, True)}


@pytest.mark.parametrize("variant", ["full", "xl"])
def test_comfy_control_places_features_after_the_right_blocks(variant):
    model = load_t2i_adapter_from(diffusers_adapter(variant))
    feats = features(model, hint())
    control = comfy_control(feats, model.config.family)
    blocks, num_input_blocks, middle = INJECTED_AFTER[model.config.family]

    # The U-Net pops one 'input' entry after each input block, from the end of the list.
    popped = [control["input"].pop() for _ in range(num_input_blocks)]

    assert [i for i, c in enumerate(popped) if c is not None] == list(blocks)
    for block, feature in zip(blocks, feats):
        assert popped[block] is feature
    assert all(c is None for c in control["input"])  # nothing left that a block would miss
    assert (control.get("middle") == [feats[-1]]) if middle else ("middle" not in control)


@pytest.mark.parametrize("variant", ["full", "light", "xl"])
def test_features_in_inverts_comfy_control_and_divisors_match_the_feature_sizes(variant):
    model = load_t2i_adapter_from(diffusers_adapter(variant))
    feats = features(model, hint())
    family = model.config.family
    assert [id(f) for f in features_in(comfy_control(feats, family))] == [id(f) for f in feats]
    latent_side = HINT_SIZE // LATENT_PIXELS
    assert [latent_side // f.shape[-1] for f in feats] == list(INJECTION[family].latent_divisors)


def load_t2i_adapter_from(reference: DiffusersT2IAdapter):
    sd = reference.state_dict()
    return load_t2i_adapter(WeightFile("adapter.safetensors", {k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__))


# --- ComfyUI's own T2I-Adapter module ---------------------------------------------------------


def comfy_adapter_module():
    candidates = [os.environ.get("COMFYUI_PATH"), str(Path.home() / "comfy" / "ComfyUI")]
    for root in filter(None, candidates):
        path = Path(root) / "comfy" / "t2i_adapter" / "adapter.py"
        if path.is_file():  # a self-contained file (imports torch only)
            spec = importlib.util.spec_from_file_location("comfy_t2i_adapter_reference", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    pytest.skip("no ComfyUI checkout ($COMFYUI_PATH or ~/comfy/ComfyUI): ComfyUI's adapter module is the oracle here")


COMFY_VARIANTS = {
    "full-k3-conv": dict(cin=192, ksize=3, use_conv=True, xl=False),
    "full-k1-pool": dict(cin=192, ksize=1, use_conv=False, xl=False),
    "xl-k1-conv": dict(cin=768, ksize=1, use_conv=True, xl=True),
    "light": None,
}


@pytest.mark.parametrize("name", list(COMFY_VARIANTS))
def test_comfy_adapter_module_gives_the_same_control(name, tmp_path):
    comfy = comfy_adapter_module()
    options = COMFY_VARIANTS[name]
    if options is None:
        reference = comfy.Adapter_light(channels=[32, 64, 128, 128], nums_rb=2, cin=192)
    else:
        reference = comfy.Adapter(channels=[32, 64, 128, 128], nums_rb=2, sk=True, **options)
    randomize(reference, seed=9).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "adapter.safetensors")

    model = load_t2i_adapter(open_weights(str(tmp_path / "adapter.safetensors")))
    ours = comfy_control(features(model, hint()), model.config.family)
    theirs = features(reference, hint())

    assert set(ours) == set(theirs)
    for key in theirs:
        assert [t is None for t in ours[key]] == [t is None for t in theirs[key]], key
        assert_features_equal([t for t in ours[key] if t is not None], [t for t in theirs[key] if t is not None])
    assert_features_equal(features_in(ours), features_in(theirs))
