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
The SDXL checkpoint (for the ControlNet Union workflow) is detected as SDXL the same way: width
320, context 2048, ADM input 2816 and SDXL's input-side transformer depths (0, 0, 2, 2, 10, 10)
are what ComfyUI checks; the levels keep 320 channels (SDXL: 320, 640, 1280) and the middle and
output blocks, which detection does not look at, have one transformer block each. Both text
encoders are written whole (CLIP-L and CLIP-G, 817 M parameters), as ComfyUI builds them whole.
The ControlNet Union is diffusers' ControlNetUnionModel (the ProMax layout xinsir publishes) at
the tiny U-Net's widths.
Weights are stored as float16 to halve the files; ComfyUI computes in float32 on a CPU.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
# xinsir publishes it as diffusion_pytorch_model_promax.safetensors; saved under this name.
UNION_FILE = "controlnet-union-sdxl-1.0-promax.safetensors"

# ControlNet 1.1 by condition, as the workflows name them: the fp16 safetensors copies ComfyUI's
# own examples use (comfyanonymous/ControlNet-v1-1_fp16_safetensors, the same networks as
# lllyasviel/ControlNet-v1-1's .pth files). The front end's missing-models dialog downloads only
# .safetensors / .sft files, so .pth names could not be fetched from it.
CONTROLNET_FILES = {
    "canny": "control_v11p_sd15_canny_fp16.safetensors",
    "mlsd": "control_v11p_sd15_mlsd_fp16.safetensors",
    "scribble": "control_v11p_sd15_scribble_fp16.safetensors",
    "softedge": "control_v11p_sd15_softedge_fp16.safetensors",
    "openpose": "control_v11p_sd15_openpose_fp16.safetensors",
    "depth": "control_v11f1p_sd15_depth_fp16.safetensors",
    "normalbae": "control_v11p_sd15_normalbae_fp16.safetensors",
    "seg": "control_v11p_sd15_seg_fp16.safetensors",
    "lineart": "control_v11p_sd15_lineart_fp16.safetensors",
    "tile": "control_v11f1e_sd15_tile_fp16.safetensors",
    "inpaint": "control_v11p_sd15_inpaint_fp16.safetensors",
    "shuffle": "control_v11e_sd15_shuffle_fp16.safetensors",
    "ip2p": "control_v11e_sd15_ip2p_fp16.safetensors",
}
CONTROLNET_REPO = "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors"
SD15_REPO = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
ANNOTATORS_REPO = "https://huggingface.co/lllyasviel/Annotators"
SDXL_REPO = "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0"
UNION_URL = "https://huggingface.co/xinsir/controlnet-union-sdxl-1.0/resolve/main/diffusion_pytorch_model_promax.safetensors"

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

# What ComfyUI checks to call a checkpoint SDXL (supported_models.py, SDXL.unet_config).
SDXL_CONTEXT_DIM = 2048
SDXL_ADM_CHANNELS = 2816  # pooled CLIP-G text (1280) + 6 size/crop numbers x 256
SDXL_TRANSFORMER_DEPTH = (0, 0, 2, 2, 10, 10)  # per input block
TINY_SDXL_CHANNEL_MULT = (1, 1, 1)  # SDXL: (1, 2, 4)
TINY_SDXL_UNET_CONFIG = {
    **TINY_UNET_CONFIG,  # what SDXL's topology shares with SD1.5's; then what differs:
    "num_res_blocks": [2, 2, 2],
    "channel_mult": list(TINY_SDXL_CHANNEL_MULT),
    "transformer_depth": list(SDXL_TRANSFORMER_DEPTH),
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],  # SDXL: 0, 0, 0, 2, 2, 2, 10, 10, 10
    "transformer_depth_middle": 1,  # SDXL: 10
    "context_dim": SDXL_CONTEXT_DIM,
    "num_head_channels": 64,
    "adm_in_channels": SDXL_ADM_CHANNELS,
    "num_classes": "sequential",  # y (pooled text + sizes) goes through label_emb
    "use_linear_in_transformer": True,
}

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


