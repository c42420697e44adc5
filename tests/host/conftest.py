"""Host tests: the pack loaded into a real ComfyUI checkout, sampling a tiny SD1.5-shaped model.

ComfyUI is looked for at $COMFYUI_PATH, then the folder above custom_nodes/ when the pack is
installed there, then ~/comfy/ComfyUI; every test skips, saying why, when none is found.

The pack is loaded with ComfyUI's own custom-node loader (nodes.load_custom_node), so the node
classes under test are the ones ComfyUI registers. The model is built in-process
(reference/comfyui_host.md §5): ComfyUI only recognises full-width SD1.5 files, so the tiny
U-Net is built from an SD15 model config with narrow widths and random weights.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.core.tiny import randomize  # the same random-weight recipe as the core tests
from workflows.headless import find_comfyui, import_comfyui
from workflows.random_models import sd15_unet_config

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny SD1.5 topology: 12 input blocks (4 levels x (2 ResBlocks + Downsample), conv_in first)
# and a middle block. Widths are multiples of 64 so ComfyUI's built-in loader, which assumes
# 64-channel heads for shapes it does not recognise, can read a ControlNet file of this shape.
MODEL_CHANNELS = 64
CHANNEL_MULT = (1, 2, 2, 2)
CONTEXT_DIM = 64
TOKENS = 8
LATENT_SIDE = 8  # 64 px images: 8 latent pixels, down to 1 at the deepest level
IMAGE_SIDE = LATENT_SIDE * 8
UNET_CONFIG = sd15_unet_config(MODEL_CHANNELS, CHANNEL_MULT, CONTEXT_DIM)
# The same ControlNet in diffusers' terms (for writing a diffusers folder).
DIFFUSERS_CONFIG = dict(
    block_out_channels=tuple(MODEL_CHANNELS * m for m in CHANNEL_MULT),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    cross_attention_dim=CONTEXT_DIM,
    attention_head_dim=[MODEL_CHANNELS * m // 64 for m in CHANNEL_MULT],  # head counts: 64-channel heads
    layers_per_block=2,
)


class Host:
    """ComfyUI booted on CPU with the pack loaded, plus the tiny model and ControlNet files."""

    def __init__(self, comfyui: Path, models_dir: Path):
        import_comfyui(comfyui, cpu=True)  # ComfyUI's root first on sys.path; no GPU, fp32 everywhere
        # Tiny tensors gain nothing from threads, and OpenMP threads spinning against other
        # processes on a small runner slow these tests down several times over.
        torch.set_num_threads(1)

        import comfy.controlnet
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sample
        import comfy.supported_models
        import folder_paths
        import nodes

        self.comfy = comfy
        self.nodes = nodes
        self.folder_paths = folder_paths
        self.models_dir = models_dir
        folder_paths.add_model_folder_path("controlnet", str(models_dir))

        loaded = asyncio.run(nodes.load_custom_node(str(REPO_ROOT), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
        assert loaded, "ComfyUI could not import the pack (see the log above)"
        self.pack = sys.modules[str(REPO_ROOT).replace(".", "_x_")]
        # the pack's own copies (ComfyUI imported it under a path-derived name)
        self.comfy_control = importlib.import_module(f"{self.pack.__name__}.controlnet_core.comfy_control")
        self.errors = importlib.import_module(f"{self.pack.__name__}.controlnet_core.errors")

        self.model = self.tiny_model()
        gen = torch.Generator().manual_seed(7)
        self.positive = [[torch.randn(1, TOKENS, CONTEXT_DIM, generator=gen), {}]]
        self.negative = [[torch.randn(1, TOKENS, CONTEXT_DIM, generator=gen), {}]]
        self.image = torch.rand(1, IMAGE_SIDE, IMAGE_SIDE, 3, generator=gen)  # ComfyUI IMAGE: BHWC in 0..1
        # another size and aspect ratio: the hint is centre-cropped and resized to 8x the latent
        self.wide_image = torch.rand(1, 3 * IMAGE_SIDE // 2, 2 * IMAGE_SIDE, 3, generator=gen)

    def tiny_model(
        self, dtype: torch.dtype = torch.float32, family: str = "SD15", unet_config: dict = UNET_CONFIG, seed: int = 1
    ):
        """A tiny U-Net as a ModelPatcher, computing in `dtype`: by default the SD1.5-shaped one
        (the same random weights every time); `family` names ComfyUI's model config class."""
        mm = self.comfy.model_management
        config = getattr(self.comfy.supported_models, family)(unet_config)
        config.set_inference_dtype(dtype, None)
        base = randomize(config.get_model({}, ""), seed=seed).eval()
        return self.comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    # nodes, by the names ComfyUI registered

    def node(self, name: str):
        return self.nodes.NODE_CLASS_MAPPINGS[name]()

    def builtin_controlnet(self, file_name: str):
        return self.nodes.ControlNetLoader().load_controlnet(file_name)[0]

    def suite_controlnet(self, file_name: str):
        return self.node("CNS_ControlNetLoader").load(file_name)[0]

    def sample(self, positive, negative, steps: int = 3, cfg: float = 5.0, seed: int = 0, batch: int = 1, model=None):
        """Latents sampled with `model` (default: the fp32 tiny model)."""
        latent = torch.zeros(batch, 4, LATENT_SIDE, LATENT_SIDE)
        noise = self.comfy.sample.prepare_noise(latent, seed)
        return self.comfy.sample.sample(
            model or self.model, noise, steps, cfg, "euler", "normal", positive, negative, latent, seed=seed
        )

    # ControlNet files in models/controlnet

    def controlnet_state_dict(self, seed: int, zero_convs: bool = False, **sd_config_args) -> dict:
        """A random tiny ControlNet (our module, original key names without prefix); by default
        the tiny SD1.5 shape, or the shape `sd_config_args` give."""
        from controlnet_core import ControlNet, sd_config

        shape = dict(model_channels=MODEL_CHANNELS, channel_mult=CHANNEL_MULT, context_dim=CONTEXT_DIM)
        model = randomize(ControlNet(sd_config(**{**shape, **sd_config_args})), seed)
        if zero_convs:
            for module in [*model.zero_convs, model.middle_block_out]:
                for p in module.parameters():
                    torch.nn.init.zeros_(p)
        return {k: v.contiguous() for k, v in model.state_dict().items()}

    def write(self, name: str, state_dict: dict) -> str:
        from safetensors.torch import save_file

        save_file(state_dict, self.models_dir / name)
        return name

    def write_diffusers(self, folder: str, original: dict) -> str:
        """Convert an original-layout dict with diffusers' own converter and save the folder."""
        from diffusers import ControlNetModel
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        converted = convert_controlnet_checkpoint(
            {f"control_model.{k}": v for k, v in original.items()}, {"layers_per_block": 2}
        )
        model = ControlNetModel(**DIFFUSERS_CONFIG)
        model.load_state_dict(converted, strict=True)
        model.save_pretrained(self.models_dir / folder)
        return f"{folder}/diffusion_pytorch_model.safetensors"


