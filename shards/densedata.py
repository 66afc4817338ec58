"""Small real dense-probe data from pixels scikit-image ships (no download), in the layouts the
real datasets use, so `radio eval seg|depth|correspondence` run offline and in CI.

- **seg** (:func:`write_seg_data`): mosaics of the CC0 textures ``brick``, ``grass`` and
  ``gravel`` and of grey photo regions (a fourth class, "background"), in random-rectangle or
  Voronoi layouts; the labels are exact, and a 1-pixel line between two regions is "other"
  (ADE20k's 0, VOC's 255: ignored). Every region is a window of its source picture; training
  windows come from source rows ``TRAIN_ROWS``, validation windows from ``VAL_ROWS``, so no
  validation pixel was ever seen in training. Layout ``ade`` (ADEChallengeData2016) or ``voc``
  (VOCdevkit/VOC2012).
- **depth** (:func:`write_depth_data`): windows of the left view of Middlebury 2014
  ``motorcycle`` (``skimage.data.stereo_motorcycle``), depth from its ground-truth disparity
  and calibration, written as the NYU Depth v2 GeoNet ``.mat`` files Probe3D trains on; Probe3D
  takes every 20th file as validation, so those files are cut from columns ``DEPTH_VAL_COLS`` and
  all others from ``DEPTH_TRAIN_COLS``. Unknown disparity (non-finite) is depth 0, NYU's "missing".
- **stereo** (:func:`write_stereo_data`): the same pair in the Middlebury layout (``im0.png``,
  ``im1.png``, ``disp0GT.pfm`` with ``inf`` where unknown, ``calib.txt``), and one pair with a
  correspondence list (``matches.csv``) made from that disparity.

These validate the code path and give a small real signal; paper-comparable numbers need
ADE20k / NYUv2 on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .pfm import write_pfm

TEXTURES = ("brick", "grass", "gravel")
BACKGROUND_PHOTOS = ("camera", "astronaut")
SEG_CLASSES = (*TEXTURES, "background")
"""Class ``i`` of the mosaics: ADE20k label ``i + 1``; VOC puts background first (label 0)."""
TRAIN_ROWS = (0, 368)
VAL_ROWS = (384, 512)
"""Source rows (of the 512 x 512 textures and photos) that training and validation windows come from."""
SEG_SIZE = (120, 150)
"""Mosaic height and width: not multiples of a patch, so the full-resolution scoring is exercised."""

# Middlebury 2014 motorcycle (calib.txt of the full 2964 x 1988 pair); skimage ships it at 1/4.
MOTORCYCLE_SCALE = 741 / 2964
MOTORCYCLE_F = 3979.911
MOTORCYCLE_DOFFS = 124.343
MOTORCYCLE_BASELINE_MM = 193.001
DEPTH_SIZE = (120, 160)  # NYU's 3:4
DEPTH_TRAIN_COLS = (0, 480)
DEPTH_VAL_COLS = (500, 741)
NYU_MEAN_BGR = (122.175, 116.169, 103.508)
"""GeoNet's ``.mat`` files hold ``img - 2 * mean`` (Probe3D adds ``2 * mean`` back)."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _grey(name: str) -> np.ndarray:
    """A bundled picture as ``[512, 512] uint8`` grey (colour would make the classes trivial)."""
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.ndim == 3:
        a = (a[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    if a.shape[:2] != (512, 512):
        raise ValueError(f"skimage.data.{name} is {a.shape}, expected 512 x 512")
    return a


def mosaic_labels(rng: np.random.Generator, size: tuple[int, int], layout: str, classes: int) -> np.ndarray:
    """``[H, W] int64`` class map: Voronoi cells of 3-6 random seeds, or 2-4 random rectangles
    over a random base class; at least two classes appear."""
    h, w = size
    while True:
        if layout == "voronoi":
            n = int(rng.integers(3, 7))
            seeds = rng.uniform([0, 0], [h, w], size=(n, 2))
            cls = rng.integers(0, classes, size=n)
            yy, xx = np.mgrid[0:h, 0:w]
            d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
            labels = cls[d.argmin(-1)]
        else:
            labels = np.full((h, w), rng.integers(0, classes), dtype=np.int64)
            for _ in range(int(rng.integers(2, 5))):
                rh, rw = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))
                y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
                labels[y : y + rh, x : x + rw] = rng.integers(0, classes)
        if len(np.unique(labels)) >= 2:
            return labels.astype(np.int64)


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """``[H, W] bool``: pixels whose right or lower neighbour has another class (1-pixel lines)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def _window(rng: np.random.Generator, source: np.ndarray, rows: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    y = int(rng.integers(rows[0], rows[1] - h + 1))
    x = int(rng.integers(0, source.shape[1] - w + 1))
    return source[y : y + h, x : x + w]


def mosaic(rng: np.random.Generator, split: str, layout: str, sources: dict[str, np.ndarray]) -> tuple:
    """One mosaic: ``(image [H, W, 3] uint8, classes [H, W] int64, boundary [H, W] bool)``; class
    ``i`` pixels are a window of ``SEG_CLASSES[i]``'s source from the split's rows."""
    rows = TRAIN_ROWS if split == "train" else VAL_ROWS
    labels = mosaic_labels(rng, SEG_SIZE, layout, len(SEG_CLASSES))
    image = np.zeros(SEG_SIZE, dtype=np.uint8)
    for i, name in enumerate(SEG_CLASSES):
        src = sources[name if name != "background" else BACKGROUND_PHOTOS[int(rng.integers(len(BACKGROUND_PHOTOS)))]]
        win = _window(rng, src, rows, SEG_SIZE)
        image[labels == i] = win[labels == i]
    return np.stack([image] * 3, axis=-1), labels, region_boundaries(labels)


@dataclass(frozen=True)
class DenseDataSummary:
    out: Path  # the dataset root a probe's --data takes
    train: int
    val: int


def _voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved class index), 256 RGB entries."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_seg_data(
    out: str | Path, *, train: int = 32, val: int = 8, seed: int = 0, layout: str = "ade"
) -> DenseDataSummary:
    """Texture mosaics under ``out`` in the ADE20k (``layout="ade"``) or VOC 2012 (``"voc"``) layout.

    ADE20k: ``ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_NNNNNNNN.jpg``,
    ``annotations/.../*.png`` (uint8: 0 = other, class i = i + 1) and ``objectInfo150.txt``
    (here 4 rows). VOC: ``VOCdevkit/VOC2012/JPEGImages/*.jpg``, ``SegmentationClass/*.png``
    (palette; 0 = background, 255 = void) and ``ImageSets/Segmentation/{train,val}.txt``.
    Mosaic ``i`` is Voronoi for even ``i``, rectangles for odd.
    """
    if train < 1 or val < 1:
        raise ValueError("a segmentation set needs at least 1 train and 1 val image")
    if layout not in ("ade", "voc"):
        raise ValueError(f"unknown segmentation layout {layout!r} (known: ade, voc)")
    rng = np.random.default_rng(seed)
    sources = {n: _grey(n) for n in (*TEXTURES, *BACKGROUND_PHOTOS)}
    out = Path(out)
    root = out / ("ADEChallengeData2016" if layout == "ade" else "VOCdevkit/VOC2012")
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            image, labels, edge = mosaic(rng, split, "voronoi" if i % 2 == 0 else "rects", sources)
            if layout == "ade":
                folder = "training" if split == "train" else "validation"
                stem = f"ADE_{split}_{i + 1:08d}"
                ann = np.where(edge, 0, labels + 1).astype(np.uint8)
                img_path = root / "images" / folder / f"{stem}.jpg"
                ann_path = root / "annotations" / folder / f"{stem}.png"
                ann_img = Image.fromarray(ann)
            else:
                stem = f"2007_{split}{i:05d}"
                voc = np.where(labels == SEG_CLASSES.index("background"), 0, labels + 1)
                ann = np.where(edge, 255, voc).astype(np.uint8)
                img_path = root / "JPEGImages" / f"{stem}.jpg"
                ann_path = root / "SegmentationClass" / f"{stem}.png"
                ann_img = Image.fromarray(ann, mode="P")
                ann_img.putpalette(_voc_palette())
            img_path.parent.mkdir(parents=True, exist_ok=True)
            ann_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img_path, quality=92)
            ann_img.save(ann_path)
            names[split].append(stem)
    if layout == "ade":
        rows = ["Idx\tRatio\tTrain\tVal\tName"] + [
            f"{i + 1}\t0.25\t{train}\t{val}\t{name}" for i, name in enumerate(SEG_CLASSES)
        ]
        (root / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    else:
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            (sets / f"{split}.txt").write_text("\n".join(names[split]) + "\n")
    return DenseDataSummary(root, train, val)


def motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """skimage's Middlebury 2014 motorcycle at 1/4 scale: ``left, right [500, 741, 3] uint8``,
    ``disparity [500, 741] float32`` of the left view (non-finite: unknown)."""
    import skimage.data

    left, right, disp = skimage.data.stereo_motorcycle()
    return np.asarray(left), np.asarray(right), np.asarray(disp, dtype=np.float32)


def disparity_to_depth(disp: np.ndarray) -> np.ndarray:
    """Metres from quarter-scale disparity: ``baseline * f / (d + doffs)`` with Middlebury's
    calibration scaled by 1/4; unknown (non-finite or negative total) is 0."""
    f, doffs = MOTORCYCLE_F * MOTORCYCLE_SCALE, MOTORCYCLE_DOFFS * MOTORCYCLE_SCALE
    total = disp.astype(np.float64) + doffs
    ok = np.isfinite(total) & (total > 0)
    depth = np.zeros(disp.shape, dtype=np.float64)
    depth[ok] = MOTORCYCLE_BASELINE_MM * f / total[ok] / 1000.0
    return depth.astype(np.float32)


def depth_normals(depth: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` unit normals from depth gradients (a rough stand-in for GeoNet's ``norm``)."""
    gy, gx = np.gradient(depth.astype(np.float64))
    n = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def write_depth_data(out: str | Path, *, files: int = 60, seed: int = 0) -> DenseDataSummary:
    """``files`` GeoNet-style ``OUT/nyu_geonet/motorcycle_NNNN_out-NNNNN.mat`` (``img``: RGB minus
    twice NYU's mean, ``depth`` in metres, ``norm``); files ``i % 20 == 0`` (Probe3D's
    validation) come from ``DEPTH_VAL_COLS`` of the view, the rest from ``DEPTH_TRAIN_COLS``."""
    import scipy.io

    if files < 21:
        raise ValueError("a depth set needs at least 21 files (Probe3D validates on every 20th: 2 or more)")
    rng = np.random.default_rng(seed)
    left, _, disp = motorcycle()
    depth = disparity_to_depth(disp)
    root = Path(out) / "nyu_geonet"
    root.mkdir(parents=True, exist_ok=True)
    h, w = DEPTH_SIZE
    n_val = 0
    for i in range(files):
        cols = DEPTH_VAL_COLS if i % 20 == 0 else DEPTH_TRAIN_COLS
        n_val += i % 20 == 0
        y = int(rng.integers(0, left.shape[0] - h + 1))
        x = int(rng.integers(cols[0], cols[1] - w + 1))
        img = left[y : y + h, x : x + w].astype(np.float64) - 2 * np.asarray(NYU_MEAN_BGR)
        d = depth[y : y + h, x : x + w]
        scipy.io.savemat(
            root / f"motorcycle_{i // 20:04d}_out-{i:05d}.mat",
            {"img": img.astype(np.float32), "depth": d, "norm": depth_normals(d)},
        )
    return DenseDataSummary(root, files - n_val, n_val)


def write_stereo_data(out: str | Path, *, matches: int = 500, seed: int = 0) -> DenseDataSummary:
    """``OUT/MiddEval3/trainingQ/Motorcycle/`` (``im0.png``, ``im1.png``, ``disp0GT.pfm``,
    ``calib.txt``) and ``OUT/pairs/motorcycle_shifted/`` (``im0.png``, ``im1.png``: the right
    view without its first 24 rows and 40 columns, ``matches.csv``: ``x0,y0,x1,y1`` pixel
    centres of ``matches`` random known points). Both pairs are under the returned ``out``."""
    rng = np.random.default_rng(seed)
    left, right, disp = motorcycle()
    scene = Path(out) / "MiddEval3" / "trainingQ" / "Motorcycle"
    scene.mkdir(parents=True, exist_ok=True)
    Image.fromarray(left).save(scene / "im0.png")
    Image.fromarray(right).save(scene / "im1.png")
    write_pfm(scene / "disp0GT.pfm", np.where(np.isfinite(disp), disp, np.inf))
    f, doffs = MOTORCYCLE_F * MOTORCYCLE_SCALE, MOTORCYCLE_DOFFS * MOTORCYCLE_SCALE
    h, w = disp.shape
    (scene / "calib.txt").write_text(
        f"cam0=[{f:.3f} 0 {1244.772 * MOTORCYCLE_SCALE:.3f}; 0 {f:.3f} {1019.507 * MOTORCYCLE_SCALE:.3f}; 0 0 1]\n"
        f"cam1=[{f:.3f} 0 {1369.115 * MOTORCYCLE_SCALE:.3f}; 0 {f:.3f} {1019.507 * MOTORCYCLE_SCALE:.3f}; 0 0 1]\n"
        f"doffs={doffs:.3f}\nbaseline={MOTORCYCLE_BASELINE_MM}\nwidth={w}\nheight={h}\nndisp=70\n"
    )
    dy, dx = 24, 40
    pair = Path(out) / "pairs" / "motorcycle_shifted"
    pair.mkdir(parents=True, exist_ok=True)
    Image.fromarray(left).save(pair / "im0.png")
    Image.fromarray(np.ascontiguousarray(right[dy:, dx:])).save(pair / "im1.png")
    ys, xs = np.nonzero(np.isfinite(disp))
    x1 = xs - disp[ys, xs] - dx
    keep = np.nonzero((x1 >= 0) & (ys - dy >= 0))[0]
    pick = rng.choice(keep, size=min(matches, len(keep)), replace=False)
    rows = ["x0,y0,x1,y1"] + [f"{xs[i]},{ys[i]},{x1[i]:.3f},{ys[i] - dy}" for i in pick]
    (pair / "matches.csv").write_text("\n".join(rows) + "\n")
    return DenseDataSummary(Path(out), 2, 0)
