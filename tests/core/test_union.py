"""ControlNet Union / ProMax against diffusers' ControlNetUnionModel: same weights, same residuals.

A random diffusers union model (tiny SDXL shape) is saved with save_pretrained and loaded through
our `load_union`; diffusers' forward is the oracle (it follows xinsir's training code, sample
token and batch-axis attention included). The real-size layout is checked on the meta device
against diffusers' own model and the parameter counts measured in the reference notes.
"""

import pytest
import torch
from diffusers import ControlNetUnionModel

from controlnet_core import ControlNetFormatError
from controlnet_core.files import WeightFile, open_weights
from controlnet_core.union import UNION_CONTROL_TYPES, UnionControlNet, load_union
from tests.core.tiny import DIFFUSERS_CONFIGS, LATENT, inputs, randomize
from tests.core.test_parity_diffusers import assert_residuals_equal  # 1e-5 of each residual's scale

TOKEN_CHANNELS = DIFFUSERS_CONFIGS["SDXL"]["block_out_channels"][0]  # tokens are model_channels wide
UNION = 6
PROMAX = 8


def tiny_union_config(num_control_type: int) -> dict:
    return {
        **DIFFUSERS_CONFIGS["SDXL"],
        "num_control_type": num_control_type,
        "num_trans_channel": TOKEN_CHANNELS,
        "num_proj_channel": TOKEN_CHANNELS,
    }


@pytest.fixture(scope="module", params=[UNION, PROMAX], ids=["union", "promax"])
def saved_union(request, tmp_path_factory):
    """(diffusers model, path of its saved weights, our model loaded from them)."""
    reference = randomize(ControlNetUnionModel(**tiny_union_config(request.param)), seed=7).eval()
    folder = tmp_path_factory.mktemp(f"union{request.param}")
    reference.save_pretrained(folder)
    path = str(folder / "diffusion_pytorch_model.safetensors")
    return reference, path, load_union(open_weights(path))


def second_hint(batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    return torch.rand(batch, 3, LATENT * 8, LATENT * 8, generator=gen)


def run_diffusers(reference: ControlNetUnionModel, hints, types, scales):
    x, _, t, context, extra = inputs("SDXL")
    control_type = torch.zeros(x.shape[0], reference.config.num_control_type)
    control_type[:, types] = 1.0  # the pipeline's multi-hot vector, one row per batch entry
    with torch.no_grad():
        down, mid = reference(
            x, t, context, controlnet_cond=hints, control_type=control_type, control_type_idx=types,
            conditioning_scale=scales, added_cond_kwargs=extra, return_dict=False,
        )
    return [*down, mid]


def run_ours(model: UnionControlNet, reference: ControlNetUnionModel, hints, types, scales):
    x, _, t, context, extra = inputs("SDXL")
    # y = [pooled text, sinusoidal size ids], built with diffusers' own projection (the host's job)
    ids = reference.add_time_proj(extra["time_ids"].flatten()).reshape(x.shape[0], -1)
    y = torch.cat([extra["text_embeds"], ids], dim=-1)
    with torch.no_grad():
        return model(x, list(zip(hints, types)), t, context, y=y, scales=scales)


def test_one_condition_matches_diffusers(saved_union):
    reference, _, model = saved_union
    _, hint, *_ = inputs("SDXL")
    last_type = reference.config.num_control_type - 1  # segment (union) / repaint (promax)

    ours = run_ours(model, reference, [hint], [last_type], [1.0])

    assert_residuals_equal(ours, run_diffusers(reference, [hint], [last_type], [1.0]))
    # The type matters: another type gives other residuals (so the comparison above can fail).
    other = run_ours(model, reference, [hint], [UNION_CONTROL_TYPES["depth"]], [1.0])
    assert (other[0] - ours[0]).abs().max() > 1e-3 * ours[0].abs().max()


@pytest.mark.parametrize("scales", [[1.0, 1.0], [0.6, 1.3]])
def test_two_conditions_match_diffusers(saved_union, scales):
    reference, _, model = saved_union
    _, hint, *_ = inputs("SDXL")
    hints = [hint, second_hint()]
    types = [UNION_CONTROL_TYPES["openpose"], UNION_CONTROL_TYPES["canny/lineart/anime_lineart/mlsd"]]

    assert_residuals_equal(run_ours(model, reference, hints, types, scales), run_diffusers(reference, hints, types, scales))


def test_single_condition_scale_scales_residuals(saved_union):
    reference, _, model = saved_union
    _, hint, *_ = inputs("SDXL")
    assert_residuals_equal(run_ours(model, reference, [hint], [1], [0.4]), run_diffusers(reference, [hint], [1], [0.4]))


# --- cached fusion (what the control object runs) ---------------------------------------------

TWO_TYPES = [UNION_CONTROL_TYPES["depth"], UNION_CONTROL_TYPES["canny/lineart/anime_lineart/mlsd"]]


def cached_forward(model: UnionControlNet, reference: ControlNetUnionModel, hints, types, weights):
    """`forward` on the hints' cached fusion (`encode_conditions`), on run_ours' inputs."""
    x, _, t, context, extra = inputs("SDXL")
    ids = reference.add_time_proj(extra["time_ids"].flatten()).reshape(x.shape[0], -1)
    y = torch.cat([extra["text_embeds"], ids], dim=-1)
    with torch.no_grad():
        encoded = model.encode_conditions(hints, types, weights)
        return model(x, None, t, context, y=y, encoded_hint=encoded, control_types=types)


@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.6, 1.3]])
def test_cached_fusion_of_two_conditions_equals_the_reference_forward(saved_union, weights):
    """One image per condition: fusing each image on its own is the reference's computation
    (the batch-axis attention over identical rows is the row itself)."""
    reference, _, model = saved_union
    _, hint, *_ = inputs("SDXL")
    hints = [hint[:1], second_hint(1)]

    got = cached_forward(model, reference, hints, TWO_TYPES, weights)

    assert_residuals_equal(got, run_ours(model, reference, hints, TWO_TYPES, weights))
    # The weights act inside the fusion: other weights give other residuals.
    other = cached_forward(model, reference, hints, TWO_TYPES, [0.2, 2.0])
    assert (other[0] - got[0]).abs().max() > 1e-3 * got[0].abs().max()


