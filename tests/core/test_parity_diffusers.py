"""Our ControlNet against diffusers' ControlNetModel: same weights, same residuals.

Two independent paths per family:
- diffusers layout: a random diffusers model saved with save_pretrained, loaded by our loader
  (our key table) and compared with diffusers' forward;
- original layout: a random model of ours saved with the `control_model.` prefix, converted by
  diffusers' own single-file converter into a diffusers model, compared with our loader's model.
"""

import pytest
import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint
from safetensors.torch import save_file

from controlnet_core import ControlNet, load_controlnet
from tests.core.tiny import DIFFUSERS_CONFIGS, inputs, randomize

FAMILIES = list(DIFFUSERS_CONFIGS)
# fp32 through ~40 layers: residuals of size ~10 agree to ~2e-5 absolute, i.e. ~1e-6 of their
# scale. The bound is 1e-5 of each residual's largest magnitude.
RELATIVE_TOLERANCE = 1e-5


def diffusers_residuals(model: ControlNetModel, family: str) -> list[torch.Tensor]:
    x, hint, t, context, extra = inputs(family)
    with torch.no_grad():
        down, mid = model(
            x, t, encoder_hidden_states=context, controlnet_cond=hint, added_cond_kwargs=extra or None, return_dict=False
        )
    return [*down, mid]


def our_residuals(model: ControlNet, diffusers_model: ControlNetModel, family: str) -> list[torch.Tensor]:
    x, hint, t, context, extra = inputs(family)
    y = None
    if extra:  # SDXL: y = [pooled text, sinusoidal size ids], built with diffusers' own projection
        ids = diffusers_model.add_time_proj(extra["time_ids"].flatten()).reshape(x.shape[0], -1)
        y = torch.cat([extra["text_embeds"], ids], dim=-1)
    with torch.no_grad():
        return model(x, hint, t, context, y=y)


def assert_residuals_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"residual {i}"
        assert b.abs().max() > 1e-3, f"residual {i} is trivially small; the test would prove nothing"
        error = (a - b).abs().max().item()
        assert error <= RELATIVE_TOLERANCE * b.abs().max().item(), f"residual {i}: max error {error:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_layout_matches_diffusers(family, tmp_path):
    reference = randomize(ControlNetModel(**DIFFUSERS_CONFIGS[family]), seed=3).eval()
    reference.save_pretrained(tmp_path / "cn")

    loaded = load_controlnet(str(tmp_path / "cn"))

    assert loaded.layout == "diffusers"
    assert loaded.family == family
    assert_residuals_equal(our_residuals(loaded.model, reference, family), diffusers_residuals(reference, family))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_original_layout_matches_diffusers(family, suffix, tmp_path):
    # Our random model defines the original-layout weights; its config comes from diffusers' shape.
    shape_source = ControlNetModel(**DIFFUSERS_CONFIGS[family])
    shapes_ref = load_controlnet_shapes(shape_source, tmp_path)
    ours = randomize(ControlNet(shapes_ref), seed=5).eval()
    sd = {f"control_model.{k}": v.contiguous() for k, v in ours.state_dict().items()}
    path = tmp_path / f"control_tiny{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": sd}, path)
    else:
        save_file(sd, path)

    reference = ControlNetModel(**DIFFUSERS_CONFIGS[family]).eval()
    converted = convert_controlnet_checkpoint(sd, {"layers_per_block": 2})
    if family == "SDXL":  # the converter leaves label_emb out; diffusers' own table names it
        for diffusers_key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            converted[diffusers_key] = sd["control_model." + ldm_key]
    reference.load_state_dict(converted, strict=True)

    loaded = load_controlnet(str(path))
    assert loaded.layout == "original"
    assert loaded.family == family
    ours = our_residuals(loaded.model, reference, family)
    assert_residuals_equal(ours, diffusers_residuals(reference, family))

    # The same weights through the diffusers layout give the very same model.
    reference.save_pretrained(tmp_path / "same_weights")
    again = our_residuals(load_controlnet(str(tmp_path / "same_weights")).model, reference, family)
    assert all(torch.equal(a, b) for a, b in zip(ours, again))


def load_controlnet_shapes(diffusers_model: ControlNetModel, tmp_path):
    """Our config for a diffusers model's shape, derived through our loader from its own file."""
    diffusers_model.save_pretrained(tmp_path / "shape")
    return load_controlnet(str(tmp_path / "shape")).config
