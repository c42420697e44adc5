"""Generate every shared workflow, in the graph editor's format (workflows/<name>.json) and the API
format (workflows/api/<name>.json), from the compact descriptions below.

    python -m workflows.build            # (re)write the files
    python -m workflows.build --check    # exit 1 if a committed file differs from what is generated

Each node's inputs, defaults and widget order are read from the node classes ComfyUI registers
(the pack's and ComfyUI's built-ins), so a ComfyUI checkout is needed (see headless.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .example_image import EXAMPLE_IMAGE
from .graph import Graph, NodeSpec, Output, node_spec
from .random_models import (
    ANNOTATORS_REPO,
    CONTROLNET_FILES,
    CONTROLNET_REPO,
    DWPOSE_ONNX_FILES,
    DWPOSE_REPO,
    SD15_CHECKPOINT,
    SD15_REPO,
    SDXL_CHECKPOINT,
    SDXL_REPO,
    UNION_FILE,
    UNION_URL,
)

WORKFLOWS_DIR = Path(__file__).resolve().parent
API_DIR = WORKFLOWS_DIR / "api"

# Generation settings saved in every workflow (ControlNet 1.1's own demos: 512 px, 20 steps;
# SDXL workflows at SDXL's 1024 px).
SIDE = 512
SDXL_SIDE = 1024
STEPS = 20
CFG = 7.0
SEED = 12345
SAMPLER = "euler"
SCHEDULER = "normal"
NEGATIVE = "lowres, bad anatomy, worst quality, low quality"  # ControlNet 1.1's default negative prompt
# Tile upscaling (img2img): the photo enlarged 2x with Lanczos, then resampled at this denoise. The
# tile ControlNet holds the enlarged photo's content, so the sampler re-creates detail rather than
# composition; ControlNet 1.1's tile readme shows it holding even at denoise 1, A1111 users keep
# about half of the photo's noise level (0.4-0.6), and 0.6 is the upper end of that.
TILE_UPSCALE = 2.0
TILE_UPSCALE_METHOD = "lanczos"
TILE_DENOISE = 0.6
QUALITY = ", best quality"  # ControlNet 1.1 appends this to the user's prompt
# Inpainting as ControlNet 1.1's gradio_inpaint.py does it: the mask is softened by a Gaussian
# blur of sigma 5 (its "Mask Blur" default); the hint (masked where > 0.5), the latent noise mask
# and the final blend of the result into the photo all read the softened mask.
INPAINT_MASK_SIGMA = 5.0  # pixels
INPAINT_BLUR_RADIUS = 25  # pixels: 5 sigma each side, where the Gaussian has fallen below 4e-6 of its peak
RESULT_TITLE = "Result"  # the Save Image node of the generated image

# Learned annotators' weight files, for the note: from lllyasviel/Annotators unless
# ANNOTATOR_REPOS names another repository.
ANNOTATOR_FILES = {
    "CNS_DWPose": DWPOSE_ONNX_FILES,
    "CNS_HED": ("ControlNetHED.pth",),
    "CNS_PiDiNet": ("table5_pidinet.pth",),
    "CNS_MLSD": ("mlsd_large_512_fp32.pth",),
    "CNS_OpenPose": ("body_pose_model.pth",),
    "CNS_Lineart": ("sk_model.pth",),
    "CNS_MiDaSDepth": ("dpt_hybrid-midas-501f0c75.pt",),
    "CNS_MiDaSNormal": ("dpt_hybrid-midas-501f0c75.pt",),
    "CNS_NormalBAE": ("scannet.pt",),
    "CNS_UniFormerSegmentation": ("upernet_global_small.pth",),
}
ANNOTATOR_REPOS = {name: DWPOSE_REPO for name in DWPOSE_ONNX_FILES}


@dataclass(frozen=True)
class Base:
    """The checkpoint a workflow samples with, and its image side."""

    checkpoint: str
    side: int


def _download(file_name: str, repo: str) -> str:
    return f"{repo}/resolve/main/{file_name}"


SD15 = Base(SD15_CHECKPOINT, SIDE)
SDXL = Base(SDXL_CHECKPOINT, SDXL_SIDE)
UNION = "union"  # Control.controlnet of a ControlNet Union condition

# Where each model file is published (the note and the front end's missing-models dialog).
MODEL_URLS = {
    SD15_CHECKPOINT: _download(SD15_CHECKPOINT, SD15_REPO),
    SDXL_CHECKPOINT: _download(SDXL_CHECKPOINT, SDXL_REPO),
    UNION_FILE: UNION_URL,
    **{name: _download(name, CONTROLNET_REPO) for name in CONTROLNET_FILES.values()},
}


@dataclass(frozen=True)
class Control:
    """One control: the annotator node that makes its map (None: the ControlNet reads the photo
    itself, as instruct pix2pix does) and the ControlNet that reads it; for a ControlNet Union,
    the control type the map is given as."""

    annotator: str | None
    controlnet: str  # key of CONTROLNET_FILES, or UNION
    strength: float = 1.0  # a Union condition's weight
    union_type: str = ""

    @property
    def file_name(self) -> str:
        return UNION_FILE if self.controlnet == UNION else CONTROLNET_FILES[self.controlnet]


@dataclass(frozen=True)
class Workflow:
    name: str
    title: str
    summary: str  # one sentence for the note and the README
    controls: tuple[Control, ...]
    prompt: str
    negative: str = NEGATIVE
    control_mode: str = "balanced"
    cfg: float = CFG
    base: Base = SD15
    strength_schedule: tuple[str, str] | None = None  # (keyframes, interpolation) of a Strength Schedule node
    latent_strengths: tuple[str, float] | None = None  # (index_strengths, other_latents) of a Latent Strengths node
    batch_size: int = 1
    upscale: float | None = None  # img2img from the photo enlarged by this factor, instead of an empty latent
    denoise: float = 1.0
    inpaint: bool = False  # repaint the photo where Load Image's MASK is set, and blend the result into the photo

    @property
    def img2img(self) -> bool:
        """Sampling starts from the (enlarged) photo, at its size, rather than from an empty latent."""
        return bool(self.upscale) or self.inpaint

    @property
    def class_types(self) -> set[str]:
        options = {"CNS_StrengthSchedule": self.strength_schedule, "CNS_LatentStrengths": self.latent_strengths}
        annotators = {c.annotator for c in self.controls if c.annotator}
        return annotators | {node for node, given in options.items() if given}

    @property
    def controlnet_files(self) -> list[str]:
        return list(dict.fromkeys(c.file_name for c in self.controls))


def single(name: str, title: str, summary: str, annotator: str | None, controlnet: str, prompt: str) -> Workflow:
    return Workflow(name, title, summary, (Control(annotator, controlnet),), prompt + QUALITY)


WORKFLOWS: tuple[Workflow, ...] = (
    single("canny", "Canny edges", "Canny edges of the photo guide a new image.",
           "CNS_Canny", "canny", "a cottage in a meadow, a person standing in front"),
    single("hough_lines", "Hough lines", "Straight lines found by the Hough transform (the paper's Hough condition) guide a new image.",
           "CNS_HoughLines", "mlsd", "a modern house, architecture photo"),
    single("mlsd_lines", "M-LSD lines", "Straight line segments detected by M-LSD guide a new image.",
           "CNS_MLSD", "mlsd", "a modern house, architecture photo"),
    single("scribble", "Scribble", "A scribble made from the photo (bold strokes) guides a new image.",
           "CNS_Scribble", "scribble", "a cottage in a meadow, watercolor"),
    single("hed", "HED soft edges", "HED soft edges of the photo guide a new image.",
           "CNS_HED", "softedge", "a cottage in a meadow, oil painting"),
    single("openpose", "Human pose", "The OpenPose skeleton of the people in the photo guides a new image.",
           "CNS_OpenPose", "openpose", "an astronaut standing in a garden"),
    single("dwpose", "Whole-body pose (DWPose)",
           "The DWPose skeleton of the people in the photo, with their hands and faces, guides a new image "
           "(DWPose's own ONNX files, run without onnxruntime).",
           "CNS_DWPose", "openpose", "an astronaut waving in a garden"),
    single("depth", "Depth", "A MiDaS depth map of the photo guides a new image.",
           "CNS_MiDaSDepth", "depth", "a cottage in a meadow at sunset"),
    single("normal", "Normal map", "A NormalBAE surface-normal map of the photo guides a new image.",
           "CNS_NormalBAE", "normalbae", "a cottage in a meadow, clay render"),
    single("segmentation", "Segmentation", "An ADE20K semantic segmentation of the photo (UniFormer) guides a new image.",
           "CNS_UniFormerSegmentation", "seg", "a cottage in a meadow, summer day"),
    single("lineart", "Line art", "Line art drawn from the photo guides a new image.",
           "CNS_Lineart", "lineart", "a cottage in a meadow, ink drawing"),
    single("shuffle", "Content shuffle (the photo's colours and style)",
           "The photo, shuffled, gives its colours and style to a new picture (v1.1 shuffle, a global-pooling "
           "ControlNet: its residuals are spatial means, on the conditional branch only).",
           "CNS_ContentShuffle", "shuffle", "a lighthouse on a cliff by the sea"),
    single("ip2p", "Instruct pix2pix (edit by instruction)",
           "The photo itself goes to the v1.1 instruct-pix2pix ControlNet and the prompt says what to change "
           "(no preprocessor).",
           None, "ip2p", "make it winter"),
    Workflow("multi_pose_depth", "Pose + depth (multi-control)",
             "Two ControlNets at once: the pose and the depth of the photo, stacked (their residuals add up).",
             (Control("CNS_OpenPose", "openpose", 1.0), Control("CNS_MiDaSDepth", "depth", 0.6)),
             "an astronaut standing in front of a cottage" + QUALITY),
    Workflow("prompt_free", "Prompt-free (ControlNet more important)",
             "No prompt at all: the ControlNet alone decides the content (the original guess mode: control on the "
             "conditional branch only, deep blocks weighted most).",
             (Control("CNS_Canny", "canny"),), "", negative="", control_mode="controlnet_more_important"),
    Workflow("cfg_resolution_weighting", "CFG resolution weighting",
             "The paper's CFG resolution weighting: the control goes to the conditional branch only, each residual "
             "weighted by 64/h (its block's resolution).",
             (Control("CNS_Scribble", "scribble"),), "a cottage in a meadow, watercolor" + QUALITY,
             control_mode="cfg_resolution_weighting"),
    Workflow("canny_fade_out", "Canny edges, fading out (strength schedule)",
             "A strength schedule: the Canny edges hold the composition at full strength for the first 30% of the "
             "steps, then fade out by 80%, so the prompt finishes the details (ControlNet Strength Schedule into "
             "Apply ControlNet).",
             (Control("CNS_Canny", "canny"),), "a cottage in a meadow, a person standing in front, oil painting" + QUALITY,
             strength_schedule=("0=1, 0.3=1, 0.8=0", "linear")),
    Workflow("canny_strength_sweep", "Canny edges at four strengths in one batch (latent strengths)",
             "One batch of four images, each with its own ControlNet strength (1, 0.6, 0.3 and 0, the last "
             "uncontrolled), to compare strengths in one run (ControlNet Latent Strengths into Apply ControlNet).",
             (Control("CNS_Canny", "canny"),), "a cottage in a meadow, a person standing in front, oil painting" + QUALITY,
             latent_strengths=("0=1, 1=0.6, 2=0.3, 3=0", 1.0), batch_size=4),
    Workflow("tile_upscale", "Tile upscale (img2img, 2x)",
             "The photo enlarged 2x and resampled at denoise 0.6: the tile ControlNet keeps it the same picture "
             "while the sampler adds the detail the enlargement lacks (ImageScaleBy, Tile, VAE Encode).",
             (Control("CNS_Tile", "tile"),), "a cottage in a meadow, a person standing in front, highly detailed" + QUALITY,
             upscale=TILE_UPSCALE, denoise=TILE_DENOISE),
    Workflow("inpaint", "Inpaint (the photo's masked region)",
             "The photo's masked region (its transparent pixels, or a mask painted in Load Image's mask editor) is "
             "repainted under the v1.1 inpaint ControlNet, which sees the rest of the photo; the result is blended "
             "into the photo through the softened mask, so nothing outside it changes.",
             (Control("CNS_InpaintHint", "inpaint"),), "a knight in armour standing in front of a cottage" + QUALITY,
             inpaint=True),
    Workflow("sdxl_union_depth_canny", "SDXL ControlNet Union: depth + canny in one pass",
             "One ControlNet Union ProMax reads the photo's depth map and its Canny edges, fused in one ControlNet "
             "pass per step (Union Condition nodes into Apply ControlNet Union).",
             (Control("CNS_MiDaSDepth", UNION, 1.0, union_type="depth"),
              Control("CNS_Canny", UNION, 0.8, union_type="canny/lineart/anime_lineart/mlsd")),
             "a cottage in a meadow at sunset, photo", base=SDXL),
)


def annotator_files(workflows: tuple[Workflow, ...] = WORKFLOWS) -> set[str]:
    """The learned annotators' weight files these workflows need."""
    return {f for w in workflows for c in w.controls for f in ANNOTATOR_FILES.get(c.annotator, ())}


