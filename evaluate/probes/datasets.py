"""The dense probes' dataset layouts, read as the real datasets ship them.

- **ADE20k** (``ADEChallengeData2016/``): ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (same stem; uint8, 0 = "other"). As mmseg's
  ``reduce_zero_label``: 0 is ignored, label ``k`` is class ``k - 1``. Class names from
  ``objectInfo150.txt`` (its last column), else 150 numbered classes.
- **Pascal VOC 2012** (``VOCdevkit/VOC2012/``): ``ImageSets/Segmentation/{train,val}.txt`` lists
  stems of ``JPEGImages/*.jpg`` and ``SegmentationClass/*.png`` (palette indices; 21 classes,
  255 = void, ignored).
- **NYU Depth v2 as Probe3D reads it** (the GeoNet training set): a folder of ``.mat`` files with
  ``img`` (RGB minus twice NYU's mean), ``depth`` (metres) and ``norm``; sorted by name, every
  20th file is validation. Probe3D's labeled test split is a pickle, which this project does not
  load (no pickles): convert it to such ``.mat`` files.
- **Middlebury stereo**: any folder with ``im0.png``, ``im1.png`` and ``disp0GT.pfm`` (or
  ``disp0.pfm``; ``inf`` = unknown): pixel ``(x, y)`` of ``im0`` is ``(x - d, y)`` of ``im1``.
- **Pairs with a correspondence list**: any folder with ``im0.png``, ``im1.png`` and
  ``matches.csv`` (header ``x0,y0,x1,y1``, pixel coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from radio.shards.images import ImageLimits, read_image_file
from radio.shards.pfm import read_pfm

from ..errors import EvalError
from .metrics import IGNORE

ADE_ROOT = "ADEChallengeData2016"
VOC_ROOT = "VOCdevkit/VOC2012"
ADE_SPLITS = {"train": "training", "val": "validation"}
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NYU_MEAN = np.asarray((122.175, 116.169, 103.508))
NYU_MAX_DEPTH = 10.0
NYU_SIZE = (480, 640)
PROBE3D_BAD_FILES = (21181, 6919)  # Probe3D drops these two of the real set's sorted files


def read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3] uint8`` through the one image-file reader (EXIF orientation, any mode)."""
    return read_image_file(path, ImageLimits())


@dataclass(frozen=True)
class SegSplit:
    """``images[i]`` with label map ``labels[i]``; ``reduce_zero``: ADE20k's 0 = ignore, k → k - 1."""

    root: Path
    layout: str  # "ade" or "voc"
    classes: tuple[str, ...]
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    reduce_zero: bool

    def label(self, i: int) -> np.ndarray:
        """``[H, W] int64`` classes, :data:`IGNORE` where unlabeled."""
        raw = np.asarray(Image.open(self.labels[i])).astype(np.int64)
        if raw.ndim != 2:
            raise EvalError(f"{self.labels[i]}: a label map must have one channel, it has shape {raw.shape}")
        if self.reduce_zero:
            raw = np.where(raw == 0, IGNORE + 1, raw) - 1
        return np.where((raw >= 0) & (raw < len(self.classes)), raw, IGNORE)


def find_seg_root(data: str | Path) -> tuple[Path, str]:
    """``(root, layout)`` for ``data``: the ADE20k or VOC root folder itself or a folder above it."""
    data = Path(data)
    for root, layout in ((data, "ade"), (data / ADE_ROOT, "ade"), (data, "voc"), (data / VOC_ROOT, "voc")):
        marker = root / "images" / "training" if layout == "ade" else root / "ImageSets" / "Segmentation"
        if marker.is_dir():
            return root, layout
    if (data / "VOC2012").is_dir():
        return find_seg_root(data / "VOC2012")
    raise EvalError(
        f"{data}: neither the ADE20k layout ({ADE_ROOT}/images/{{training,validation}}, annotations/...) "
        f"nor the Pascal VOC 2012 layout ({VOC_ROOT}/JPEGImages, SegmentationClass, ImageSets/Segmentation)"
    )


def _ade_classes(root: Path) -> tuple[str, ...]:
    info = root / "objectInfo150.txt"
    if not info.is_file():
        return tuple(f"class{i}" for i in range(1, 151))
    rows = [r.split("\t") for r in info.read_text().splitlines()[1:] if r.strip()]
    return tuple(r[-1].split(",")[0].strip() for r in rows)


