"""Every checkpoint layout is detected from a generated file, and every bad input gets a clear
error naming the file, the problem and the fix."""

import re

import pytest
import torch
from diffusers import ControlNetModel, ControlNetUnionModel, T2IAdapter
from safetensors.torch import save_file

from controlnet_core import ControlNet, ControlNetFileError, ControlNetFormatError, load_controlnet, sd_config
from controlnet_core.formats import detect_layout
from tests.core.tiny import DIFFUSERS_CONFIGS, inputs, randomize

TINY = dict(model_channels=64, channel_mult=(1, 2, 2, 2), context_dim=32)


def tiny_controlnet(seed: int = 0, **overrides) -> ControlNet:
    return randomize(ControlNet(sd_config(**{**TINY, **overrides})), seed).eval()


def unet_encoder(controlnet: ControlNet) -> dict[str, torch.Tensor]:
    """A stand-in base U-Net: the encoder tensors of another random model of the same shape."""
    skip = ("zero_convs", "middle_block_out", "input_hint_block")
    return {k: v.clone() for k, v in controlnet.state_dict().items() if not k.startswith(skip)}


def assert_same_weights(model: ControlNet, expected: dict[str, torch.Tensor], exact: bool = True):
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        if exact:
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-6, msg=key)


# --- layouts ----------------------------------------------------------------------------------


def test_original_full_controlldm_pth_ignores_unet_vae_and_clip(tmp_path):
    cn = tiny_controlnet()
    sd = {f"control_model.{k}": v for k, v in cn.state_dict().items()}
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet_encoder(cn).items()})
    sd["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4, 3, 3)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "control_sd15_tiny.pth")

    loaded = load_controlnet(str(tmp_path / "control_sd15_tiny.pth"))

    assert (loaded.layout, loaded.family) == ("original", "SD1.x")
    assert_same_weights(loaded.model, cn.state_dict())


def test_bare_safetensors(tmp_path):
    cn = tiny_controlnet(seed=1)
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, tmp_path / "control_tiny_fp16.safetensors")

    loaded = load_controlnet(str(tmp_path / "control_tiny_fp16.safetensors"))

    assert loaded.layout == "original-bare"
    assert_same_weights(loaded.model, cn.state_dict())


def test_diffusers_single_file_without_config_equals_folder(tmp_path):
    reference = randomize(ControlNetModel(**DIFFUSERS_CONFIGS["SD2.x"]), seed=2).eval()
    reference.save_pretrained(tmp_path / "folder")
    single = tmp_path / "controlnet_sd21_tiny.safetensors"
    (tmp_path / "folder" / "diffusion_pytorch_model.safetensors").rename(single)

    loaded = load_controlnet(str(single))

    assert (loaded.layout, loaded.family) == ("diffusers", "SD2.x")
    x, hint, t, context, _ = inputs("SD2.x")
    with torch.no_grad():
        down, mid = reference(x, t, context, hint, return_dict=False)
        ours = loaded.model(x, hint, t, context)
    for a, b in zip(ours, [*down, mid]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_difference_file_adds_the_base_unet(tmp_path):
    control = tiny_controlnet(seed=3)
    base = unet_encoder(tiny_controlnet(seed=4))
    sd = {"difference": torch.tensor(1.0)}
    for key, value in control.state_dict().items():
        sd[f"control_model.{key}"] = value - base[key] if key in base else value
    unchanged = "input_blocks.1.0.in_layers.0.weight"  # A1111's extractor drops deltas below 1e-6
    base[unchanged] = control.state_dict()[unchanged].clone()
    del sd[f"control_model.{unchanged}"]
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "diff_control_tiny.safetensors")
    path = str(tmp_path / "diff_control_tiny.safetensors")

    loaded = load_controlnet(path, base_unet=base)

    assert loaded.layout == "difference"
    assert_same_weights(loaded.model, control.state_dict(), exact=False)
    with pytest.raises(ControlNetFormatError) as error:
        load_controlnet(path)
    assert str(error.value) == (
        "'diff_control_tiny.safetensors' is a \"difference\" ControlNet: it stores ControlNet minus the base U-Net and "
        "needs the base model to be loaded. Use 'Load ControlNet with Model (ControlNet Suite)' and connect the model it was made for"
    )


