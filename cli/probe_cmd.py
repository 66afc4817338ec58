"""`radio eval seg|depth|correspondence`: the dense downstream probes on a frozen backbone (an
export, a registered teacher or a timm model), each table with its baselines (a random-init
backbone of the same size; for an export the store's teachers whose weights are present) and,
for the trained probes, a chance-level row. JSON as the other `radio eval` commands write it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .console import make_console
from .errors import fail, user_errors
from .eval_cmd import DeviceOpt, JsonOpt, ModelOpt, TeacherOpt, add_row, json_path, write_json

TimmOpt = Annotated[
    str | None, typer.Option("--timm", help="probe a timm model instead (random-init unless --weights is a file)")
]
ProbeWeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", help="weights of --teacher (hub id or file) or --timm (a file); default: released / none"
    ),
]
BaselinesOpt = Annotated[
    bool,
    typer.Option(
        "--baselines/--no-baselines", help="add a random-init backbone of the same size and the store's teachers"
    ),
]
IterationsOpt = Annotated[int, typer.Option("--iterations", min=1, help="training iterations of the head")]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=1, help="linear warm-up iterations (then poly decay)")]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate of the head")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="crops per training iteration")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of crops, flips and head init")]


class MaskResolution(str, Enum):
    full = "full"
    input = "input"


class DepthHeadKind(str, Enum):
    linear = "linear"
    dpt = "dpt"


class DepthLoss(str, Enum):
    bins = "bins"
    l1 = "l1"


def _lineup(model, teacher, timm, weights, device, baselines):
    from radio.evaluate.probes.baselines import lineup

    return lineup(model, teacher, timm, weights, device, baselines)


def _parse_pair(text: str, flag: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise fail(f"{flag} {text!r}: expected two numbers LOW,HIGH such as 0.5,2.0") from None
    if not 0 < lo <= hi:
        raise fail(f"{flag} {text!r}: expected 0 < LOW <= HIGH")
    return lo, hi


@dataclass
class SegResult:
    data: str
    layout: str
    classes: list[str]
    train: int
    val: int
    mask_resolution: str
    settings: dict
    rows: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def seg(
    data: Annotated[
        Path, typer.Option("--data", help="ADEChallengeData2016/ or VOCdevkit/VOC2012/ (or a folder holding one)")
    ],
    model: ModelOpt = None,
    teacher: TeacherOpt = None,
    timm: TimmOpt = None,
    weights: ProbeWeightsOpt = None,
    crop: Annotated[int, typer.Option("--crop", help="training crop side; a multiple of the patch (16)")] = 512,
    layers: Annotated[
        str, typer.Option("--layers", help="'last', '4' (depth/4, /2, 3/4, last) or block indices, concatenated")
    ] = "last",
    iterations: IterationsOpt = 2000,
    warmup: WarmupOpt = 40,
    lr: LrOpt = 1e-3,
    batch_size: BatchOpt = 8,
    scale_range: Annotated[
        str, typer.Option("--scale-range", help="random scale of the short side, as multiples of --crop")
    ] = "0.5,2.0",
    mask_resolution: Annotated[
        MaskResolution,
        typer.Option("--mask-resolution", help="score at each label's full resolution, or at the network input size"),
    ] = MaskResolution.full,
    max_val: Annotated[int | None, typer.Option("--max-val", min=1, help="score the first N validation images")] = None,
    baselines: BaselinesOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Linear-probe segmentation (RADIO's mmseg protocol): BN + 1x1 conv on frozen patch features, mIoU."""
    from dataclasses import replace

    from rich.table import Table

    from radio.evaluate.probes import seg as S
    from radio.evaluate.probes.datasets import read_seg_split

    settings = S.SegSettings(
        crop=crop,
        iterations=iterations,
        warmup=warmup,
        batch_size=batch_size,
        lr=lr,
        layers=layers,
        mask_resolution=mask_resolution.value,
        scale_range=_parse_pair(scale_range, "--scale-range"),
        seed=seed,
    )
    train, val = read_seg_split(data, "train"), read_seg_split(data, "val")
    if max_val is not None:
        val = replace(val, images=val.images[:max_val], labels=val.labels[:max_val])
    team = _lineup(model, teacher, timm, weights, device, baselines)
    for bb, _ in team.rows:  # refuse a bad crop before any training
        S.check_crop(crop, bb.unit)
    rows = [S.probe(bb, kind, train, val, settings) for bb, kind in team.rows]
    chance = S.score_from_confusion(
        "chance (majority class)", "chance", [], S.chance_confusion(train, val, settings), val.classes
    )
    rows.append(chance)
    res_text = "full label resolution" if mask_resolution == MaskResolution.full else "network input resolution"
    r = SegResult(
        str(train.root),
        train.layout,
        list(train.classes),
        len(train.images),
        len(val.images),
        res_text,
        asdict(settings),
        [asdict(x) for x in rows],
        team.skipped,
    )
    title = f"linear-probe segmentation, {train.layout.upper()} ({len(val.images)} val images), mIoU at {res_text}"
    table = Table("model", "kind", "layers", "mIoU", "pixel acc", title=title)
    for x in rows:
        add_row(table, x.model, x.kind, ",".join(map(str, x.layers)) or "-", f"{x.miou:.1%}", f"{x.pixel_accuracy:.1%}")
    console = make_console()
    console.print(table)
    if len(val.classes) <= 12:
        per = Table("model", *val.classes, title="per-class IoU")
        for x in rows:
            add_row(per, x.model, *("-" if v is None else f"{v:.1%}" for v in x.per_class_iou.values()))
        console.print(per)
    for line in team.skipped:
        print(f"baseline skipped: {line}")
    print(f"crop {crop}, {iterations} iterations of batch {batch_size}, lr {lr}, warm-up {warmup}, layers {layers}")
    write_json(json_path(json_out, "seg", model, teacher or timm, None), r)


