"""Model files with RANDOM weights under the standard file names, for the demo and the tests.

Real Stable Diffusion, ControlNet and annotator weights cannot ship with the pack. These files
have the real key layouts, so ComfyUI's and the pack's loaders treat them exactly as real ones,
but what they draw is noise. Nothing here is ever a stand-in for a user's real files: callers
only write a file when no file of that name exists in ComfyUI's model folders.

The SD1.5 checkpoint is small but still detected as SD1.5 by CheckpointLoaderSimple:
- U-Net: ComfyUI recognises SD1.5 by model_channels 320 and context_dim 768 (supported_models.py
  SD15.unet_config); depth and block counts are read from the keys. So the width stays 320 but
  every level keeps 320 channels (channel_mult 1,1,1,1 instead of 1,2,4,4): the SD1.5 topology
  (12 skips + middle, attention at the first three levels) at a fraction of the cost.
- Text encoder: ComfyUI always builds the full 12-layer CLIP ViT-L/14 text model for SD1.5 and
  leaves any weight the file lacks uninitialised, so all of it is written (123 M parameters).
- VAE: a TAESD-shaped autoencoder (ComfyUI detects it by `taesd_decoder.1.weight`), 2.4 M
  parameters instead of the 84 M of SD1.5's KL autoencoder.
Weights are stored as float16 to halve the files; ComfyUI computes in float32 on a CPU.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"

# ControlNet 1.1 file names (lllyasviel/ControlNet-v1-1) by condition, as the workflows name them.
CONTROLNET_FILES = {
    "canny": "control_v11p_sd15_canny.pth",
    "mlsd": "control_v11p_sd15_mlsd.pth",
    "scribble": "control_v11p_sd15_scribble.pth",
    "softedge": "control_v11p_sd15_softedge.pth",
    "openpose": "control_v11p_sd15_openpose.pth",
    "depth": "control_v11f1p_sd15_depth.pth",
    "normalbae": "control_v11p_sd15_normalbae.pth",
    "seg": "control_v11p_sd15_seg.pth",
    "lineart": "control_v11p_sd15_lineart.pth",
}
CONTROLNET_REPO = "https://huggingface.co/lllyasviel/ControlNet-v1-1"
SD15_REPO = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
ANNOTATORS_REPO = "https://huggingface.co/lllyasviel/Annotators"

# ComfyUI detects SD1.5 by these two numbers (supported_models.py, SD15.unet_config).
SD15_MODEL_CHANNELS = 320
SD15_CONTEXT_DIM = 768
TINY_CHANNEL_MULT = (1, 1, 1, 1)  # SD1.5: (1, 2, 4, 4)


def sd15_unet_config(model_channels: int, channel_mult: tuple[int, ...], context_dim: int) -> dict:
    """SD1.5's U-Net topology as ComfyUI's UNetModel takes it (4 levels of 2 ResBlocks, attention
    on the first three and in the middle block) at the given widths."""
    return dict(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=model_channels,
        num_res_blocks=[2, 2, 2, 2],
        channel_mult=list(channel_mult),
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        transformer_depth_middle=1,
        context_dim=context_dim,
        use_spatial_transformer=True,
        use_linear_in_transformer=False,
        legacy=False,
        adm_in_channels=None,
        use_checkpoint=False,
        use_temporal_resblock=False,
        use_temporal_attention=False,
    )


TINY_UNET_CONFIG = sd15_unet_config(SD15_MODEL_CHANNELS, TINY_CHANNEL_MULT, SD15_CONTEXT_DIM)
STORED_DTYPE = torch.float16


def random_like(template: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors with `template`'s keys and shapes. Matrices and kernels N(0, 1/fan_in) so
    activations keep their size through deep networks; 1-D weights (norm scales) 1 + N(0, 0.1);
    biases N(0, 0.1); BatchNorm running variances in 0.5..1.5; integer buffers copied."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(template):
        value = template[key]
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * noise
        elif value.ndim >= 2:
            out[key] = noise / math.sqrt(max(value[0].numel(), 1))
        elif key.endswith("weight") or key.endswith("scale"):
            out[key] = 1.0 + 0.1 * noise
        else:
            out[key] = 0.1 * noise
    return out


def _half(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.to(STORED_DTYPE) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}


def sd15_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny SD1.5 checkpoint's tensors in the original single-file layout
    (`model.diffusion_model.`, `cond_stage_model.transformer.`, `first_stage_model.`).
    Needs ComfyUI importable (its module classes give the exact key sets)."""
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    config = comfy.supported_models.SD15(dict(TINY_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        unet = config.get_model({}, "", device="meta").diffusion_model.state_dict()
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32).transformer.state_dict()
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4).state_dict()
    parts = {}
    for prefix, template, part_seed in (
        ("model.diffusion_model.", unet, seed),
        ("cond_stage_model.transformer.", clip, seed + 1),
        ("first_stage_model.", taesd, seed + 2),
    ):
        shaped = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in template.items()}
        parts.update({prefix + k: v for k, v in random_like(shaped, part_seed).items()})
    # TAESD's latent scale/shift are plain numbers: keep SD1.5's identity rather than noise.
    parts["first_stage_model.vae_scale"] = torch.tensor(1.0)
    parts["first_stage_model.vae_shift"] = torch.tensor(0.0)
    return _half(parts)