def test_control_lora_builds_from_the_base_unet(tmp_path):
    cfg = dict(model_channels=64, channel_mult=(1, 2, 2), transformer_depth=(0, 1, 1), context_dim=64,
               use_linear_projection=True, adm_in_channels=80)  # SDXL topology
    base = unet_encoder(tiny_controlnet(seed=5, **cfg))
    trained = tiny_controlnet(seed=6, **cfg).state_dict()
    gen = torch.Generator().manual_seed(7)
    low_rank = ["input_blocks.4.1.proj_in.weight", "input_blocks.4.0.in_layers.2.weight", "middle_block.1.transformer_blocks.0.attn2.to_k.weight"]
    sd, expected = {"lora_controlnet": torch.tensor([])}, dict(base)
    for key in low_rank:
        shape, rank = base[key].shape, 2
        up, down = torch.randn(shape[0], rank, generator=gen), torch.randn(rank, *shape[1:], generator=gen)
        sd[key[: -len(".weight")] + ".up"], sd[key[: -len(".weight")] + ".down"] = up, down
        expected[key] = base[key] + torch.einsum("or,r...->o...", up, down)
    for key, value in trained.items():
        if key.startswith(("input_hint_block", "zero_convs", "middle_block_out")) or "norm" in key or "in_layers.0" in key:
            sd[key], expected[key] = value, value
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "control-lora-canny-rank2.safetensors")
    path = str(tmp_path / "control-lora-canny-rank2.safetensors")

    loaded = load_controlnet(path, base_unet=base)

    assert (loaded.layout, loaded.family) == ("control-lora", "SDXL")
    assert_same_weights(loaded.model, expected, exact=False)
    with pytest.raises(ControlNetFormatError, match=re.escape(
        "'control-lora-canny-rank2.safetensors' is a Control-LoRA: it holds low-rank changes to the base model and "
        "cannot be loaded on its own. Use 'Load ControlNet with Model (ControlNet Suite)' and connect the model it was made for"
    )):
        load_controlnet(path)


def test_union_and_t2i_adapters_are_recognised_and_loaded(tmp_path):
    union = ControlNetUnionModel(**{**DIFFUSERS_CONFIGS["SDXL"], "num_control_type": 6, "num_trans_channel": 64,
                                    "num_proj_channel": 64})  # token width = model_channels
    adapters = {
        "full": T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=1, adapter_type="full_adapter"),
        "light": T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=1, adapter_type="light_adapter"),
        "xl": T2IAdapter(in_channels=3, channels=[32, 64, 64], num_res_blocks=1, adapter_type="full_adapter_xl"),
    }
    assert detect_layout(union.state_dict()) == "diffusers-union"
    for adapter in adapters.values():
        assert detect_layout(adapter.state_dict()) == "t2i-adapter"
    # The original TencentARC layouts (keys as published: conv_in + body.N.block1/2; light: body.N.in_conv)
    assert detect_layout(["conv_in.weight", "body.0.block1.weight", "body.0.block2.weight"]) == "t2i-adapter"
    assert detect_layout(["body.0.in_conv.weight", "body.0.body.0.block1.weight"]) == "t2i-adapter"

    save_file({k: v.contiguous() for k, v in union.state_dict().items()}, tmp_path / "union_tiny.safetensors")
    adapters["light"].save_pretrained(tmp_path / "t2i_light")
    assert load_controlnet(str(tmp_path / "union_tiny.safetensors")).layout == "diffusers-union"
    assert load_controlnet(str(tmp_path / "t2i_light")).layout == "t2i-adapter"


@pytest.mark.parametrize("marker, family", [
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux"),
    ("pos_embed_input.proj.weight", "SD3 / SD3.5"),
    ("after_proj_list.18.bias", "HunyuanDiT"),
])
def test_controlnets_for_other_model_families_are_refused_by_name(marker, family):
    with pytest.raises(ControlNetFormatError) as error:
        detect_layout([marker, "controlnet_blocks.0.weight"])
    assert str(error.value).startswith(f"this is a ControlNet for {family}; ControlNet Suite handles SD1.x, SD2.x")


