"""OneFormer (ControlNet 1.1's seg annotators) against transformers' OneFormerModel.

Oracle: transformers 5.23's `OneFormerModel` with a tiny random configuration (Swin backbone,
MSDeformAttn pixel decoder, task-conditioned masked-attention decoder), never from_pretrained.
transformers' conversion script (src/transformers/models/oneformer/convert_to_hf_oneformer.py,
read at huggingface/transformers 08196ab2) checks its port against the original detectron2 code
(backbone 3e-3, pixel decoder 3e-4, segmentation 1e-3 absolute) and gives the key mapping that
`to_published_layout` inverts here: the published checkpoints use the original module names
(`backbone.*`, `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*`, `task_mlp.*`). Two
differences from that script are transformers 5's own renames, seen in the model's state dict:
Swin's attention projections are `q_proj`/`k_proj`/`v_proj`/`o_proj` and sit under
`encoder.swin.`.

Everything runs in float64 so that the decoder's attention masks (sigmoid(mask) < 0.5) cannot
flip between the two implementations on rounding.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from annotators import oneformer
from annotators.segmentation import PALETTES
from annotators.weights import BadWeightsError
from annotators.oneformer_network import (OneFormerConfig, OneFormerNetwork, network_state_dict,
                                          sine_positions)
from annotators.swin_backbone import SwinConfig

transformers = pytest.importorskip("transformers")

TINY_SWIN = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=3)
TINY = dict(num_queries=6, hidden_dim=64, conv_dim=64, mask_dim=64, encoder_layers=2,
            decoder_layers=4, query_dec_layers=2, num_attention_heads=8, dim_feedforward=96,
            encoder_feedforward_dim=80)
HEAD_GAIN = 20
QUERY_GAIN = 30
TINY_CLASSES = 150  # ADE20K's, so the tiny network runs through the ADE20K pipeline


def transformers_model(seed: int = 0) -> torch.nn.Module:
    swin = transformers.SwinConfig(image_size=128, out_features=["stage1", "stage2", "stage3", "stage4"], **TINY_SWIN)
    config = transformers.OneFormerConfig(
        backbone_config=swin, is_training=False, use_auxiliary_loss=False,
        id2label={i: f"class{i}" for i in range(TINY_CLASSES)}, **TINY)
    torch.manual_seed(seed)
    model = transformers.OneFormerModel(config).eval().double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every weight off its initial value (ones, zeros, grids)
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        # Distinct queries with confident classes and strong masks, so that the queries split the
        # image among several labels (otherwise every query, and pixel, gets the same class).
        model.transformer_module.queries_embedder.weight.mul_(QUERY_GAIN)
        decoder = model.transformer_module.decoder
        decoder.class_embed.weight.mul_(HEAD_GAIN)
        decoder.mask_embed.layers[-1].get_submodule("0").weight.mul_(HEAD_GAIN)
    return model


# (transformers name, published name); "{}" stands for an index.
RENAMES = [
    (r"pixel_level_module\.encoder\.swin\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (r"pixel_level_module\.encoder\.swin\.embeddings\.norm\.", "backbone.patch_embed.norm."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.",
     r"backbone.layers.\1.blocks.\2.attn.proj."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\."
     r"relative_position_bias_table", r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.",
     r"backbone.layers.\1.blocks.\2.norm1."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.",
     r"backbone.layers.\1.blocks.\2.norm2."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.", r"backbone.layers.\1.blocks.\2.mlp."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.downsample\.", r"backbone.layers.\1.downsample."),
    (r"pixel_level_module\.encoder\.hidden_states_norms\.stage(\d+)\.", None),  # stage n -> norm{n-1}
    (r"pixel_level_module\.decoder\.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (r"pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear1."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear2."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2."),
    (r"pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (r"pixel_level_module\.decoder\.(adapter_1|layer_1)\.0\.", r"sem_seg_head.pixel_decoder.\1."),
    (r"pixel_level_module\.decoder\.(adapter_1|layer_1)\.1\.", r"sem_seg_head.pixel_decoder.\1.norm."),
    (r"transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (r"transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
    (r"transformer_module\.decoder\.decoder_norm\.", "sem_seg_head.predictor.decoder_norm."),
    (r"transformer_module\.decoder\.query_input_projection\.", "sem_seg_head.predictor.class_input_proj."),
    (r"transformer_module\.decoder\.class_embed\.", "sem_seg_head.predictor.class_embed."),
    (r"transformer_module\.decoder\.mask_embed\.layers\.(\d+)\.0\.", r"sem_seg_head.predictor.mask_embed.layers.\1."),
    (r"transformer_module\.decoder\.query_transformer\.decoder\.", "sem_seg_head.predictor.class_transformer.decoder."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.",
     r"sem_seg_head.predictor.transformer_cross_attention_layers.\1."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.self_attn\.out_proj\.",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.norm\.",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.ffn\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1."),
    (r"task_encoder\.task_mlp\.layers\.(\d+)\.0\.", r"task_mlp.layers.\1."),
]
# q, k, v projections that the published layout keeps as one in-projection, in that order.
FUSED = [
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)",
     r"backbone.layers.\1.blocks.\2.attn.qkv.\4"),
    (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.self_attn\.([qkv])_proj\.(weight|bias)",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.in_proj_\3"),
]
DROPPED = r"pixel_level_module\.encoder\.swin\.layernorm\."  # Swin's classification-head norm


def to_published_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    published: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if re.match(DROPPED, key):
            continue
        for pattern, target in FUSED:
            match = re.fullmatch(pattern, key)
            if match:
                projection = re.search(r"([qkv])_proj", key).group(1)
                fused.setdefault(match.expand(target), {})[projection] = value
                break
        else:
            for pattern, target in RENAMES:
                match = re.match(pattern, key)
                if match:
                    if target is None:  # hidden_states_norms.stage{n}
                        name = f"backbone.norm{int(match.group(1)) - 1}."
                    else:
                        name = match.expand(target)
                    published[name + key[match.end():]] = value
                    break
            else:
                raise AssertionError(f"no published name for {key}")
    for name, parts in fused.items():
        published[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return published


def our_network(model: torch.nn.Module) -> OneFormerNetwork:
    published = to_published_layout(model.state_dict())
    config = OneFormerConfig.from_state_dict(published)
    network = OneFormerNetwork(config).double().eval()
    # The relative-position index is a buffer of ours (published as a buffer, not a weight of
    # transformers' state dict): ours stays.
    own = network.state_dict()
    missing = set(own) - set(published)
    assert all(k.endswith("relative_position_index") for k in missing), sorted(missing)[:5]
    published.update({k: own[k] for k in missing})
    network.load_state_dict(published, strict=True)
    return network


@pytest.fixture(scope="module")
def models():
    model = transformers_model()
    return model, our_network(model)


def test_config_is_read_from_the_weights(models):
    _, network = models
    config = network.config
    assert config.swin == SwinConfig(32, (2, 2, 2, 2), (1, 2, 4, 8), 3)
    assert (config.classes, config.queries, config.hidden) == (TINY_CLASSES, 6, 64)
    assert (config.encoder_layers, config.encoder_feedforward) == (2, 80)
    # transformers' decoder_layers counts the learnable-query round, as DEC_LAYERS does.
    assert (config.query_layers, config.decoder_layers, config.decoder_feedforward) == (2, 3, 96)
    assert config.task_tokens == oneformer.TASK_SEQUENCE_LENGTH


@pytest.mark.parametrize("height, width", [(128, 160), (160, 128)])
def test_network_equals_transformers(models, height, width):
    model, network = models
    generator = torch.Generator().manual_seed(height)
    image = torch.randn(1, 3, height, width, generator=generator, dtype=torch.float64)
    tokens = oneformer.semantic_task_tokens()
    with torch.no_grad():
        expected = model(pixel_values=image, task_inputs=tokens.double(), output_hidden_states=True)
        features = network.backbone(image)
        mask_features, encoded = network.sem_seg_head.pixel_decoder(features)
        class_logits, mask_logits = network(image, tokens)
    for ours, theirs in zip(features, expected.encoder_hidden_states):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    for ours, theirs in zip([mask_features] + encoded, expected.pixel_decoder_hidden_states):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(class_logits, expected.transformer_decoder_class_predictions, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mask_logits, expected.transformer_decoder_mask_predictions, rtol=1e-9, atol=1e-9)
    assert mask_logits.shape == (1, 6, height // 4, width // 4)


def test_sine_positions_follow_detr():
    # PositionEmbeddingSine(num_pos_feats=4, normalize=True) on a 1x8x2x3 map, written out:
    # y_embed = row + 1 scaled by 2*pi / (H + 1e-6); dim_t = 10000^(2*(i//2)/4).
    out = sine_positions(torch.zeros(1, 8, 2, 3))
    dim_t = 10000 ** (2 * (np.arange(4) // 2) / 4)
    for row in range(2):
        for column in range(3):
            y = (row + 1) / (2 + 1e-6) * 2 * np.pi / dim_t
            x = (column + 1) / (3 + 1e-6) * 2 * np.pi / dim_t
            expected = [np.sin(y[0]), np.cos(y[1]), np.sin(y[2]), np.cos(y[3]),
                        np.sin(x[0]), np.cos(x[1]), np.sin(x[2]), np.cos(x[3])]
            np.testing.assert_allclose(out[0, :, row, column].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_training_only_keys_are_dropped():
    state_dict = {"text_encoder.x": torch.zeros(1), "text_projector.layers.0.weight": torch.zeros(1),
                  "prompt_ctx.weight": torch.zeros(1), "backbone.norm0.weight": torch.ones(1)}
    assert list(network_state_dict(state_dict)) == ["backbone.norm0.weight"]


# --- the pipeline around the network -------------------------------------------------------------

@pytest.mark.parametrize("size, short, limit, expected", [
    ((512, 768), 800, 1333, (800, 1200)),     # short side 800, long side 1200 fits
    ((512, 1024), 800, 1333, (667, 1333)),    # 800 x 1600 passes 1333: both scaled by 1333/1600
    ((768, 512), 640, 2560, (960, 640)),
    ((333, 500), 640, 2560, (640, 961)),      # 500 * 640/333 = 960.96 -> rounded half up
])
def test_resize_follows_resize_shortest_edge(size, short, limit, expected):
    assert oneformer.resized_size(*size, short, limit) == expected


def test_resize_is_pil_bilinear():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = oneformer.resize_like_detectron2(rgb, 80, 115)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgb).resize((115, 80), Image.BILINEAR)))
    assert oneformer.resize_like_detectron2(rgb, 37, 53) is rgb


def test_network_input_normalises_and_pads_with_zeros():
    rgb = np.random.default_rng(1).integers(0, 256, (33, 70, 3), dtype=np.uint8)
    out = oneformer.network_input(rgb, torch.device("cpu"), torch.float32)
    assert out.shape == (1, 3, 64, 96)
    mean = np.array(oneformer.PIXEL_MEAN, np.float32)
    std = np.array(oneformer.PIXEL_STD, np.float32)
    expected = ((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out[0, :, :33, :70].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert out[0, :, 33:].abs().max() == 0 and out[0, :, :, 70:].abs().max() == 0


def test_semantic_scores_are_the_sum_over_queries():
    generator = torch.Generator().manual_seed(3)
    class_logits = torch.randn(4, 3 + 1, generator=generator)
    mask_logits = torch.randn(4, 5, 6, generator=generator)
    scores = oneformer.semantic_scores(class_logits, mask_logits)
    expected = torch.zeros(3, 5, 6)
    for query in range(4):
        probabilities = F.softmax(class_logits[query], dim=0)
        for label in range(3):  # the last class is "no object" and is dropped
            expected[label] += probabilities[label] * torch.sigmoid(mask_logits[query])
    torch.testing.assert_close(scores, expected)


def test_semantic_task_tokens():
    tokens = oneformer.semantic_task_tokens()
    assert tokens.shape == (1, 77) and tokens.dtype == torch.int64
    ids = oneformer.SEMANTIC_TASK_TOKEN_IDS
    assert tokens[0, :len(ids)].tolist() == list(ids) and tokens[0, len(ids):].abs().max() == 0


# --- the whole pipeline and the loader -----------------------------------------------------------

# ADE20K's model with a small test-time size, so the tiny network runs it in a second.
SMALL_ADE20K = dataclasses.replace(oneformer.ONEFORMER_MODELS["ade20k"], short_side=100, long_side_limit=130)


def test_labels_follow_the_original_pipeline(models, monkeypatch):
    """segment_labels against the steps written out with the oracle network: PIL resize to 100 x
    130 (the long side capped), normalise, pad to 128 x 160, transformers' model, masks up to the
    padded size, cropped, up to the image's size, summed over queries, argmax."""
    model, network = models
    rgb = np.random.default_rng(5).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    from PIL import Image

    resized = np.asarray(Image.fromarray(rgb).resize((130, 96), Image.BILINEAR))  # 100 * 83/61 > 130
    assert oneformer.resized_size(61, 83, 100, 130) == (96, 130)
    image = (torch.from_numpy(resized.copy()).double().permute(2, 0, 1) - torch.tensor(oneformer.PIXEL_MEAN).double()[:, None, None]) \
        / torch.tensor(oneformer.PIXEL_STD).double()[:, None, None]
    padded = torch.zeros(1, 3, 96, 160, dtype=torch.float64)
    padded[0, :, :96, :130] = image
    with torch.no_grad():
        out = model(pixel_values=padded, task_inputs=oneformer.semantic_task_tokens().double())
    masks = F.interpolate(out.transformer_decoder_mask_predictions, size=(96, 160), mode="bilinear", align_corners=False)
    masks = F.interpolate(masks[:, :, :96, :130], size=(61, 83), mode="bilinear", align_corners=False)[0]
    probabilities = out.transformer_decoder_class_predictions[0].softmax(-1)
    scores = sum(probabilities[q, :-1, None, None] * masks[q].sigmoid()[None] for q in range(masks.shape[0]))
    expected = scores.argmax(0).numpy()

    labels = oneformer.segment_labels(rgb, network, SMALL_ADE20K)
    assert labels.shape == (61, 83) and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(labels, expected)

    monkeypatch.setitem(oneformer.ONEFORMER_MODELS, "ade20k", SMALL_ADE20K)
    seg_map = oneformer.oneformer_segmentation(rgb, network, resolution=None, dataset="ade20k")
    np.testing.assert_array_equal(seg_map, PALETTES["ade20k"][expected])