def _random_from_template(template: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """random_like for a state dict whose tensors give shapes only (meta tensors)."""
    return random_like({k: torch.empty(v.shape, dtype=v.dtype) for k, v in template.items()}, seed)


def _random_weights_of(build: Callable[[], torch.nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """Random weights for the module `build()` makes, read off a copy on the meta device."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        template = build().state_dict()
    return _random_from_template(template, seed)


def _random_parts(parts: Mapping[str, tuple[Mapping[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """{prefix: (template state dict, seed)} -> random tensors under prefix + key."""
    out = {}
    for prefix, (template, seed) in parts.items():
        out.update({prefix + k: v for k, v in _random_from_template(template, seed).items()})
    return out


def _meta_unet(config: Any) -> dict[str, torch.Tensor]:
    config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return config.get_model({}, "", device="meta").diffusion_model.state_dict()


def _taesd_vae(seed: int) -> dict[str, torch.Tensor]:
    """A TAESD-shaped VAE under `first_stage_model.`. Its latent scale/shift are plain numbers:
    they keep the identity rather than noise."""
    import comfy.taesd.taesd

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4).state_dict()
    parts = _random_parts({"first_stage_model.": (taesd, seed)})
    parts["first_stage_model.vae_scale"] = torch.tensor(1.0)
    parts["first_stage_model.vae_shift"] = torch.tensor(0.0)
    return parts


def sd15_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny SD1.5 checkpoint's tensors in the original single-file layout
    (`model.diffusion_model.`, `cond_stage_model.transformer.`, `first_stage_model.`).
    Needs ComfyUI importable (its module classes give the exact key sets)."""
    import comfy.sd1_clip
    import comfy.supported_models

    unet = _meta_unet(comfy.supported_models.SD15(dict(TINY_UNET_CONFIG)))
    with torch.device("meta"):
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32).transformer.state_dict()
    parts = _random_parts({"model.diffusion_model.": (unet, seed), "cond_stage_model.transformer.": (clip, seed + 1)})
    return _half({**parts, **_taesd_vae(seed + 2)})


def write_sd15_checkpoint(path: str, seed: int = 0) -> str:
    return _save_random(path, sd15_checkpoint_state_dict(seed))


def sdxl_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny SDXL checkpoint's tensors in the single-file layout SDXL base ships in; the text
    encoders under the names ComfyUI maps to its own (`conditioner.embedders.0.transformer.` for
    CLIP-L, `conditioner.embedders.1.model.` for CLIP-G, already in transformers' naming, which
    ComfyUI's open_clip conversion leaves as it is)."""
    import comfy.sdxl_clip
    import comfy.supported_models

    unet = _meta_unet(comfy.supported_models.SDXL(dict(TINY_SDXL_UNET_CONFIG)))
    with torch.device("meta"):
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float32)
        clip_l = {k: v for k, v in clip.clip_l.transformer.state_dict().items() if k.startswith("text_model.")}
        clip_g = clip.clip_g.transformer.state_dict()
    parts = _random_parts({
        "model.diffusion_model.": (unet, seed),
        "conditioner.embedders.0.transformer.": (clip_l, seed + 1),
        "conditioner.embedders.1.model.transformer.": (clip_g, seed + 3),
    })
    return _half({**parts, **_taesd_vae(seed + 2)})


def write_sdxl_checkpoint(path: str, seed: int = 0) -> str:
    return _save_random(path, sdxl_checkpoint_state_dict(seed))


def controlnet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A ControlNet for the tiny SD1.5 U-Net, original layout (`control_model.` prefix).
    Zero convolutions get random weights too, or the control would do nothing."""
    from controlnet_core import ControlNet, sd_config

    with torch.device("meta"):
        template = ControlNet(sd_config(
            model_channels=SD15_MODEL_CHANNELS, channel_mult=TINY_CHANNEL_MULT, context_dim=SD15_CONTEXT_DIM
        )).state_dict()
    return _half(_random_parts({"control_model.": (template, seed)}))


def write_controlnet(path: str, seed: int = 0) -> str:
    """A ControlNet 1.1 file in safetensors, fp16, original layout (as the workflows name them)."""
    return _save_random(path, controlnet_state_dict(seed))


def union_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A ControlNet Union/ProMax for the tiny SDXL U-Net in diffusers' layout (xinsir's files):
    diffusers' own ControlNetUnionModel, built on the meta device for its keys and shapes, needs
    diffusers (installed with the tests and the demo)."""
    from diffusers import ControlNetUnionModel

    with torch.device("meta"):
        template = ControlNetUnionModel(
            block_out_channels=tuple(SD15_MODEL_CHANNELS * m for m in TINY_SDXL_CHANNEL_MULT),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            transformer_layers_per_block=[0, 1, 1],  # SDXL's: 0, 2, 10 (shapes of the residuals do not depend on it)
            cross_attention_dim=SDXL_CONTEXT_DIM,
            attention_head_dim=[SD15_MODEL_CHANNELS * m // 64 for m in TINY_SDXL_CHANNEL_MULT],  # 64-channel heads
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=SDXL_ADM_CHANNELS,
            num_control_type=8,  # ProMax
            num_trans_channel=SD15_MODEL_CHANNELS,
            num_proj_channel=SD15_MODEL_CHANNELS,
        ).state_dict()
    return _half(_random_parts({"": (template, seed)}))


def write_union(path: str, seed: int = 0) -> str:
    return _save_random(path, union_state_dict(seed))


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
    weights = _random_weights_of(factory, seed)
    path = os.path.join(folder, entry.file_name)
    _atomic(path, lambda tmp: torch.save(weights, tmp))
    return path


# DWPose's two files as comfyui_controlnet_aux and sd-webui-controlnet users have them
# (huggingface.co/yzd-v/DWPose): ONNX graphs, written here as the published ones were, by torch's
# TorchScript exporter at opset 11 (Megvii's export_onnx.py and mmdeploy's onnxruntime configs both
# default to 11). The exporter writes through the onnx package (requirements-dev.txt); the pack
# reads the files without it.
DWPOSE_REPO = "https://huggingface.co/yzd-v/DWPose"
DWPOSE_ONNX_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")  # annotators.dwpose DETECTOR_ONNX, POSE_ONNX
PUBLISHED_ONNX_OPSET = 11
# With random weights YOLOX-L "finds" thousands of people, each of whom RTMPose would then be run
# on; the random detector's objectness read-out is a constant logit instead, so it finds nobody
# (sigmoid(-30) ~ 1e-13, far below DWPose's 0.1 and 0.3 score thresholds).
NOBODY_OBJECTNESS_LOGIT = -30.0


class MegviiYoloxExport(torch.nn.Module):
    """YOLOX with the single output Megvii's `tools/export_onnx.py` gives (DWPose's `yolox_l.onnx`,
    decode_in_inference=False): (1, points, 5 + classes), levels finest first, points row by row;
    box deltas raw, objectness and class probabilities through the sigmoid."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image_batch: torch.Tensor) -> torch.Tensor:
        rows = [torch.cat((deltas, objectness.sigmoid(), classes.sigmoid()), dim=1).flatten(2).transpose(1, 2)
                for classes, deltas, objectness in self.network(image_batch)]
        return torch.cat(rows, dim=1)


def save_onnx(network: torch.nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike, batch_axis: bool,
              opset: int = PUBLISHED_ONNX_OPSET) -> str | os.PathLike:
    """`network` exported with torch's TorchScript exporter, as the published files were (BatchNorm
    folded into the convolutions); `batch_axis` leaves the input's batch size free, as mmdeploy's
    dynamic configs do, otherwise it is fixed at `input_shape`'s."""
    import warnings

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    network.eval()  # the exporter restores the top module's mode on every submodule afterwards
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notices
        torch.onnx.export(network, (torch.zeros(input_shape),), str(path), dynamo=False,
                          opset_version=opset, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}} if batch_axis else None)
    return path


