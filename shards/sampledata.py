"""Sample data in DataComp / img2dataset webdataset layout, made from scikit-image's bundled photos.

Per shard ``NNNNNNNN``: ``NNNNNNNN.tar`` (``KEY.jpg``, ``KEY.txt``, ``KEY.json`` per successful
sample, in a shuffled "download completion" order as img2dataset writes them),
``NNNNNNNN.parquet`` (every attempted sample, failures included) and ``NNNNNNNN_stats.json``.
Keys are DataComp's 12 digits: 8 of shard id, 4 of index in the input shard.

Images are distinct: random crops, scales, flips and JPEG qualities of real photos. Optional
*exotic* samples are valid images in unusual encodings (CMYK, 16-bit, RGBA, palette, grayscale,
EXIF-rotated); optional *corrupt* samples are the bad inputs a real crawl contains.

:func:`write_labeled_data` (``radio sample-data --labeled``) writes a small labeled set instead,
for kNN and zero-shot evaluation: torchvision ImageFolder layout, one class per source photo::

    OUT/train/CLASS/NNNN.jpg      CLASS = the photo's name (astronaut, chelsea, ...)
    OUT/val/CLASS/NNNN.jpg

every image a different random view (crop, flip, scale, JPEG quality) of its photo.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "horse",
    "brick",
    "grass",
)
"""scikit-image photos shipped inside the package (no download)."""

EXOTIC_KINDS = ("cmyk", "grayscale", "rgba", "i16", "palette", "la", "exif_rotated")
CORRUPT_KINDS = (
    "corrupt_image",
    "truncated_image",
    "missing_image",
    "empty_image",
    "too_small",
    "decompression_bomb",
)

PARQUET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
    ]
)


def load_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as ``[H, W, 3] uint8``."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (255 * (img.astype(np.float64) / max(1.0, float(img.max())))).astype(np.uint8)
    return img


@dataclass
class _Planned:
    kind: str  # "photo", an exotic kind, a corrupt kind, or "failed_to_download"
    photo: int


def _random_view(photo: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int]]:
    """A random crop (area 25-100 %, aspect 1:2-2:1), flip and resize of a photo."""
    h, w = photo.shape[:2]
    for _ in range(20):
        area = rng.uniform(0.25, 1.0) * h * w
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 16 <= cw <= w and 16 <= ch <= h:
            break
    else:
        cw, ch = w, h
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = photo[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    longest = int(rng.integers(160, 513))  # DataComp stores images at most 512 px
    scale = longest / max(cw, ch)
    size = (max(64, int(round(cw * scale))), max(64, int(round(ch * scale))))
    img = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC)
    return img, (cw, ch)


def datacomp_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEGs sized as DataComp stores them, for the benchmarks that time a decode: crops
    (70–100 % of each side) of five bundled photos, resized to 512 px on the longest side, q90."""
    photos = [load_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = Image.fromarray(photos[i % len(photos)])
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
        s = 512 / max(img.size)
        img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.Resampling.BICUBIC)
        out.append(_encode(img, "JPEG", quality=90))
    return out


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exotic(img: Image.Image, kind: str) -> tuple[bytes, str]:
    """A valid image in an unusual encoding: (bytes, member suffix)."""
    if kind == "cmyk":
        return _encode(img.convert("CMYK"), "JPEG", quality=90), "jpg"
    if kind == "grayscale":
        return _encode(img.convert("L"), "JPEG", quality=90), "jpg"
    if kind == "rgba":
        a = np.asarray(img.convert("RGBA")).copy()
        a[: a.shape[0] // 4, :, 3] = 0  # a transparent band
        return _encode(Image.fromarray(a, "RGBA"), "PNG"), "png"
    if kind == "i16":
        g = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        return _encode(Image.fromarray(g), "PNG"), "png"  # uint16 array → mode I;16
    if kind == "palette":
        return _encode(img.convert("P", palette=Image.ADAPTIVE, colors=64), "PNG"), "png"
    if kind == "la":
        return _encode(img.convert("LA"), "PNG"), "png"
    if kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
        return _encode(img, "JPEG", quality=90, exif=exif), "jpg"
    raise ValueError(f"unknown exotic kind {kind!r} (known: {', '.join(EXOTIC_KINDS)})")


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a baseline JPEG's SOF0 frame size: a tiny file that claims a huge image."""
    i = data.index(b"\xff\xc0")
    out = bytearray(data)
    out[i + 5 : i + 7] = height.to_bytes(2, "big")
    out[i + 7 : i + 9] = width.to_bytes(2, "big")
    return bytes(out)


def _corrupt(img: Image.Image, kind: str, rng: np.random.Generator) -> bytes | None:
    """Bad image bytes of a kind; None means the sample has no image member."""
    good = _encode(img, "JPEG", quality=85)
    if kind == "corrupt_image":
        return rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    if kind == "truncated_image":
        return good[: len(good) // 2]
    if kind == "missing_image":
        return None
    if kind == "empty_image":
        return b""
    if kind == "too_small":
        return _encode(img.resize((8, 8)), "JPEG", quality=85)
    if kind == "decompression_bomb":
        return _patch_jpeg_size(_encode(img.resize((64, 64)), "JPEG", quality=85), 30000, 30000)
    raise ValueError(f"unknown corrupt kind {kind!r} (known: {', '.join(CORRUPT_KINDS)})")


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tf.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class SampleDataSummary:
    out: Path
    shards: int
    attempted: int
    in_tars: int
    failed_to_download: int
    exotic: int
    corrupt: int


def write_sample_data(
    out: str | Path,
    *,
    images: int = 64,
    shard_size: int = 16,
    seed: int = 0,
    corrupt: int = 0,
    exotic: int = 0,
    failed: int | None = None,
) -> SampleDataSummary:
    """Write DataComp-layout shards under ``out``.

    ``images`` good photos, ``exotic`` valid images in unusual encodings, ``corrupt`` bad
    samples (cycling through :data:`CORRUPT_KINDS`) and ``failed`` failed downloads (default
    about 5 % of ``images``) are shuffled together and cut into shards of ``shard_size``
    attempted samples.
    """
    if images < 0 or corrupt < 0 or exotic < 0:
        raise ValueError("--images, --corrupt and --exotic must be >= 0")
    if shard_size <= 0 or shard_size > 10_000:
        raise ValueError("--shard-size must be in 1..10000 (DataComp keys hold 4 digits of index)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    failed = max(1, images // 20) if failed is None else failed
    photos = [load_photo(name) for name in PHOTOS]
    plan = (
        [_Planned("photo", i % len(photos)) for i in range(images)]
        + [_Planned(EXOTIC_KINDS[i % len(EXOTIC_KINDS)], i % len(photos)) for i in range(exotic)]
        + [_Planned(CORRUPT_KINDS[i % len(CORRUPT_KINDS)], i % len(photos)) for i in range(corrupt)]
        + [_Planned("failed_to_download", 0) for _ in range(failed)]
    )
    plan = [plan[i] for i in rng.permutation(len(plan))]
    n_shards = (len(plan) + shard_size - 1) // shard_size
    in_tars = 0
    for shard in range(n_shards):
        in_tars += _write_shard(out, shard, plan[shard * shard_size : (shard + 1) * shard_size], photos, rng)
    return SampleDataSummary(out, n_shards, len(plan), in_tars, failed, exotic, corrupt)


def _write_shard(
    out: Path, shard: int, plan: list[_Planned], photos: list[np.ndarray], rng: np.random.Generator
) -> int:
    start = time.time()
    rows: list[dict] = []
    members: list[tuple[str, bytes | None, str, dict]] = []  # key, image bytes, suffix, meta
    for index, item in enumerate(plan):
        key = f"{shard:08d}{index:04d}"
        uid = rng.bytes(16).hex()
        name = PHOTOS[item.photo]
        url = f"https://example.org/{name}/{uid[:8]}.jpg"
        caption = f"a photo of {name.replace('_', ' ')}"
        row = dict(
            key=key,
            uid=uid,
            url=url,
            caption=caption,
            status="success",
            error_message=None,
            width=None,
            height=None,
            original_width=None,
            original_height=None,
            sha256=None,
        )
        if item.kind == "failed_to_download":
            row.update(status="failed_to_download", error_message="HTTP Error 404: Not Found")
            rows.append(row)
            continue
        img, (ow, oh) = _random_view(photos[item.photo], rng)
        if item.kind == "photo":
            data, suffix = _encode(img, "JPEG", quality=int(rng.integers(60, 96))), "jpg"
        elif item.kind in EXOTIC_KINDS:
            data, suffix = _exotic(img, item.kind)
        else:
            data, suffix = _corrupt(img, item.kind, rng), "jpg"
        row.update(
            width=img.width,
            height=img.height,
            original_width=ow,
            original_height=oh,
            sha256=hashlib.sha256(data or b"").hexdigest(),
        )
        rows.append(row)
        members.append((key, data, suffix, row))
    order = rng.permutation(len(members))  # img2dataset writes in download-completion order
    with tarfile.open(out / f"{shard:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in order:
            key, data, suffix, row = members[i]
            if data is not None:
                _add_member(tf, f"{key}.{suffix}", data)
            _add_member(tf, f"{key}.txt", row["caption"].encode())
            _add_member(tf, f"{key}.json", json.dumps(row, indent=4).encode())
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), out / f"{shard:08d}.parquet")
    ok = sum(r["status"] == "success" for r in rows)
    end = time.time()
    stats = {
        "count": len(rows),
        "successes": ok,
        "failed_to_download": len(rows) - ok,
        "failed_to_resize": 0,
        "duration": end - start,
        "start_time": start,
        "end_time": end,
        "status_dict": {k: v for k, v in {"success": ok, "HTTP Error 404: Not Found": len(rows) - ok}.items() if v},
    }
    (out / f"{shard:08d}_stats.json").write_text(json.dumps(stats, indent=4))
    return len(members)


@dataclass(frozen=True)
class LabeledDataSummary:
    out: Path
    classes: int
    train: int
    val: int


def write_labeled_data(
    out: str | Path, *, train_per_class: int = 8, val_per_class: int = 4, seed: int = 0
) -> LabeledDataSummary:
    """Write an ImageFolder set under ``out``: ``train/`` and ``val/``, one class per photo of
    :data:`PHOTOS`, each image a random view of its photo (see the module docstring)."""
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("a labeled set needs at least 1 train and 1 val image per class")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = load_photo(name)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img, _ = _random_view(photo, rng)
                (folder / f"{i:04d}.jpg").write_bytes(_encode(img, "JPEG", quality=int(rng.integers(75, 96))))
    n = len(PHOTOS)
    return LabeledDataSummary(out, n, n * train_per_class, n * val_per_class)