def test_a_network_of_the_other_dataset_is_refused(models):
    _, network = models
    message = ("this OneFormer network predicts 150 classes, but OneFormer coco has 133: load it with "
               "load_oneformer(..., dataset='coco')")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        oneformer.oneformer_segmentation(np.zeros((8, 8, 3), np.uint8), network, dataset="coco")


def published_file(network: OneFormerNetwork) -> dict[str, torch.Tensor]:
    """The network's weights as a training checkpoint holds them: under "model", with the
    training-only text encoder beside them."""
    weights = {k: v.float() if v.is_floating_point() else v for k, v in network.state_dict().items()}
    weights["text_encoder.token_embedding.weight"] = torch.zeros(3, 4)
    weights["prompt_ctx.weight"] = torch.zeros(2, 4)
    return {"model": weights, "iteration": 5}


def test_loader_reads_the_published_layout(models, tmp_path):
    _, network = models
    name = oneformer.ONEFORMER_MODELS["ade20k"].weights
    torch.save(published_file(network), tmp_path / name)
    loaded = oneformer.load_oneformer([str(tmp_path / "elsewhere"), str(tmp_path)], dtype=torch.float64, dataset="ade20k")
    assert loaded.config == network.config
    for key, value in network.state_dict().items():  # saved in float32, loaded as float64
        expected = value.float().double() if value.is_floating_point() else value
        torch.testing.assert_close(loaded.state_dict()[key], expected, rtol=0, atol=0)