def model_files(workflows: tuple[Workflow, ...] = WORKFLOWS) -> tuple[set[str], set[str]]:
    """(checkpoints, ControlNet files) these workflows name."""
    return {w.base.checkpoint for w in workflows}, {f for w in workflows for f in w.controlnet_files}


def _note_line(file_name: str, url: str, folder: str) -> str:
    published = url.rsplit("/", 1)[-1]
    renamed = f" (published as `{published}`: save it under this name)" if published != file_name else ""
    return f"- [{file_name}]({url}) → `ComfyUI/models/{folder}`{renamed}"


def note_text(workflow: Workflow) -> str:
    lines = [f"### ControlNet Suite: {workflow.title}", "", workflow.summary, "",
             "**Download these files** (nothing is downloaded automatically):", "",
             _note_line(workflow.base.checkpoint, MODEL_URLS[workflow.base.checkpoint], "checkpoints")]
    lines += [_note_line(name, MODEL_URLS[name], "controlnet") for name in workflow.controlnet_files]
    seen = set()
    for control in workflow.controls:
        for file_name in ANNOTATOR_FILES.get(control.annotator, ()):
            if file_name not in seen:
                repo = ANNOTATOR_REPOS.get(file_name, ANNOTATORS_REPO)
                lines.append(_note_line(file_name, _download(file_name, repo), "annotators"))
                seen.add(file_name)
    if workflow.inpaint:
        lines += ["", "Then pick your photo in **Load Image**, mark what to repaint (its transparent pixels, or paint "
                  "a mask: right-click the node, **Open in MaskEditor**) and queue."]
    else:
        lines += ["", "Then pick your photo in **Load Image** and queue."]
    return "\n".join(lines)