ANIMA_LLLITE_MESSAGE = (
    "this is a ControlNet-LLLite for a DiT model such as Anima, not for a Stable Diffusion U-Net; ControlNet "
    "Suite loads SDXL LLLite files only. Load it with Advanced-ControlNet's 'Load Anima LLLite Model'"
)
IP_ADAPTER_MESSAGE = (
    "this is an IP-Adapter (an image prompt, not a ControlNet): put it in models/ipadapter and load it with an "
    "IP-Adapter node pack such as ComfyUI_IPAdapter_plus"
)


@pytest.mark.parametrize("name, weights, message", [
    # Anima's LLLite (kohya-ss/ComfyUI-Anima-LLLite), which Advanced-ControlNet's control.py tells
    # by a `lllite_conditioning1.conv1.weight` key and keys under `lllite_dit_blocks_`.
    ("anima_lllite_v2.safetensors", {
        "lllite_conditioning1.conv1.weight": (16, 3, 4, 4),
        "lllite_dit_blocks_0_self_attn_q_proj.down.weight": (32, 2048),
    }, ANIMA_LLLITE_MESSAGE),
    # An IP-Adapter saved as safetensors (h94's files) and as a .bin of two dicts (the originals).
    ("ip-adapter_sd15.safetensors", {"image_proj.proj.weight": (3072, 1024), "ip_adapter.1.to_k_ip.weight": (320, 768)},
        IP_ADAPTER_MESSAGE),
    ("ip-adapter_sd15.bin", {"image_proj": {"proj.weight": (3072, 1024)}, "ip_adapter": {"1.to_k_ip.weight": (320, 768)}},
        IP_ADAPTER_MESSAGE),
])
def test_other_kinds_of_model_in_the_controlnet_folder_are_refused_by_name(name, weights, message, tmp_path):
    def tensors(shapes: dict) -> dict:
        return {k: tensors(v) if isinstance(v, dict) else torch.zeros(v) for k, v in shapes.items()}

    path = tmp_path / name
    if name.endswith(".bin"):
        torch.save(tensors(weights), path)
    else:
        save_file(tensors(weights), path)
    with pytest.raises(ControlNetFormatError, match=f"^{re.escape(f'{name!r}: {message}')}$"):
        load_controlnet(str(path))


# --- architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize("family, config, params, outputs", [
    # Parameter counts measured on the original code's models (reference notes, formats §1.4).
    ("SD1.x", sd_config(), 361_279_120, 13),
    ("SD2.x", sd_config(context_dim=1024, use_linear_projection=True), 364_228_240, 13),
    ("SDXL", sd_config(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), middle_transformer_depth=10,
                       context_dim=2048, use_linear_projection=True, adm_in_channels=2816), 1_251_014_160, 10),
])
def test_full_size_architectures_match_the_published_models(family, config, params, outputs):
    with torch.device("meta"):
        model = ControlNet(config)
    assert config.family == family
    assert sum(p.numel() for p in model.parameters()) == params
    assert config.num_outputs == outputs
    assert config.heads_for(640) == ((8, 80) if family == "SD1.x" else (10, 64))


# --- bad input --------------------------------------------------------------------------------


def saved_tiny(tmp_path, name="control_tiny.safetensors") -> str:
    sd = {k: v.contiguous() for k, v in tiny_controlnet().state_dict().items()}
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(sd, path)
    else:
        torch.save(sd, path)
    return str(path)


def test_truncated_safetensors(tmp_path):
    path = saved_tiny(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ControlNetFileError) as error:
        load_controlnet(path)
    message = str(error.value)
    assert message.startswith("'control_tiny.safetensors' is not a readable safetensors file (")
    assert message.endswith("); it is probably truncated or corrupt: download it again")


def test_corrupt_safetensors_header(tmp_path):
    path = tmp_path / "control_garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64))
    with pytest.raises(ControlNetFileError, match=r"^'control_garbage.safetensors' is not a readable safetensors file"):
        load_controlnet(str(path))


