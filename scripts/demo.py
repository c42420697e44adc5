"""The main job on an embedded default: the pack inside ComfyUI, headless.

1. A photo: yours (--photo), or a generated one (a house, a figure, a sky).
2. Every weight-free annotator node of the pack, run by ComfyUI's executor on that photo.
3. One shared workflow from workflows/api/ (default: canny), validated and executed end to end
   by ComfyUI's executor: annotator -> ControlNet -> KSampler -> VAE -> image.
Control maps and result images are written to --output (default output/demo/).

Weights: every file the workflow names is looked up in ComfyUI's model folders first
(models/checkpoints, models/controlnet, models/annotators) and used when present. Each missing
file is generated with RANDOM weights under the standard name in <output>/models/ (the SD1.5 or
SDXL checkpoint in a small configuration ComfyUI still detects as such): the pipeline then runs for
real, but the images it draws are noise. The output says which files were random.

Needs a ComfyUI checkout: $COMFYUI_PATH, the folder above custom_nodes/ when the pack is
installed there, or ~/comfy/ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workflows import build, headless  # noqa: E402
from workflows.example_image import EXAMPLE_IMAGE, write_example_photo  # noqa: E402
from workflows.graph import Graph  # noqa: E402
from workflows.models_folder import provide_models  # noqa: E402

# On a CPU, full-size SD1.5 sampling takes minutes per image; these defaults keep the demo short.
DEFAULT_SIDE = 256
DEFAULT_STEPS = 10
LATENT_FACTOR = 8       # pixels per latent cell: an image side the VAE encodes without cropping
HALF_TRANSPARENT = 128  # alpha below it: Load Image's mask (1 - alpha / 255) is above Inpaint Hint's 0.5
# Annotators that read a gray map rather than a photo get Binary's map: as a label map (labels 0
# and 255: palette class 0, and off the palette) and as a depth map (two planes).
FED_BY = {"CNS_ColorizeSegmentation": "CNS_Binary", "CNS_NormalFromDepth": "CNS_Binary"}


def weight_free_annotators(comfy: headless.Comfy) -> list[str]:
    """The pack's annotator node ids that need no weight file, in the pack's own order: the
    AnnotatorNodes, which make a map of an image (not Draw Pose Keypoints, which reads keypoints,
    nor Restore Brightness, which reads a generated image and a map)."""
    pack = sys.modules[str(headless.REPO_ROOT).replace(".", "_x_")]
    weight_free = pack.nodes.preprocessors_weight_free
    return [node_id for node_id, (cls, _) in weight_free.NODES.items() if issubclass(cls, weight_free.AnnotatorNode)]


def annotators_prompt(specs, node_ids: list[str]) -> tuple[dict, dict[str, str]]:
    """Load Image -> every annotator -> Save Image; returns (API prompt, save node id -> annotator)."""
    g = Graph(specs)
    photo = g.add("LoadImage", image=EXAMPLE_IMAGE)
    saves, made = {}, {}
    for node_id in sorted(node_ids, key=lambda n: n in FED_BY):
        spec = specs[node_id]
        links = {"image": made[FED_BY[node_id]].out(0) if node_id in FED_BY else photo.out("IMAGE")}
        if build.takes_mask(spec):
            links["mask"] = photo.out("MASK")
        annotator = made[node_id] = g.add(node_id, **links)
        save = g.add("SaveImage", images=annotator.out(0), filename_prefix=f"maps/{node_id.removeprefix('CNS_')}")
        saves[str(save.id)] = node_id
    return g.to_api(), saves


def sized(prompt: dict, side: int, steps: int, photo_side: int) -> dict:
    """The prompt sampling images of about `side` pixels (an img2img workflow enlarges the photo,
    whose longer side is `photo_side`, to it), in `steps` steps."""
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"]["width"] = node["inputs"]["height"] = side
        elif node["class_type"] == "ImageScaleBy":
            node["inputs"]["scale_by"] = side / photo_side
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return prompt


def with_photo_at_side(prompt: dict, photo: Path, side: int) -> dict:
    """The prompt loading a copy of the photo whose longer side is `side` px (each side a multiple
    of the VAE's 8), written next to it, transparency included: for inpaint, which samples the
    photo at its own size."""
    from PIL import Image

    with Image.open(photo) as image:
        scale = side / max(image.size)
        size = tuple(max(LATENT_FACTOR, round(n * scale / LATENT_FACTOR) * LATENT_FACTOR) for n in image.size)
        scaled = photo.with_name(f"{photo.stem}_{side}px.png")
        image.resize(size, Image.LANCZOS).save(scaled)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = scaled.name
    return prompt


def marks_a_region(photo: Path) -> bool:
    """Whether Load Image finds a region to inpaint in the photo: its MASK is 1 - alpha, so a pixel
    more than half transparent (a photo without transparency gives an empty mask)."""
    from PIL import Image

    with Image.open(photo) as image:
        if "A" not in image.getbands() and "transparency" not in image.info:
            return False
        lowest_alpha, _ = image.convert("RGBA").getchannel("A").getextrema()
    return lowest_alpha < HALF_TRANSPARENT


def saved_files(output_dir: Path, ui: dict, node_ids) -> list[Path]:
    files = []
    for node_id in node_ids:
        for image in ui.get(node_id, {}).get("images", []):
            files.append(output_dir / image["subfolder"] / image["filename"])
    return files


CONTACT_SHEET_TILE = 192  # px per picture in the contact sheet of the maps
CONTACT_SHEET_COLUMNS = 6


def contact_sheet(pictures: list[tuple[str, Path]], path: Path) -> None:
    """One labelled grid of the photo and every map (the README's annotator picture)."""
    import cv2
    import numpy as np

    label_height = 22
    tiles = []
    for label, picture in pictures:
        image = cv2.imread(str(picture), cv2.IMREAD_COLOR)
        tile = np.full((CONTACT_SHEET_TILE + label_height, CONTACT_SHEET_TILE, 3), 255, np.uint8)
        tile[label_height:] = cv2.resize(image, (CONTACT_SHEET_TILE, CONTACT_SHEET_TILE), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % CONTACT_SHEET_COLUMNS:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i:i + CONTACT_SHEET_COLUMNS]) for i in range(0, len(tiles), CONTACT_SHEET_COLUMNS)]
    cv2.imwrite(str(path), np.vstack(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, help="your photo (default: a generated one)")
    parser.add_argument("--workflow", default="canny", choices=[w.name for w in build.WORKFLOWS],
                        help="the shared workflow to run (workflows/api/<name>.json)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "output" / "demo")
    parser.add_argument("--size", type=int, default=DEFAULT_SIDE, help=(
        f"image side in pixels (the workflows': {build.SIDE}, SDXL ones {build.SDXL_SIDE})"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (workflow: {build.STEPS})")
    args = parser.parse_args()
    workflow = next(w for w in build.WORKFLOWS if w.name == args.workflow)
    if args.photo and workflow.inpaint and not marks_a_region(args.photo):
        print(f"The inpaint workflow repaints the photo's transparent pixels, and {args.photo} has none.\n"
              "Pass a PNG whose transparent (alpha) pixels mark the region to repaint.", file=sys.stderr)
        return 2

    root, why_not = headless.find_comfyui()
    if root is None:
        print(f"The demo runs the pack inside ComfyUI, and {why_not}.\n"
              "Set COMFYUI_PATH to a ComfyUI checkout (or clone this pack into ComfyUI/custom_nodes/).",
              file=sys.stderr)
        return 2
    import torch
    from PIL import Image

    started = time.perf_counter()
    comfy = headless.boot(root, cpu=not torch.cuda.is_available())
    print(f"ComfyUI {root} started with the pack in {time.perf_counter() - started:.0f} s")

    output = args.output.resolve()
    comfy.set_io_folders(str(output / "input"), str(output))
    photo_path = output / "input" / EXAMPLE_IMAGE
    if args.photo:
        Image.open(args.photo).save(photo_path)
        print(f"Photo: {args.photo}")
    else:
        write_example_photo(str(photo_path))
        print(f"Photo: generated (no photo ships with the pack): {photo_path}")

    checkpoints, controlnets = build.model_files((workflow,))
    report = provide_models(comfy, str(output / "models"), prefer_real=True,
                            annotator_files=build.annotator_files((workflow,)),
                            checkpoint_files=checkpoints, controlnet_files=controlnets)
    for line in report.real:
        print(f"Real weights: {line}")
    if report.random:
        print("RANDOM WEIGHTS (real files not found in ComfyUI's model folders; images will be noise):")
        for line in report.random:
            print(f"  {line}  (generated in {output / 'models'})")
        print(f"  Put the real files in ComfyUI's folders to use them: see the note in workflows/{workflow.name}.json.")
    if report.unavailable:
        print(f"Not in this checkout (annotator module missing): {', '.join(report.unavailable)}")

    specs = build.comfy_specs()
    annotators = weight_free_annotators(comfy)
    if not marks_a_region(photo_path):
        annotators.remove("CNS_InpaintHint")
        print("\nInpaint Hint left out: the photo has no transparent pixels to mark the region to inpaint")
    prompt, saves = annotators_prompt(specs, annotators)
    started = time.perf_counter()
    result = comfy.run(prompt)
    maps = saved_files(output, result.ui, saves)
    print(f"\nWeight-free annotators ({len(annotators)} nodes, {time.perf_counter() - started:.1f} s): "
          + ", ".join(annotators))
    if not args.photo:
        print("  (Inpaint Hint masks the photo's transparent region; Normal Map from Depth and Colourize "
              "Segmentation read Binary's map as a two-plane depth map and a two-label map)")
    for path in maps:
        print(f"  {path.relative_to(output)}")
    sheet = output / "annotators.png"
    contact_sheet([("photo", photo_path)] + [(p.name.rsplit("_", 2)[0], p) for p in maps], sheet)
    print(f"  all of them on one sheet: {sheet.relative_to(output)}")

    api_path = build.paths(workflow.name)[1]
    photo_side = max(Image.open(photo_path).size)
    workflow_prompt = sized(json.loads(api_path.read_text(encoding="utf-8")), args.size, args.steps, photo_side)
    if workflow.inpaint:
        workflow_prompt = with_photo_at_side(workflow_prompt, photo_path, args.size)
    started = time.perf_counter()
    result = comfy.run(workflow_prompt)
    save_nodes = [n for n, node in workflow_prompt.items() if node["class_type"] == "SaveImage"]
    (result_node,) = [n for n in save_nodes if workflow_prompt[n]["_meta"]["title"] == build.RESULT_TITLE]
    width, height = Image.open(saved_files(output, result.ui, [result_node])[0]).size
    print(f"\nShared workflow {api_path.relative_to(REPO_ROOT)} ({width}x{height}, {args.steps} steps, "
          f"{time.perf_counter() - started:.1f} s):")
    for path in saved_files(output, result.ui, save_nodes):
        print(f"  {path.relative_to(output)}")
    if report.random:
        print("\nThe result was sampled with RANDOM weights: it shows that the pipeline runs, not what it draws.")
    print(f"\nEverything is in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