def test_cached_fusion_fuses_each_image_with_the_same_image_of_the_other_hints(saved_union):
    """Two images per hint (the second hint a single image, broadcast): row i is image i fused
    alone."""
    _, _, model = saved_union
    _, hint, *_ = inputs("SDXL")
    single = second_hint(1)
    with torch.no_grad():
        both = model.encode_conditions([hint, single], TWO_TYPES, [0.6, 1.3])
        alone = [model.encode_conditions([hint[i : i + 1], single], TWO_TYPES, [0.6, 1.3]) for i in range(2)]
    assert torch.equal(both, torch.cat(alone))
    assert (alone[0] - alone[1]).abs().max() > 0  # distinct images, distinct rows


def test_cached_fusion_refuses_hint_batches_that_cannot_pair(saved_union):
    _, _, model = saved_union
    _, hint, *_ = inputs("SDXL")  # 2 images
    with pytest.raises(ValueError, match=r"^hint batches of \[2, 3\] images: each must have 1 or 3$"):
        model.encode_conditions([hint, second_hint(3)], TWO_TYPES)


def test_promax_types_are_refused_by_the_six_type_model(tmp_path):
    reference = ControlNetUnionModel(**tiny_union_config(UNION))
    reference.save_pretrained(tmp_path)
    model = load_union(open_weights(str(tmp_path / "diffusion_pytorch_model.safetensors")))
    x, hint, t, context, _ = inputs("SDXL")

    with pytest.raises(ValueError, match=r"tile \(6\) is out of range.*ProMax"):
        model(x, [(hint, UNION_CONTROL_TYPES["tile"])], t, context, y=torch.zeros(2, DIFFUSERS_CONFIGS["SDXL"]["projection_class_embeddings_input_dim"]))


# --- keys -------------------------------------------------------------------------------------