def test_truncated_pth(tmp_path):
    path = saved_tiny(tmp_path, "control_tiny.pth")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    with pytest.raises(ControlNetFileError) as error:
        load_controlnet(path)
    assert re.fullmatch(
        r"'control_tiny.pth' cannot be read as a PyTorch file \(\w+: .*\); it is probably truncated or corrupt: "
        r"download it again", str(error.value), re.S)


class NotATensor:
    """Any class: unpickling it would run code of the file's choosing."""


def test_pth_with_arbitrary_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "control_pickled.pth"
    torch.save({"state_dict": tiny_controlnet().state_dict(), "callback": NotATensor()}, path)
    with pytest.raises(ControlNetFileError) as error:
        load_controlnet(str(path))
    assert str(error.value) == (
        "'control_pickled.pth' contains pickled Python objects other than tensors, which are refused for safety "
        "(loading only with torch.load(weights_only=True)). Use a .safetensors version of this file, or convert it "
        "on a machine you trust."
    )


def test_empty_missing_and_wrong_extension(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ControlNetFileError, match=re.escape(
        "'empty.safetensors' is empty (0 bytes): the download or copy did not finish; fetch it again")):
        load_controlnet(str(tmp_path / "empty.safetensors"))
    with pytest.raises(ControlNetFileError, match="^ControlNet file not found: "):
        load_controlnet(str(tmp_path / "absent.safetensors"))
    with pytest.raises(ControlNetFileError, match=re.escape(
        "'notes.txt' has an unknown extension; ControlNet files are .safetensors (preferred) or .pth/.pt/.ckpt/.bin")):
        load_controlnet(str(tmp_path / "notes.txt"))


def test_not_a_controlnet(tmp_path):
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, tmp_path / "bert.safetensors")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, tmp_path / "sd15.safetensors")
    with pytest.raises(ControlNetFormatError, match=re.escape(
        "'bert.safetensors': unknown layout: none of the ControlNet, Control-LoRA or T2I-Adapter marker keys is "
        "present (first keys: encoder.layer.0.weight)")):
        load_controlnet(str(tmp_path / "bert.safetensors"))
    with pytest.raises(ControlNetFormatError, match=re.escape(
        "'sd15.safetensors': this is a Stable Diffusion checkpoint or U-Net, not a ControlNet: put it in "
        "models/checkpoints")):
        load_controlnet(str(tmp_path / "sd15.safetensors"))


def test_incomplete_controlnet(tmp_path):
    sd = {k: v.contiguous() for k, v in tiny_controlnet().state_dict().items() if not k.startswith("zero_convs.3.")}
    save_file(sd, tmp_path / "control_partial.safetensors")
    with pytest.raises(ControlNetFormatError, match=re.escape(
        "'control_partial.safetensors' lacks the weight 'zero_convs.3.0.weight' that this ControlNet needs: the file "
        "is incomplete or was converted wrongly")):
        load_controlnet(str(tmp_path / "control_partial.safetensors"))


def test_broken_diffusers_config(tmp_path):
    reference = ControlNetModel(**DIFFUSERS_CONFIGS["SD1.x"])
    reference.save_pretrained(tmp_path / "cn")
    (tmp_path / "cn" / "config.json").write_text("{broken")
    with pytest.raises(ControlNetFileError, match=r"config.json' is not valid JSON .*restore the diffusers config.json"):
        load_controlnet(str(tmp_path / "cn"))


def test_loads_straight_into_a_half_precision_dtype(tmp_path):
    """Loading in bfloat16 (what ComfyUI picks on many GPUs; runs on a CPU too) gives bf16 weights
    and residuals that follow fp32 to bf16 precision (8 mantissa bits: ~2^-8 per op)."""
    path = saved_tiny(tmp_path)
    full = load_controlnet(path)
    half = load_controlnet(path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    x, hint, t, context, _ = inputs("SD1.x", context_dim=32)
    with torch.no_grad():
        reference = full.model(x, hint, t, context)
        approx = half.model(x, hint.bfloat16(), t, context.bfloat16())
    for a, b in zip(approx, reference):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b).abs().max() <= 0.05 * b.abs().max()