@dataclass
class DepthResult:
    data: str
    train: int
    val: int
    settings: dict
    rows: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def depth(
    data: Annotated[Path, typer.Option("--data", help="the NYU Depth v2 GeoNet folder of .mat files Probe3D reads")],
    model: ModelOpt = None,
    teacher: TeacherOpt = None,
    timm: TimmOpt = None,
    weights: ProbeWeightsOpt = None,
    crop: Annotated[int, typer.Option("--crop", help="training crop side; a multiple of the patch (16)")] = 448,
    head: Annotated[
        DepthHeadKind, typer.Option("--head", help="linear or a small DPT-like head on 4 layers")
    ] = DepthHeadKind.dpt,
    loss: Annotated[
        DepthLoss, typer.Option("--loss", help="bins (softmax over depth bins, SigLoss) or l1 (plain regression)")
    ] = DepthLoss.bins,
    iterations: IterationsOpt = 2000,
    warmup: WarmupOpt = 40,
    lr: LrOpt = 1e-3,
    batch_size: BatchOpt = 8,
    baselines: BaselinesOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Probe3D-style depth: a head on 4 frozen layers; RMSE, AbsRel, δ<1.25 at full depth resolution."""
    from rich.table import Table

    from radio.evaluate.probes import depth as D
    from radio.evaluate.probes.common import check_crop
    from radio.evaluate.probes.datasets import read_depth_split

    s = D.DepthSettings(
        crop=crop,
        iterations=iterations,
        warmup=warmup,
        batch_size=batch_size,
        lr=lr,
        head=head.value,
        loss=loss.value,
        seed=seed,
    )
    train, val = read_depth_split(data, "train"), read_depth_split(data, "val")
    team = _lineup(model, teacher, timm, weights, device, baselines)
    for bb, _ in team.rows:
        check_crop(crop, bb.unit)
    rows = [D.probe(bb, kind, train, val, s) for bb, kind in team.rows] + [D.constant_baseline(train, val)]
    r = DepthResult(
        str(train.root), len(train.files), len(val.files), asdict(s), [asdict(x) for x in rows], team.skipped
    )
    table = Table(
        "model",
        "kind",
        "layers",
        "RMSE (m)",
        "AbsRel",
        "δ<1.25",
        title=f"depth probe ({head.value} head, {loss.value} loss, {len(val.files)} val images)",
    )
    for x in rows:
        add_row(
            table,
            x.model,
            x.kind,
            ",".join(map(str, x.layers)) or "-",
            f"{x.rmse:.3f}",
            f"{x.abs_rel:.3f}",
            f"{x.delta1:.1%}",
        )
    make_console().print(table)
    for line in team.skipped:
        print(f"baseline skipped: {line}")
    write_json(json_path(json_out, "depth", model, teacher or timm, None), r)


@dataclass
class CorrespondenceResult:
    data: str
    pairs: list[str]
    resolution: int
    thresholds: list[float]
    rows: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def correspondence(
    data: Annotated[
        Path,
        typer.Option("--data", help="folder of pairs: Middlebury scenes (im0/im1.png, disp0GT.pfm) or matches.csv"),
    ],
    model: ModelOpt = None,
    teacher: TeacherOpt = None,
    timm: TimmOpt = None,
    weights: ProbeWeightsOpt = None,
    resolution: Annotated[
        int, typer.Option("--resolution", help="long side of each view; a multiple of the patch (16)")
    ] = 512,
    thresholds: Annotated[
        str, typer.Option("--thresholds", help="comma-separated pixel thresholds of the recall")
    ] = "4,8,16,32",
    max_matches: Annotated[
        int, typer.Option("--max-matches", min=1, help="ground-truth matches scored per pair (seeded sample)")
    ] = 2000,
    baselines: BaselinesOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Training-free correspondence: nearest-neighbour feature matching, recall at pixel thresholds."""
    from rich.table import Table

    from radio.evaluate.probes.correspondence import evaluate
    from radio.evaluate.probes.datasets import read_pairs

    try:
        ts = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError:
        raise fail(f"--thresholds {thresholds!r}: expected comma-separated numbers such as 4,8,16") from None
    if not ts or min(ts) <= 0:
        raise fail(f"--thresholds {thresholds!r}: expected positive pixel thresholds")
    pairs = read_pairs(data)
    team = _lineup(model, teacher, timm, weights, device, baselines)
    rows = [evaluate(bb, kind, pairs, resolution, ts, max_matches, seed) for bb, kind in team.rows]
    r = CorrespondenceResult(
        str(data), [p.name for p in pairs], resolution, ts, [asdict(x) for x in rows], team.skipped
    )
    table = Table(
        "model",
        "kind",
        "matches",
        *(f"recall@{t:g}px" for t in ts),
        title=f"correspondence ({len(pairs)} pairs, long side {resolution})",
    )
    for x in rows:
        add_row(table, x.model, x.kind, str(x.matches), *(f"{v:.1%}" for v in x.recall.values()))
    make_console().print(table)
    for line in team.skipped:
        print(f"baseline skipped: {line}")
    write_json(json_path(json_out, "correspondence", model, teacher or timm, None), r)


def register(app: typer.Typer) -> None:
    """Add the probes to `radio eval`."""
    app.command("seg")(user_errors(seg))
    app.command("depth")(user_errors(depth))
    app.command("correspondence")(user_errors(correspondence))