def write_sd15_checkpoint(path: str, seed: int = 0) -> str:
    from safetensors.torch import save_file

    _atomic(path, lambda tmp: save_file(sd15_checkpoint_state_dict(seed), tmp, metadata={"random_weights": "true"}))
    return path


def controlnet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A ControlNet for the tiny SD1.5 U-Net, original layout (`control_model.` prefix).
    Zero convolutions get random weights too, or the control would do nothing."""
    from controlnet_core import ControlNet, sd_config

    with torch.device("meta"):
        template = ControlNet(sd_config(
            model_channels=SD15_MODEL_CHANNELS, channel_mult=TINY_CHANNEL_MULT, context_dim=SD15_CONTEXT_DIM
        )).state_dict()
    shaped = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in template.items()}
    return _half({f"control_model.{k}": v for k, v in random_like(shaped, seed).items()})


def write_controlnet(path: str, seed: int = 0) -> str:
    """A .pth as ControlNet 1.1 publishes them (read back with torch.load(weights_only=True))."""
    _atomic(path, lambda tmp: torch.save(controlnet_state_dict(seed), tmp))
    return path


@dataclass(frozen=True)
class AnnotatorFile:
    file_name: str
    module: str  # annotators.<module>
    network: str  # network class in that module
    file_name_attribute: str  # the module's constant naming the file (checked against file_name)


# Learned annotators and the files lllyasviel/Annotators publishes for them.
ANNOTATOR_FILES = (
    AnnotatorFile("ControlNetHED.pth", "hed", "HEDNetwork", "HED_WEIGHTS"),
    AnnotatorFile("table5_pidinet.pth", "pidinet", "PiDiNetNetwork", "PIDINET_WEIGHTS"),
    AnnotatorFile("mlsd_large_512_fp32.pth", "mlsd", "MLSDNetwork", "MLSD_WEIGHTS"),
    AnnotatorFile("sk_model.pth", "lineart", "LineartNetwork", "LINEART_WEIGHTS"),
    AnnotatorFile("sk_model2.pth", "lineart", "LineartNetwork", "LINEART_COARSE_WEIGHTS"),
    AnnotatorFile("netG.pth", "lineart_anime", "AnimeLineartNetwork", "LINEART_ANIME_WEIGHTS"),
    AnnotatorFile("erika.pth", "manga_line", "MangaLineNetwork", "MANGA_LINE_WEIGHTS"),
    AnnotatorFile("scannet.pt", "normalbae", "NormalBaeNetwork", "NORMALBAE_WEIGHTS"),
    AnnotatorFile("body_pose_model.pth", "openpose.networks", "BodyPoseNetwork", "BODY_WEIGHTS"),
    AnnotatorFile("hand_pose_model.pth", "openpose.networks", "HandPoseNetwork", "HAND_WEIGHTS"),
    AnnotatorFile("facenet.pth", "openpose.networks", "FaceNetwork", "FACE_WEIGHTS"),
    AnnotatorFile("dpt_hybrid-midas-501f0c75.pt", "midas", "MiDaSNetwork", "MIDAS_WEIGHTS"),
    AnnotatorFile("upernet_global_small.pth", "uniformer", "UniFormerSegmentationNetwork", "UNIFORMER_WEIGHTS"),
)


def annotator_network_factory(entry: AnnotatorFile, package: str = "annotators") -> Callable[[], torch.nn.Module] | None:
    """The network class for `entry`, or None when that annotator is not in this checkout."""
    try:
        module = importlib.import_module(f"{package}.{entry.module}")
    except ModuleNotFoundError:
        return None
    network = getattr(module, entry.network, None)
    if network is None or getattr(module, entry.file_name_attribute, None) != entry.file_name:
        return None
    return network


def write_annotator(entry: AnnotatorFile, folder: str, seed: int = 0) -> str | None:
    """Random weights for one learned annotator in `folder`; None when the annotator does not exist."""
    factory = annotator_network_factory(entry)
    if factory is None:
        return None
    with torch.device("meta"):
        template = factory().state_dict()
    shaped = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in template.items()}
    path = os.path.join(folder, entry.file_name)
    _atomic(path, lambda tmp: torch.save(random_like(shaped, seed), tmp))
    return path


def link_or_copy(source: str, target: str) -> None:
    """Hard link (no extra disk), or a copy where links are not possible."""
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _atomic(path: str, write: Callable[[str], None]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