COMFYUI, WHY_NOT = find_comfyui()


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Host:
    if COMFYUI is None:
        pytest.skip(WHY_NOT)
    return Host(COMFYUI, tmp_path_factory.mktemp("controlnet"))


@pytest.fixture(scope="session")
def files(host: Host) -> SimpleNamespace:
    """The ControlNet files every test shares: one random ControlNet in three layouts, and a
    zero-initialised one."""
    weights = host.controlnet_state_dict(seed=11)
    return SimpleNamespace(
        weights=weights,
        original=host.write("tiny_original.safetensors", {f"control_model.{k}": v for k, v in weights.items()}),
        bare=host.write("tiny_bare.safetensors", weights),
        diffusers=host.write_diffusers("tiny_diffusers", weights),
        second=host.write("tiny_second.safetensors", host.controlnet_state_dict(seed=12)),
        zero=host.write("tiny_zero.safetensors", host.controlnet_state_dict(seed=13, zero_convs=True)),
    )


@pytest.fixture(scope="module")
def union_sdxl(host):
    """A diffusers-format ProMax file (diffusers' own model, random weights) of test_sdxl's tiny
    SDXL shape, loaded with our Load ControlNet; that SDXL U-Net; conditioning for it; and one
    step's inputs (one latent: uncond row, then cond row)."""
    from diffusers import ControlNetUnionModel
    from safetensors.torch import save_file
    from tests.core.tiny import randomize

    from .test_sdxl import ADM_CHANNELS, CHANNEL_MULT, POOLED_DIM, SDXL_UNET_CONFIG, TRANSFORMER_DEPTH, WIDTH
    from .test_sdxl import CONTEXT_DIM as SDXL_CONTEXT_DIM

    network = ControlNetUnionModel(
        block_out_channels=tuple(WIDTH * m for m in CHANNEL_MULT),
        down_block_types=tuple("CrossAttnDownBlock2D" if depth else "DownBlock2D" for depth in TRANSFORMER_DEPTH),
        transformer_layers_per_block=list(TRANSFORMER_DEPTH),
        cross_attention_dim=SDXL_CONTEXT_DIM,
        attention_head_dim=[WIDTH * m // 64 for m in CHANNEL_MULT],  # head counts: 64-channel heads
        use_linear_projection=True,
        layers_per_block=2,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,  # SDXL's: y = pooled text + 6 sinusoidal size ids of 256
        projection_class_embeddings_input_dim=ADM_CHANNELS,
        num_control_type=8,
        num_trans_channel=WIDTH,
        num_proj_channel=WIDTH,
    )
    weights = {k: v.contiguous() for k, v in randomize(network, seed=7).state_dict().items()}
    save_file(weights, host.models_dir / "tiny_union.safetensors")
    gen = torch.Generator().manual_seed(6)

    def conditioning():
        context = torch.randn(1, TOKENS, SDXL_CONTEXT_DIM, generator=gen)
        return [[context, {"pooled_output": torch.randn(1, POOLED_DIM, generator=gen)}]]

    x = (torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5).repeat(2, 1, 1, 1)
    cond = {
        "c_crossattn": torch.randn(2, TOKENS, SDXL_CONTEXT_DIM, generator=gen),
        "y": torch.randn(2, ADM_CHANNELS, generator=gen),
    }
    return SimpleNamespace(
        control_net=host.suite_controlnet("tiny_union.safetensors"),
        model=host.tiny_model(family="SDXL", unet_config=SDXL_UNET_CONFIG, seed=2),
        positive=conditioning(),
        negative=conditioning(),
        step=(x, torch.full((2,), 4.0), cond),
        images=torch.rand(2, IMAGE_SIDE, IMAGE_SIDE, 3, generator=gen),  # two condition maps, one image each
    )