def save_detector_onnx(detector: torch.nn.Module, path: str | os.PathLike, side: int) -> str | os.PathLike:
    """A YOLOX network exported as DWPose's `yolox_l.onnx` is: Megvii's layout, on a fixed 1×3×side×side input."""
    return save_onnx(MegviiYoloxExport(detector), (1, 3, side, side), path, batch_axis=False)


def save_pose_onnx(pose: torch.nn.Module, path: str | os.PathLike, batch_axis: bool = True) -> str | os.PathLike:
    """An RTMPose network exported as DWPose's and Animal Pose's pose files are: on crops of its
    input size (width, height), with a free batch (or one fixed at 1)."""
    width, height = pose.input_size
    return save_onnx(pose, (1, 3, height, width), path, batch_axis)


def _random_network(network_class: type, config: Any, seed: int) -> torch.nn.Module:
    """`network_class(config)` holding random weights, built without initialising any first."""
    from annotators.networks_common import network_from_weights

    weights = _random_weights_of(lambda: network_class(config), seed)
    return network_from_weights(lambda _: network_class(config), weights).eval()


def _dwpose_module() -> Any:
    try:
        return importlib.import_module("annotators.dwpose")
    except ModuleNotFoundError:
        return None


def dwpose_onnx_available(file_name: str) -> bool:
    """Whether this checkout's annotators.dwpose reads `file_name` as one of its ONNX files."""
    dwpose = _dwpose_module()
    return dwpose is not None and file_name in (getattr(dwpose, "DETECTOR_ONNX", None), getattr(dwpose, "POSE_ONNX", None))


