"""Run an evaluation end to end: an encoder (student or teacher) over image folders or store
rows, the pure metrics of this package on its outputs, one result record per evaluation.

Every result is a dataclass whose ``asdict`` is the JSON the CLI writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radio.store.errors import StoreError
from radio.store.provenance import TargetProvenance

from .encoders import StudentEncoder, TeacherEncoder, encode_in_batches
from .equivariance import scale_ranges, scale_variance, tiled_features
from .errors import EvalError
from .fidelity import FidelityAccumulator, geometric_mean
from .images import LabeledSplit, load_batch
from .knn import knn_scores, topk_accuracy
from .zero_shot import DEFAULT_TEMPLATES, build_prompts, text_classifier, zero_shot_scores

if TYPE_CHECKING:
    from radio.config import PipelineConfig
    from radio.distill.export import RadioModel
    from radio.store.layout import FeatureStore

Encoder = StudentEncoder | TeacherEncoder

# ---- scale equivariance (A.5, Table 2) --------------------------------------------------------------


@dataclass
class EquivarianceResult:
    """Table 2 for one model: the measure per range (None: fewer than 2 resolutions in it),
    natively and, with tiling, for k×k tiles of the smallest resolution (coarse range only)."""

    model: str
    resolutions: list[int]
    input_sizes: list[int]  # what the model was run at (a teacher's differ: r * patch / 16)
    ranges: dict[str, list[int]]
    images: list[str]
    native: dict[str, float | None]
    tiling: dict[str, float | None] | None = None
    per_image: dict[str, list[float]] = field(default_factory=dict)


def measure_equivariance(
    encoder: Encoder, paths: Sequence[Path], resolutions: Sequence[int], tiling: bool = False, batch_size: int = 4
) -> EquivarianceResult:
    """The A.5 measure of ``encoder`` on the images at ``paths``, per range of :func:`scale_ranges`.

    Each image is centre-cropped and resized to every resolution (the encoder's input size for
    it); with ``tiling`` the coarse range is measured a second time with each resolution
    ``k·r_min`` emulated by k×k tiles at ``r_min``, their feature grids stitched.
    """
    ranges = scale_ranges(resolutions)
    rs = ranges["all"]
    if len(rs) < 2:
        raise EvalError(f"scale equivariance needs 2 or more distinct resolutions, got {list(rs)}")
    sizes = {r: encoder.input_size(r) for r in rs}
    base = rs[0]
    measured = {name: r for name, r in ranges.items() if len(r) >= 2}
    per_image: dict[str, list[float]] = {f"native:{n}": [] for n in measured}
    if tiling and "coarse" in measured:
        per_image["tiling:coarse"] = []
    for i in range(0, len(paths), batch_size):
        chunk = list(paths[i : i + batch_size])
        feats = {r: encoder.features(load_batch(chunk, sizes[r])) for r in rs}
        for name, members in measured.items():
            per_image[f"native:{name}"] += scale_variance([feats[r] for r in members]).tolist()
        if "tiling:coarse" in per_image:
            tiled = [feats[base]] + [
                tiled_features(encoder.features, load_batch(chunk, sizes[r]), r // base) for r in ranges["coarse"][1:]
            ]
            per_image["tiling:coarse"] += scale_variance(tiled).tolist()

    def mean(key: str) -> float | None:
        return float(np.mean(per_image[key])) if key in per_image else None

    return EquivarianceResult(
        model=encoder.name,
        resolutions=list(rs),
        input_sizes=[sizes[r] for r in rs],
        ranges={k: list(v) for k, v in ranges.items()},
        images=image_labels(paths),
        native={n: mean(f"native:{n}") for n in ranges},
        tiling={"fine": None, "coarse": mean("tiling:coarse"), "all": None} if tiling else None,
        per_image=per_image,
    )


# ---- fidelity (eq. 2, Table 3) ------------------------------------------------------------------------


@dataclass
class FidelityResult:
    """Per (partition resolution, target key): F (paper), the variance ratio, MSE in the teacher's and
    the normalized space, and F with the all-element variance (``fidelity_all_elements``, RADIO's tools)."""

    stage: int
    rows: str
    row_ids: list[int]
    normalization: str
    keys: list[dict]
    geometric_mean: dict[str, float]


def measure_fidelity(
    model: RadioModel,
    store: FeatureStore,
    config: PipelineConfig,
    rows: str = "held-out",
    stage: int | None = None,
    max_rows: int | None = None,
    batch_size: int = 8,
) -> FidelityResult:
    """F[X] of an exported ``model`` (``radio.load``) on the store rows of ``config``.

    Keys and resolutions are the partitions of ``stage`` (default: the stage the export was
    made from). Rows: ``held-out`` = the last ``eval.held_out`` usable rows, which training
    never reads (:func:`radio.distill.data.split_rows`), or ``train`` (the rest). The model's
    adaptor features (de-normalized into the teacher's space by the export) are resized to the
    key's grid as the loss resizes them (:func:`radio.distill.loss.align_features`) and compared
    with the store's raw targets; the normalized space applies the key's normalizer of the store
    (``config.normalization``) to both.
    """
    from radio.distill.checks import stage_targets
    from radio.distill.data import PartitionRows, collate
    from radio.distill.loss import align_features
    from radio.shards.images import ImageLimits
    from radio.store.normalizers import normalizer_for
    from radio.store.split import split_rows

    if rows not in ("held-out", "train"):
        raise EvalError(f"rows must be 'held-out' or 'train', got {rows!r}")
    stage = stage or int(model.config.get("stage", 1))
    if not 1 <= stage <= len(config.stages):
        raise EvalError(f"stage {stage}: the pipeline has stages 1..{len(config.stages)}")
    partitions = stage_targets(store, config, stage)
    keys = sorted({t.key for _, ts in partitions for t in ts})
    missing = sorted({t.teacher for _, ts in partitions for t in ts} - set(model.teachers))
    if missing:
        raise EvalError(f"the model has no adaptor for {', '.join(missing)} (it has: {', '.join(model.teachers)})")
    split = split_rows(store, keys, config.eval.held_out)
    chosen = split.held_out if rows == "held-out" else split.train
    if max_rows is not None:
        chosen = chosen[:max_rows]
    if len(chosen) == 0:
        why = "the pipeline reserves none (eval.held_out = 0)" if rows == "held-out" else "all usable rows are held out"
        raise EvalError(f"no {rows} rows to evaluate: {why}")
    normalizers = {k: normalizer_for(store, key=k, mode=config.normalization) for k in keys}  # the teacher's
    limits = ImageLimits(config.data.min_image_size, config.data.max_image_pixels)
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    # Raw fp16 targets when present; keys whose raw targets were dropped are decoded from their
    # compact codec and mapped back to the teacher's space.
    from radio.store.compact_decode import build_decoders, decode_targets, raw_dropped, to_teacher_space

    decoders = build_decoders(store, [k for k in keys if raw_dropped(store, k)])
    for resolution, targets in partitions:
        data = PartitionRows(str(store.path), resolution, targets, limits, compact=frozenset(decoders))
        acc = {t.key: FidelityAccumulator(t.key, "features", normalizers[t.key]) for t in targets}
        for i in range(0, len(chosen), batch_size):
            batch = decode_targets(collate([data[(int(r), False)] for r in chosen[i : i + batch_size]]), decoders)
            for k in decoders:
                batch["targets"][k]["features"] = to_teacher_space(store, k, batch["targets"][k]["features"])
            out = model(batch["image"].to(device))
            for t in targets:
                pred = align_features(out.adaptors[t.teacher].features.cpu(), t.grid, t.exact_grid, t.key)
                acc[t.key].add(batch["targets"][t.key]["features"], pred)
        for t in targets:
            f = acc[t.key].result()
            results.append(
                {
                    "resolution": resolution,
                    "key": t.key,
                    "teacher": t.teacher,
                    "fidelity": f.fidelity,
                    "variance_ratio": f.variance_ratio,
                    "mse": f.mse,
                    "mse_normalized": f.mse_normalized,
                    "fidelity_all_elements": f.fidelity_all_elements,
                }
            )
    gm = {
        name: geometric_mean([r[name] for r in results])
        for name in ("fidelity", "variance_ratio", "fidelity_all_elements")
    }
    return FidelityResult(stage, rows, [int(r) for r in chosen], config.normalization, results, gm)


# ---- kNN (§2.10) --------------------------------------------------------------------------------------


@dataclass
class KnnResult:
    model: str
    data: str
    resolution: int
    k: int
    temperature: float
    classes: list[str]
    train: int
    val: int
    top1: float
    top5: float


def measure_knn(
    encoder: Encoder,
    train: LabeledSplit,
    val: LabeledSplit,
    resolution: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 32,
) -> KnnResult:
    """Weighted kNN of ``val`` summaries among ``train`` summaries (:func:`radio.evaluate.knn.knn_scores`)."""
    size = encoder.input_size(resolution)
    bank = encode_in_batches(encoder.summary, list(train.paths), size, batch_size)
    queries = encode_in_batches(encoder.summary, list(val.paths), size, batch_size)
    scores = knn_scores(bank, torch.from_numpy(train.labels), queries, len(train.classes), k, temperature)
    acc = topk_accuracy(scores, torch.from_numpy(val.labels), (1, 5))
    return KnnResult(
        encoder.name,
        str(train.root.parent),
        resolution,
        k,
        temperature,
        list(train.classes),
        len(train.paths),
        len(val.paths),
        acc[1],
        acc[5],
    )


# ---- zero-shot (§2.10) ---------------------------------------------------------------------------------


@dataclass
class ZeroShotResult:
    model: str
    teacher: str
    teacher_model: str
    data: str
    resolution: int
    templates: list[str]
    prompts: list[list[str]]
    classes: list[str]
    images: int
    top1: float
    top5: float


def export_teacher_model(model_config: dict, teacher: str) -> tuple[str, str | None]:
    """``(registry model, weights)`` an export's teacher was featurized with, from its provenance
    (weights None: the registry's seeded random init)."""
    entries = {t["name"]: t for t in model_config.get("teachers", [])}
    if teacher not in entries:
        raise EvalError(f"the model has no teacher {teacher!r} (it has: {', '.join(entries)})")
    prov = entries[teacher].get("provenance")
    if not prov:
        raise EvalError(f"the export records no provenance for {teacher!r}; pass --teacher-model (and --weights)")
    try:
        p = TargetProvenance.from_json(prov)
    except StoreError as e:
        raise EvalError(
            f"the export's provenance of {teacher!r} is {e}; pass --teacher-model (and --weights)"
        ) from None
    return p.model, None if p.weights == "random-init" else p.weights


def open_clip_tokenizer(teacher):
    """The tokenizer of a CLIP/SigLIP teacher's text tower (its hub id's own, else its architecture's)."""
    if not hasattr(teacher, "tokenizer"):
        raise EvalError(f"{teacher.spec.name} has no text tower (zero-shot needs a CLIP or SigLIP teacher)")
    try:
        return teacher.tokenizer()
    except Exception as e:  # noqa: BLE001 - hub/network/missing-package failures, reported as one line
        raise EvalError(f"{teacher.spec.name}: cannot load its open_clip tokenizer ({type(e).__name__}: {e})") from None


def measure_zero_shot(
    encoder: StudentEncoder,
    text_teacher,
    tokenizer,
    split: LabeledSplit,
    resolution: int,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 32,
) -> ZeroShotResult:
    """Classify ``split`` by the encoder's (adaptor) summary against ``text_teacher``'s text
    embeddings of the class prompts (:mod:`radio.evaluate.zero_shot`)."""
    if not hasattr(text_teacher, "encode_text"):
        raise EvalError(f"{text_teacher.spec.name} has no text tower (zero-shot needs a CLIP or SigLIP teacher)")
    try:
        prompts = build_prompts(split.classes, templates)
    except ValueError as e:
        raise EvalError(str(e)) from None
    device = next(text_teacher.parameters()).device

    @torch.inference_mode()
    def encode_text(strings: list[str]) -> torch.Tensor:
        return text_teacher.encode_text(tokenizer(strings).to(device)).float().cpu()

    classifier = text_classifier(encode_text, prompts)
    images = encode_in_batches(encoder.summary, list(split.paths), encoder.input_size(resolution), batch_size)
    if images.shape[-1] != classifier.shape[-1]:
        raise EvalError(
            f"the {encoder.name} summary has {images.shape[-1]} dims, {text_teacher.spec.name}'s text "
            f"embeddings {classifier.shape[-1]}: use the head distilled from that teacher"
        )
    scores = zero_shot_scores(images, classifier)
    acc = topk_accuracy(scores, torch.from_numpy(split.labels), (1, 5))
    return ZeroShotResult(
        encoder.name,
        encoder.adaptor or "",
        text_teacher.spec.name,
        str(split.root),
        resolution,
        list(templates),
        prompts,
        list(split.classes),
        len(split.paths),
        acc[1],
        acc[5],
    )


# ---- PCA pictures (Fig. 3, A1) ---------------------------------------------------------------------------


def image_labels(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the folder the paths share (``chelsea/0001.jpg``), else its name."""
    import os

    if len(paths) < 2:
        return [Path(p).name for p in paths]
    common = Path(os.path.commonpath([Path(p).resolve().parent for p in paths]))
    return [str(Path(p).resolve().relative_to(common)) for p in paths]


def pca_picture(
    encoder: Encoder,
    paths: Sequence[Path],
    resolutions: Sequence[int],
    out: Path,
    cell: int = 160,
    show_input: bool = True,
) -> dict:
    """Write ``out`` (PNG: a row per image, a column per resolution, :mod:`radio.evaluate.pca`)
    and ``out`` with suffix ``.json`` (the layout); returns the layout."""
    import json

    from .images import load_square
    from .pca import pca_rgb, render_grid

    rs = sorted({int(r) for r in resolutions})
    if not rs:
        raise EvalError("no resolutions given")
    sizes = [encoder.input_size(r) for r in rs]
    cells = []
    for path in paths:
        maps = [encoder.features(load_batch([path], s))[0] for s in sizes]
        row = pca_rgb(maps)
        cells.append(([load_square(path, cell)] if show_input else []) + row)
    columns = (["input"] if show_input else []) + [f"{r} px" for r in rs]
    image, layout = render_grid(cells, image_labels(paths), columns, cell=cell)
    layout |= {
        "model": encoder.name,
        "resolutions": rs,
        "input_sizes": sizes,
        "png": out.name,
        "images": [str(p) for p in paths],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    out.with_suffix(".json").write_text(json.dumps(layout, indent=2))
    return layout