def test_loader_refuses_other_files(models, tmp_path):
    _, network = models
    coco = oneformer.ONEFORMER_MODELS["coco"].weights
    torch.save(published_file(network), tmp_path / coco)  # 150 classes under COCO's name
    message = (f"'{coco}' predicts 150 classes, but OneFormer coco has 133; the file under this name is another "
               f"model: download {coco} again from https://huggingface.co/lllyasviel/Annotators")
    with pytest.raises(BadWeightsError, match="^" + re.escape(message) + "$"):
        oneformer.load_oneformer([str(tmp_path)], dataset="coco")

    ade20k = oneformer.ONEFORMER_MODELS["ade20k"].weights
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1)}}, tmp_path / ade20k)
    message = (f"'{ade20k}' is not a OneFormer Swin checkpoint (it has no 'backbone.patch_embed.proj.weight'); "
               f"download {ade20k} again from https://huggingface.co/lllyasviel/Annotators")
    with pytest.raises(BadWeightsError, match="^" + re.escape(message) + "$"):
        oneformer.load_oneformer([str(tmp_path)], dataset="ade20k")


def test_published_network_shape():
    """The Swin-L OneFormers as the configs build them, on the meta device: the widths and counts
    the yaml files give, and the parameter count of transformers' port of the same configuration
    (its backbone's classification norm and its training-only text mapper aside)."""
    swin = SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
    config = OneFormerConfig(swin=swin, classes=150, queries=250, hidden=256, task_tokens=77, encoder_layers=6,
                             encoder_feedforward=1024, query_layers=2, decoder_layers=9, decoder_feedforward=2048)
    with torch.device("meta"):
        network = OneFormerNetwork(config)
        theirs = transformers.OneFormerModel(transformers.OneFormerConfig(
            backbone_config=transformers.SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
                                                    window_size=12, out_features=["stage1", "stage2", "stage3", "stage4"]),
            num_queries=250, is_training=False, id2label={i: str(i) for i in range(150)}))
    assert OneFormerConfig.from_state_dict(network.state_dict()) == config
    unused = sum(p.numel() for k, p in theirs.named_parameters() if "swin.layernorm" in k)
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for p in theirs.parameters()) - unused