def _models_property(file_name: str, directory: str) -> dict:
    """The front end's `models` node property: its missing-models dialog offers these downloads."""
    return {"models": [{"name": file_name, "url": MODEL_URLS[file_name] + "?download=true", "directory": directory}]}


def takes_mask(spec: NodeSpec) -> bool:
    return any(i.name == "mask" and not i.is_widget for i in spec.inputs)


def softened(g: Graph, mask: Output) -> Output:
    """The mask blurred as ControlNet 1.1's inpaint demo blurs it (ComfyUI blurs images, not masks)."""
    as_image = g.add("MaskToImage", mask=mask)
    # Image Blur's sigma is in units of its radius (its kernel spans -1..1), not in pixels.
    blurred = g.add("ImageBlur", title="Soften the mask", image=as_image.out(0), blur_radius=INPAINT_BLUR_RADIUS,
                    sigma=INPAINT_MASK_SIGMA / INPAINT_BLUR_RADIUS)
    return g.add("ImageToMask", image=blurred.out(0), channel="red").out(0)


def build_graph(workflow: Workflow, specs: Mapping[str, NodeSpec]) -> Graph:
    g = Graph(specs)
    checkpoint_name = workflow.base.checkpoint
    checkpoint = g.add("CheckpointLoaderSimple", ckpt_name=checkpoint_name,
                       properties=_models_property(checkpoint_name, "checkpoints"))
    photo = g.add("LoadImage", image=EXAMPLE_IMAGE)
    source, mask = photo.out("IMAGE"), photo.out("MASK")
    if workflow.inpaint:
        mask = softened(g, mask)
    if workflow.upscale:
        source = g.add("ImageScaleBy", title="Enlarged photo", image=source, upscale_method=TILE_UPSCALE_METHOD,
                       scale_by=workflow.upscale).out(0)
    maps: list[Output] = []
    for control in workflow.controls:
        if control.annotator is None:
            maps.append(source)
            continue
        annotator = g.add(control.annotator, image=source,
                          **({"mask": mask} if takes_mask(specs[control.annotator]) else {}))
        maps.append(annotator.out(0))
        g.add("SaveImage", title=f"Control map: {specs[control.annotator].display_name}", images=annotator.out(0),
              filename_prefix=f"controlnet_suite/{workflow.name}_map")
    loaders = {name: g.add("CNS_ControlNetLoader", control_net_name=name, properties=_models_property(name, "controlnet"))
               for name in workflow.controlnet_files}
    positive = g.add("CLIPTextEncode", title="Positive prompt", text=workflow.prompt, clip=checkpoint.out("CLIP"))
    negative = g.add("CLIPTextEncode", title="Negative prompt", text=workflow.negative, clip=checkpoint.out("CLIP"))
    if workflow.controls[0].union_type:  # every map a condition of one ControlNet Union, fused in one pass
        conditions = None
        for control, control_map in zip(workflow.controls, maps):
            conditions = g.add("CNS_UnionCondition", image=control_map, control_type=control.union_type,
                               weight=control.strength,
                               **({"union_conditions": conditions.out(0)} if conditions is not None else {}))
        conditioned = g.add("CNS_ApplyControlNetUnion", positive=positive.out(0), negative=negative.out(0),
                            control_net=loaders[UNION_FILE].out(0), union_conditions=conditions.out(0),
                            control_mode=workflow.control_mode)
    elif len(workflow.controls) == 1:
        (control,) = workflow.controls
        options = {}
        if workflow.strength_schedule:
            keyframes, interpolation = workflow.strength_schedule
            schedule = g.add("CNS_StrengthSchedule", keyframes=keyframes, interpolation=interpolation)
            options["strength_schedule"] = schedule.out(0)
        if workflow.latent_strengths:
            index_strengths, other_latents = workflow.latent_strengths
            strengths = g.add("CNS_LatentStrengths", index_strengths=index_strengths, other_latents=other_latents)
            options["latent_strengths"] = strengths.out(0)
        conditioned = g.add("CNS_ApplyControlNet", positive=positive.out(0), negative=negative.out(0),
                            control_net=loaders[control.file_name].out(0), image=maps[0], strength=control.strength,
                            control_mode=workflow.control_mode, **options)
    else:
        stack = None
        for control, control_map in zip(workflow.controls, maps):
            entry = g.add("CNS_ControlStackEntry", control_net=loaders[control.file_name].out(0), image=control_map,
                          strength=control.strength, control_mode=workflow.control_mode,
                          **({"control_stack": stack.out(0)} if stack is not None else {}))
            stack = entry
        conditioned = g.add("CNS_ApplyControlStack", positive=positive.out(0), negative=negative.out(0),
                            control_stack=stack.out(0))
    if workflow.img2img:
        latent = g.add("VAEEncode", pixels=source, vae=checkpoint.out("VAE"))
        if workflow.inpaint:
            latent = g.add("SetLatentNoiseMask", samples=latent.out(0), mask=mask)
    else:
        latent = g.add("EmptyLatentImage", width=workflow.base.side, height=workflow.base.side,
                       batch_size=workflow.batch_size)
    sampler = g.add("KSampler", model=checkpoint.out("MODEL"), positive=conditioned.out(0), negative=conditioned.out(1),
                    latent_image=latent.out(0), seed=SEED, steps=STEPS, cfg=workflow.cfg, sampler_name=SAMPLER,
                    scheduler=SCHEDULER, denoise=workflow.denoise)
    result = g.add("VAEDecode", samples=sampler.out(0), vae=checkpoint.out("VAE")).out(0)
    if workflow.inpaint:  # the photo itself outside the mask, not its trip through the VAE
        result = g.add("ImageCompositeMasked", title="Result blended into the photo", destination=source,
                       source=result, x=0, y=0, resize_source=False, mask=mask).out(0)
    g.add("SaveImage", title=RESULT_TITLE, images=result, filename_prefix=f"controlnet_suite/{workflow.name}")
    g.add_note(note_text(workflow))
    return g