def random_dwpose_network(file_name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, ...], bool]:
    """The network one of DWPOSE_ONNX_FILES holds, with random weights at the published size, as
    (module to export, input shape, whether the batch axis is free): YOLOX-L in Megvii's export
    layout on 640 x 640 with a fixed batch, its objectness at NOBODY_OBJECTNESS_LOGIT; RTMPose-l
    on 288 x 384 crops with a free batch."""
    if not dwpose_onnx_available(file_name):
        raise ValueError(f"annotators.dwpose does not read '{file_name}'")
    dwpose = _dwpose_module()
    if file_name == dwpose.DETECTOR_ONNX:
        detector = _random_network(dwpose.Yolox, dwpose.YoloxConfig.large(), seed)
        for objectness in detector.bbox_head.multi_level_conv_obj:
            torch.nn.init.zeros_(objectness.weight)
            torch.nn.init.constant_(objectness.bias, NOBODY_OBJECTNESS_LOGIT)
        side = dwpose.DETECTOR_INPUT_SIZE
        return MegviiYoloxExport(detector), (1, 3, side, side), False
    pose = _random_network(dwpose.Rtmpose, dwpose.RtmposeConfig(), seed)
    width, height = pose.input_size
    return pose, (1, 3, height, width), True


def write_dwpose_onnx(file_name: str, folder: str, seed: int = 0) -> str:
    """One of DWPOSE_ONNX_FILES with random weights (random_dwpose_network) in `folder`."""
    network, input_shape, batch_axis = random_dwpose_network(file_name, seed)
    path = os.path.join(folder, file_name)
    _atomic(path, lambda tmp: save_onnx(network, input_shape, tmp, batch_axis))
    return path


AnnotatorWriter = Callable[[str, int], str]  # (folder, seed) -> the path written


def annotator_writers() -> dict[str, AnnotatorWriter | None]:
    """Every learned annotator file this module can write with random weights, by file name: its
    writer, or None where this checkout's annotators do not read that file."""
    writers: dict[str, AnnotatorWriter | None] = {
        entry.file_name: functools.partial(write_annotator, entry) if annotator_network_factory(entry) else None
        for entry in ANNOTATOR_FILES}
    writers.update({name: functools.partial(write_dwpose_onnx, name) if dwpose_onnx_available(name) else None
                    for name in DWPOSE_ONNX_FILES})
    return writers


def link_or_copy(source: str, target: str) -> None:
    """Hard link (no extra disk), or a copy where links are not possible."""
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _save_random(path: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """A safetensors file marked as random weights."""
    from safetensors.torch import save_file

    _atomic(path, lambda tmp: save_file(dict(tensors), tmp, metadata={"random_weights": "true"}))
    return path


def _atomic(path: str, write: Callable[[str], None]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
