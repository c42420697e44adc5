"""Training data: folders of (image, condition image, prompt) triples, and the encoded form the
loop trains on.

A dataset folder:

    dataset/
      images/       cat.png  dog.jpg ...     the target images
      images/       cat.txt  dog.txt ...     the prompts (UTF-8 text beside each image; missing = "")
      conditions/   cat.png  dog.png ...     the condition maps, same stem as the image

Without `conditions/`, name an annotator and the conditions are made once with the annotators'
batch tool (`annotators.batch.run`) and kept in `conditions/` for the next run.

The loop never sees pixels or text: `EncodedDataset` holds latents (the VAE's encoding, already
scaled), hints (condition maps in 0..1, channels first) and text encodings, plus the encoding of
the empty prompt for prompt dropout. With the base locked nothing upstream of the U-Net trains,
so this is computed once ("latents and text encodings cached").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGES, CONDITIONS = "images", "conditions"
ENCODED_FORMAT = "controlnet-suite-encoded-dataset/1"
LATENT_SCALE = 8  # SD's VAE: one latent pixel per 8x8 image pixels, so hints are 8x the latent


@dataclass
class Triple:
    name: str
    image: np.ndarray  # HxWx3 float32 in -1..1 (the target, as the VAE takes it)
    condition: np.ndarray  # HxWxC float32 in 0..1 (the paper's hint range)
    prompt: str


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"'{path}' is not an image OpenCV can read: convert it to PNG or JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def square_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """Short side scaled to `resolution`, then the centre `resolution` x `resolution` square."""
    height, width = image.shape[:2]
    scale = resolution / min(height, width)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - resolution) // 2, (resized.shape[1] - resolution) // 2
    return resized[top:top + resolution, left:left + resolution]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def make_conditions(
    root: Path, annotator: str, params: Mapping[str, object] | None = None, weights_dirs: Sequence[str] = ()
) -> Path:
    """conditions/ from images/ with one annotator (the annotators' batch tool)."""
    try:
        from ..annotators import batch
    except ImportError:  # `training` is the top-level package
        from annotators import batch  # type: ignore[no-redef]
    if annotator not in batch.ANNOTATORS and annotator not in batch.LEARNED:
        raise ValueError(batch.unknown_annotator_message(annotator))
    batch.run(annotator, root / IMAGES, root / CONDITIONS, dict(params or {}), list(weights_dirs))
    return root / CONDITIONS


def read_triples(
    root: str | Path,
    resolution: int,
    annotator: str | None = None,
    annotator_params: Mapping[str, object] | None = None,
    weights_dirs: Sequence[str] = (),
) -> list[Triple]:
    """Every image of `root/images` with its condition and prompt, as square crops."""
    root = Path(root)
    if not (root / IMAGES).is_dir():
        raise ValueError(f"'{root}' has no '{IMAGES}/' folder: put the target images in '{root / IMAGES}'")
    if not (root / CONDITIONS).is_dir():
        if annotator is None:
            raise ValueError(
                f"'{root}' has no '{CONDITIONS}/' folder: add the condition maps there (same names as the images) "
                "or name an annotator to make them"
            )
        make_conditions(root, annotator, annotator_params, weights_dirs)
    conditions = {p.stem: p for p in _images(root / CONDITIONS)}
    triples, missing = [], []
    for path in _images(root / IMAGES):
        if path.stem not in conditions:
            missing.append(path.name)
            continue
        prompt_file = path.with_suffix(".txt")
        prompt = prompt_file.read_text(encoding="utf-8").strip() if prompt_file.exists() else ""
        image = square_crop(_read_rgb(path), resolution).astype(np.float32) / 127.5 - 1.0
        condition = square_crop(_read_rgb(conditions[path.stem]), resolution).astype(np.float32) / 255.0
        triples.append(Triple(path.stem, image, condition, prompt))
    if missing:
        raise ValueError(f"no condition map in '{root / CONDITIONS}' for: {', '.join(missing[:10])}")
    if not triples:
        raise ValueError(f"'{root / IMAGES}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return triples


@dataclass
class EncodedDataset:
    """What the loop trains on; row i of each tensor is example i."""

    latents: torch.Tensor  # N x C x h x w
    hints: torch.Tensor  # N x Ch x (8h) x (8w), 0..1 (pixel-space models: N x Ch x h x w)
    contexts: torch.Tensor  # N x T x D text encodings
    empty_context: torch.Tensor  # T x D, the empty prompt's encoding
    ys: torch.Tensor | None = None  # N x A (SDXL: pooled text + size embedding)
    empty_y: torch.Tensor | None = None  # A

    def __post_init__(self) -> None:
        n = len(self.latents)
        rows = {"hints": len(self.hints), "contexts": len(self.contexts)}
        if self.ys is not None:
            rows["ys"] = len(self.ys)
        wrong = {k: v for k, v in rows.items() if v != n}
        if wrong:
            raise ValueError(f"the encoded dataset has {n} latents but {wrong}: every tensor needs one row per example")
        if tuple(self.empty_context.shape) != tuple(self.contexts.shape[1:]):
            raise ValueError(
                f"the empty prompt's encoding has shape {tuple(self.empty_context.shape)}, the prompts' "
                f"{tuple(self.contexts.shape[1:])}: pad both to the same token count"
            )
        if (self.ys is None) != (self.empty_y is None):
            raise ValueError("give both ys and empty_y (SDXL) or neither")

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, index: torch.Tensor, drop_prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `index`; where drop_prompt is true the prompt is replaced by the empty one."""
        keep = ~drop_prompt
        contexts = torch.where(keep[:, None, None], self.contexts[index], self.empty_context[None])
        batch = {"latents": self.latents[index], "hints": self.hints[index], "contexts": contexts}
        if self.ys is not None and self.empty_y is not None:
            batch["ys"] = torch.where(keep[:, None], self.ys[index], self.empty_y[None])
        return batch

    def save(self, path: str) -> None:
        tensors = {"latents": self.latents, "hints": self.hints, "contexts": self.contexts, "empty_context": self.empty_context}
        if self.ys is not None and self.empty_y is not None:
            tensors.update(ys=self.ys, empty_y=self.empty_y)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": ENCODED_FORMAT}))

    @classmethod
    def load(cls, path: str) -> "EncodedDataset":
        tensors = load_file(path)
        needed = {"latents", "hints", "contexts", "empty_context"}
        if not needed <= set(tensors):
            raise ValueError(
                f"'{path}' is not an encoded dataset: it lacks {sorted(needed - set(tensors))} "
                "(write one with the Train ControlNet node's 'encoded_dataset' option or EncodedDataset.save)"
            )
        return cls(**{k: tensors.get(k) for k in ("latents", "hints", "contexts", "empty_context", "ys", "empty_y")})


def encode_triples(
    triples: Sequence[Triple],
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    encode_prompts: Callable[[list[str]], torch.Tensor],
    batch_size: int = 4,
) -> EncodedDataset:
    """Encode once: encode_images(N x 3 x H x W in -1..1) -> latents, encode_prompts(list of
    prompts) -> N x T x D (the empty prompt is encoded with the same function)."""
    latents, contexts = [], []
    for start in range(0, len(triples), batch_size):
        chunk = triples[start:start + batch_size]
        images = torch.from_numpy(np.stack([t.image for t in chunk])).permute(0, 3, 1, 2)
        latents.append(encode_images(images).float().cpu())
        contexts.append(encode_prompts([t.prompt for t in chunk]).float().cpu())
    hints = torch.from_numpy(np.stack([t.condition for t in triples])).permute(0, 3, 1, 2).contiguous()
    empty = encode_prompts([""]).float().cpu()[0]
    return EncodedDataset(torch.cat(latents), hints, torch.cat(contexts), empty)
