"""Evaluation images from folders: a plain folder of pictures, or a labeled ImageFolder set.

Every image is read by the one image-file reader (:func:`radio.shards.images.read_image_file`,
which decodes as featurize does: EXIF orientation, any mode to RGB), cut to its largest centred square and resized to the requested
side with the trainer's resize (:func:`radio.shards.crops.crop_resize`, bicubic, antialiased).
A square centre crop resized to ``s`` is the usual "shortest side to ``s``, centre crop ``s``"
evaluation transform (notes/radio-code.md §2.10), and it keeps exactly the same content at every
resolution, which the scale-equivariance measure needs.

Labeled sets use the torchvision ImageFolder layout with a ``train/`` and a ``val/`` split::

    DIR/train/CLASS/*.jpg
    DIR/val/CLASS/*.jpg

Classes are the sub-folder names of ``train/`` in sorted order (`radio sample-data --labeled`
writes such a set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radio.shards.crops import choose_crop, crop_resize
from radio.shards.images import IMAGE_SUFFIXES, ImageLimits, read_image_file

from .errors import EvalError


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower().lstrip(".") in IMAGE_SUFFIXES


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted by path); a single file is a list of one."""
    folder = Path(folder)
    if _is_image(folder):
        return [folder]
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such image folder")
    found = sorted(p for p in folder.rglob("*") if _is_image(p))
    if not found:
        raise EvalError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def load_square(path: Path, size: int, limits: ImageLimits | None = None) -> np.ndarray:
    """The image's largest centred square resized to ``[size, size, 3] uint8``."""
    pixels = read_image_file(path, limits or ImageLimits())
    h, w = pixels.shape[:2]
    return crop_resize(pixels, choose_crop(0, "", w, h, "center_square", (1.0, 1.0)), size)


def to_batch(pixels: list[np.ndarray]) -> torch.Tensor:
    """``[H, W, 3] uint8`` arrays → images ``[B, 3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div_(255.0)


def load_batch(paths: list[Path], size: int) -> torch.Tensor:
    """Images ``[B, 3, size, size]`` in [0, 1] (see :func:`load_square`)."""
    return to_batch([load_square(p, size) for p in paths])


@dataclass(frozen=True)
class LabeledSplit:
    """One split of an ImageFolder set: ``paths[i]`` has class index ``labels[i]`` into ``classes``."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # [N] int64


def read_split(data: str | Path, split: str, classes: tuple[str, ...] | None = None) -> LabeledSplit:
    """``DATA/SPLIT/CLASS/*``; ``classes`` fixes the class list (another split's), else the sorted
    sub-folders. A class folder unknown to ``classes`` is an error."""
    root = Path(data) / split
    if not root.is_dir():
        raise EvalError(f"{data}: no {split}/ folder (expected ImageFolder layout DATA/{{train,val}}/CLASS/*.jpg)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise EvalError(f"{root}: no class folders (expected {root}/CLASS/*.jpg)")
    classes = tuple(classes) if classes is not None else tuple(folders)
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise EvalError(f"{root}: classes {', '.join(unknown)} are not in the train split")
    paths, labels = [], []
    for name in folders:
        files = sorted(p for p in (root / name).rglob("*") if _is_image(p))
        paths += files
        labels += [classes.index(name)] * len(files)
    if not paths:
        raise EvalError(f"{root}: no images in any class folder")
    return LabeledSplit(root, classes, tuple(paths), np.asarray(labels, dtype=np.int64))