def read_seg_split(data: str | Path, split: str) -> SegSplit:
    """The ``split`` ("train" or "val") of the ADE20k or VOC set at ``data`` (see module doc)."""
    root, layout = find_seg_root(data)
    if layout == "ade":
        folder = ADE_SPLITS[split]
        images = sorted((root / "images" / folder).glob("*.jpg"))
        labels = [root / "annotations" / folder / f"{p.stem}.png" for p in images]
        classes = _ade_classes(root)
    else:
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise EvalError(f"{root}: no ImageSets/Segmentation/{split}.txt")
        stems = [s.strip() for s in listing.read_text().split() if s.strip()]
        images = [root / "JPEGImages" / f"{s}.jpg" for s in stems]
        labels = [root / "SegmentationClass" / f"{s}.png" for s in stems]
        classes = VOC_CLASSES
    if not images:
        raise EvalError(f"{root}: no {split} images in the {layout.upper()} layout")
    missing = [str(p) for p in (*images, *labels) if not p.is_file()]
    if missing:
        raise EvalError(f"{root}: {len(missing)} file(s) of the {split} split are missing, e.g. {missing[0]}")
    return SegSplit(root, layout, classes, tuple(images), tuple(labels), reduce_zero=layout == "ade")


@dataclass(frozen=True)
class DepthSplit:
    root: Path
    files: tuple[Path, ...]

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image [H, W, 3] uint8, depth [H, W] float32 metres, 0 = unknown)`` as Probe3D reads
        a GeoNet file: the top-left 480 x 640, ``img + 2 * mean``, depth over 10 m unknown."""
        import scipy.io

        try:
            m = scipy.io.loadmat(self.files[i])
            img, depth = m["img"], m["depth"]
        except (ValueError, KeyError, OSError) as e:
            raise EvalError(f"{self.files[i]}: not a GeoNet .mat file with img and depth ({e})") from None
        img = np.clip(np.asarray(img, dtype=np.float64)[: NYU_SIZE[0], : NYU_SIZE[1]] + 2 * NYU_MEAN, 0, 255)
        depth = np.asarray(depth, dtype=np.float32)[: NYU_SIZE[0], : NYU_SIZE[1]].copy()
        depth[~np.isfinite(depth) | (depth > NYU_MAX_DEPTH)] = 0
        return img.astype(np.uint8), depth


def read_depth_split(data: str | Path, split: str) -> DepthSplit:
    """Probe3D's split of a GeoNet folder: ``val`` = files ``i % 20 == 0`` of the sorted list, ``train`` the rest."""
    data = Path(data)
    root = data / "nyu_geonet" if (data / "nyu_geonet").is_dir() else data
    files = sorted(root.glob("*.mat"))
    if not files:
        raise EvalError(f"{data}: no .mat files (expected the NYU Depth v2 GeoNet folder Probe3D trains on)")
    if len(files) > max(PROBE3D_BAD_FILES):
        for i in PROBE3D_BAD_FILES:
            del files[i]
    chosen = [f for i, f in enumerate(files) if (i % 20 == 0) == (split == "val")]
    if not chosen:
        raise EvalError(f"{root}: {len(files)} .mat files leave no {split} files (every 20th is validation)")
    return DepthSplit(root, tuple(chosen))


@dataclass(frozen=True)
class Pair:
    """Two views and ground-truth matches ``[N, 4]`` (x0, y0, x1, y1) in pixel coordinates."""

    name: str
    im0: Path
    im1: Path
    matches: np.ndarray


def _stereo_matches(disp: np.ndarray, width1: int) -> np.ndarray:
    ys, xs = np.nonzero(np.isfinite(disp) & (disp >= 0))
    x1 = xs - disp[ys, xs]
    keep = x1 >= 0
    return np.stack([xs[keep], ys[keep], x1[keep], ys[keep]], axis=1).astype(np.float64)


def read_pairs(data: str | Path) -> list[Pair]:
    """Every Middlebury scene and every correspondence-list pair under ``data`` (sorted by path)."""
    data = Path(data)
    if not data.is_dir():
        raise EvalError(f"{data}: no such folder")
    pairs = []
    for im0 in sorted(data.rglob("im0.png")):
        folder = im0.parent
        im1 = folder / "im1.png"
        if not im1.is_file():
            continue
        name = str(folder.relative_to(data)) if folder != data else folder.name
        disp = next((folder / f for f in ("disp0GT.pfm", "disp0.pfm") if (folder / f).is_file()), None)
        if disp is not None:
            try:
                d = read_pfm(disp)
            except ValueError as e:
                raise EvalError(str(e)) from None
            pairs.append(Pair(name, im0, im1, _stereo_matches(d, Image.open(im1).width)))
        elif (folder / "matches.csv").is_file():
            try:
                m = np.loadtxt(folder / "matches.csv", delimiter=",", skiprows=1, ndmin=2)
            except ValueError as e:
                raise EvalError(f"{folder / 'matches.csv'}: expected rows x0,y0,x1,y1 ({e})") from None
            if m.shape[1] != 4:
                raise EvalError(f"{folder / 'matches.csv'}: expected 4 columns x0,y0,x1,y1, found {m.shape[1]}")
            pairs.append(Pair(name, im0, im1, m))
    if not pairs:
        raise EvalError(
            f"{data}: no pairs (a folder with im0.png, im1.png and disp0GT.pfm, or im0.png, im1.png and matches.csv)"
        )
    return pairs