# The union-only keys of the published files (reference formats_algorithms.md §1.8), and the
# parameter of our module each one must land in.
PUBLISHED_UNION_KEYS = {
    "task_embedding": "task_embedding",
    "transformer_layes.0.attn.in_proj_weight": "transformer_layes.0.attn.in_proj.weight",
    "transformer_layes.0.attn.in_proj_bias": "transformer_layes.0.attn.in_proj.bias",
    "transformer_layes.0.attn.out_proj.weight": "transformer_layes.0.attn.out_proj.weight",
    "transformer_layes.0.ln_1.weight": "transformer_layes.0.ln_1.weight",
    "transformer_layes.0.ln_2.bias": "transformer_layes.0.ln_2.bias",
    "transformer_layes.0.mlp.c_fc.weight": "transformer_layes.0.mlp.c_fc.weight",
    "transformer_layes.0.mlp.c_proj.weight": "transformer_layes.0.mlp.c_proj.weight",
    "spatial_ch_projs.weight": "spatial_ch_projs.weight",
    "control_add_embedding.linear_1.weight": "control_add_embedding.linear_1.weight",
    "control_add_embedding.linear_2.bias": "control_add_embedding.linear_2.bias",
}


def test_published_union_keys_land_in_their_modules(saved_union):
    _, path, _ = saved_union
    weights = open_weights(path)
    assert set(PUBLISHED_UNION_KEYS) <= set(weights.shapes)

    ours = load_union(weights).state_dict()

    for file_key, our_key in PUBLISHED_UNION_KEYS.items():
        assert torch.equal(ours[our_key], weights[file_key]), file_key


# Parameter counts measured in the reference notes (§1.4) on diffusers' ControlNetUnionModel
# with the xinsir SDXL config.
MEASURED_PARAMS = {UNION: 1_257_287_280, PROMAX: 1_257_943_280}
XINSIR_SDXL_CONFIG = dict(  # config.json of xinsir/controlnet-union-sdxl-1.0 (SDXL base shape)
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


@pytest.mark.parametrize("num_types", [UNION, PROMAX])
def test_full_size_published_layout_loads_strictly(num_types):
    """Every key and shape of a full-size file maps onto our model, nothing left over (meta)."""
    with torch.device("meta"):
        reference = ControlNetUnionModel(**XINSIR_SDXL_CONFIG, num_control_type=num_types)
    file_sd = reference.state_dict()
    weights = WeightFile("controlnet-union-sdxl-1.0.safetensors", {k: tuple(v.shape) for k, v in file_sd.items()}, file_sd.__getitem__)

    model = load_union(weights, torch.float16, "meta")

    assert model.config.family == "SDXL"
    assert model.union.num_control_types == num_types
    assert sum(p.numel() for p in model.parameters()) == MEASURED_PARAMS[num_types]


def saved_file_without(saved_union, tmp_path, key: str) -> str:
    from safetensors.torch import load_file, save_file

    _, path, _ = saved_union
    sd = load_file(path)
    del sd[key]
    out = tmp_path / "union_broken.safetensors"
    save_file(sd, out)
    return str(out)


@pytest.mark.parametrize(
    "removed, named",
    [
        ("transformer_layes.0.attn.in_proj_weight", "transformer_layes.0.attn.in_proj_weight"),
        ("spatial_ch_projs.bias", "spatial_ch_projs.bias"),
        ("controlnet_down_blocks.2.bias", "zero_convs.2.0.bias"),  # shared part: original name
    ],
)
def test_missing_key_is_a_clear_error(saved_union, tmp_path, removed, named):
    path = saved_file_without(saved_union, tmp_path, removed)
    with pytest.raises(ControlNetFormatError, match=rf"'union_broken.safetensors' lacks the weight '{named}'"):
        load_union(open_weights(path))


def test_unknown_key_is_a_clear_error(saved_union, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path, _ = saved_union
    sd = load_file(path)
    sd["transformer_layes.0.attn.extra_gate"] = torch.zeros(3)
    save_file(sd, tmp_path / "union_extra.safetensors")
    with pytest.raises(ControlNetFormatError, match="'union_extra.safetensors' has weights a ControlNet Union does not have"):
        load_union(open_weights(str(tmp_path / "union_extra.safetensors")))