def node_specs(node_classes: Mapping[str, type], display_names: Mapping[str, str]) -> dict[str, NodeSpec]:
    return {name: node_spec(name, cls, display_names.get(name)) for name, cls in node_classes.items()
            if hasattr(cls, "INPUT_TYPES") and hasattr(cls, "RETURN_TYPES")}


def comfy_specs() -> dict[str, NodeSpec]:
    """Specs of every V1 node ComfyUI has registered, the pack's included (boots ComfyUI)."""
    from . import headless

    comfy = headless.boot()
    return node_specs(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)


def missing_node_types(workflow: Workflow, specs: Mapping[str, NodeSpec]) -> list[str]:
    return sorted(t for t in workflow.class_types if t not in specs)


def render(workflow: Workflow, specs: Mapping[str, NodeSpec]) -> tuple[str, str]:
    """(UI JSON text, API JSON text)."""
    graph = build_graph(workflow, specs)
    return _dump(graph.to_ui()), _dump(graph.to_api())


def _dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def paths(name: str) -> tuple[Path, Path]:
    return WORKFLOWS_DIR / f"{name}.json", API_DIR / f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    specs = comfy_specs()
    API_DIR.mkdir(exist_ok=True)
    stale, skipped = [], []
    for workflow in WORKFLOWS:
        missing = missing_node_types(workflow, specs)
        if missing:
            skipped.append(f"{workflow.name} (node types not registered: {', '.join(missing)})")
            continue
        for path, text in zip(paths(workflow.name), render(workflow, specs)):
            if args.check:
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    stale.append(str(path))
            else:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(WORKFLOWS_DIR.parent)}")
    for line in skipped:
        print(f"SKIPPED {line}", file=sys.stderr)
    if stale:
        print("out of date (run python -m workflows.build): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
