"""`radio eval equivariance|fidelity|knn|zero-shot`: what the paper measures, on a student export
(``--model DIR`` from `radio export`) or, where it makes sense, on a registered teacher.

Each command prints a table and writes its numbers as JSON: ``--json PATH``, by default
``MODEL/eval/COMMAND.json`` for an export (``COMMAND-ADAPTOR.json`` with ``--adaptor``) and
``./eval-COMMAND-TEACHER.json`` in the working directory for a teacher. Exit status 0 when
the evaluation ran, 2 with a one-line ``error: ...`` for a bad request.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .console import make_console
from .errors import fail, user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, PipelineOpt, StoreOpt, load

app = typer.Typer(
    rich_markup_mode=None,
    help="Evaluate a student export or a teacher: scale equivariance, fidelity, kNN, zero-shot.",
    no_args_is_help=True,
)

ModelOpt = Annotated[Path | None, typer.Option("--model", help="a student export folder (`radio export --out`)")]
TeacherOpt = Annotated[
    str | None, typer.Option("--teacher", help="evaluate a registered teacher instead (e.g. dinov2_g_reg, dinov2_tiny)")
]
WeightsOpt = Annotated[
    str | None, typer.Option("--weights", help="teacher weights: hub id or file (default: the teacher's released ones)")
]
AdaptorOpt = Annotated[
    str | None, typer.Option("--adaptor", help="use this teacher head of the export instead of the backbone")
]
JsonOpt = Annotated[
    Path | None,
    typer.Option(
        "--json", help="where to write the JSON (default: MODEL/eval/COMMAND.json, or ./eval-COMMAND-TEACHER.json)"
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="torch device (default: cuda if available, else cpu)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")]
ResolutionsOpt = Annotated[
    str, typer.Option("--resolutions", help="comma-separated student resolutions (multiples of 16)")
]


class Rows(str, Enum):
    held_out = "held-out"
    train = "train"


def parse_resolutions(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"--resolutions {text!r}: expected comma-separated integers such as 256,384,512") from None
    bad = [v for v in values if v <= 0 or v % 16]
    if not values or bad:
        raise fail(f"--resolutions {text!r}: every resolution must be a positive multiple of 16")
    return values


def make_encoder(model: Path | None, teacher: str | None, weights: str | None, adaptor: str | None, device: str | None):
    """The student export or the teacher, exactly one of them."""
    from radio.evaluate.encoders import load_student, teacher_encoder

    if (model is None) == (teacher is None):
        raise fail("give exactly one of --model (a student export) and --teacher (a registered teacher)")
    if teacher is not None:
        if adaptor is not None:
            raise fail("--adaptor selects a head of a student export; it does not apply to --teacher")
        return teacher_encoder(teacher, weights, device)
    return load_student(model, adaptor, device)


def json_path(
    explicit: Path | None, command: str, model: Path | None, teacher: str | None, adaptor: str | None
) -> Path:
    if explicit is not None:
        return explicit
    if model is not None:
        return model / "eval" / (f"{command}-{adaptor}.json" if adaptor else f"{command}.json")
    return Path.cwd() / f"eval-{command}-{teacher}.json"


def write_json(path: Path, result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2, default=str))
    print(f"wrote {path}")


def add_row(table, *cells: str) -> None:
    """A table row of plain text (model names like ``run[clip]`` are not rich markup)."""
    from rich.markup import escape

    table.add_row(*(escape(str(c)) for c in cells))


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "N/A" if v is None else format(v, spec)


@app.command()
@user_errors
def equivariance(
    images: Annotated[Path, typer.Option("--images", help="a folder of images (searched recursively) or one image")],
    resolutions: ResolutionsOpt = "256,384,512,768,1024",
    tiling: Annotated[
        bool,
        typer.Option("--tiling", help="also measure k×k tiles at the smallest resolution, stitched (coarse range)"),
    ] = False,
    max_images: Annotated[int | None, typer.Option("--max-images", min=1, help="use the first N images")] = None,
    model: ModelOpt = None,
    teacher: TeacherOpt = None,
    weights: WeightsOpt = None,
    adaptor: AdaptorOpt = None,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Scale equivariance (paper A.5, Table 2): feature variance across resolutions, fine and coarse ranges.

    Fine = resolutions up to twice the smallest, coarse = the smallest and its integer multiples
    (what k×k tiling reaches). A teacher with patch p runs at r·p/16 so its grid matches the student's.
    """
    from rich.table import Table

    from radio.evaluate.images import list_images
    from radio.evaluate.measure import measure_equivariance

    rs = parse_resolutions(resolutions)
    enc = make_encoder(model, teacher, weights, adaptor, device)
    paths = list_images(images)[:max_images]
    r = measure_equivariance(enc, paths, rs, tiling=tiling, batch_size=batch_size)
    table = Table("model", "fine scale", "coarse scale", "all", title="scale equivariance (lower is better)")
    add_row(table, r.model, *(_fmt(r.native[k]) for k in ("fine", "coarse", "all")))
    if r.tiling is not None:
        add_row(table, f"{r.model} (tiling)", *(_fmt(r.tiling[k]) for k in ("fine", "coarse", "all")))
    console = make_console()
    console.print(table)
    console.print(
        f"{len(paths)} images; fine = {r.ranges['fine']}, coarse = {r.ranges['coarse']}, "
        f"model input sizes {r.input_sizes}"
    )
    write_json(json_path(json_out, "equivariance", model, teacher, adaptor), r)


@app.command()
@user_errors
def fidelity(
    model: Annotated[Path, typer.Option("--model", help="a student export folder (`radio export --out`)")],
    rows: Annotated[
        Rows, typer.Option("--rows", help="held-out (the config's eval.held_out rows) or train")
    ] = Rows.held_out,
    stage: Annotated[
        int | None,
        typer.Option("--stage", help="evaluate this stage's keys and resolutions (default: the exported stage)"),
    ] = None,
    max_rows: Annotated[int | None, typer.Option("--max-rows", min=1, help="use the first N of those rows")] = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    store: StoreOpt = None,
) -> None:
    """Fidelity F[X] = Var(teacher) / MSE per target key (paper eq. 2, Table 3: per-channel variance),
    the bias-blind variance ratio Σ Var(t) / Σ Var(t − p), MSE in the teacher's and the normalized
    space, and F with the variance over all elements (RADIO's examples/mode_switching.py; its CSVs)."""
    from rich.table import Table

    from radio.distill.export import load as load_export
    from radio.evaluate.encoders import pick_device
    from radio.evaluate.measure import measure_fidelity
    from radio.store.layout import FeatureStore

    cfg = load(config, pipeline, store=store)
    net = load_export(model, pick_device(device))
    r = measure_fidelity(net, FeatureStore(cfg.store.path), cfg, rows.value, stage, max_rows, batch_size)
    title = f"fidelity, stage {r.stage}, {len(r.row_ids)} {r.rows} rows"
    table = Table(
        "resolution",
        "target key",
        "teacher",
        "MSE",
        f"MSE ({r.normalization})",
        "F[X]",
        "variance ratio",
        "F[X] all-element var (RADIO tools)",
        title=title,
    )
    for k in r.keys:
        add_row(
            table,
            str(k["resolution"]),
            k["key"],
            k["teacher"],
            f"{k['mse']:.4g}",
            f"{k['mse_normalized']:.4g}",
            f"{k['fidelity']:.4g}",
            f"{k['variance_ratio']:.4g}",
            f"{k['fidelity_all_elements']:.4g}",
        )
    add_row(
        table,
        "",
        "geometric mean",
        "",
        "",
        "",
        f"{r.geometric_mean['fidelity']:.4g}",
        f"{r.geometric_mean['variance_ratio']:.4g}",
        f"{r.geometric_mean['fidelity_all_elements']:.4g}",
    )
    make_console().print(table)
    write_json(json_path(json_out, "fidelity", model, None, None), r)


def _resolution(resolution: int | None, enc) -> int:
    from radio.evaluate.encoders import StudentEncoder, default_resolution

    if resolution is not None:
        return resolution
    return default_resolution(enc.model.config) if isinstance(enc, StudentEncoder) else 224


ResolutionOpt = Annotated[
    int | None,
    typer.Option(
        "--resolution",
        help="student resolution (default: the export's highest training resolution; 224 for a teacher)",
    ),
]


@app.command()
@user_errors
def knn(
    data: Annotated[
        Path, typer.Option("--data", help="ImageFolder set with train/ and val/ (`radio sample-data --labeled`)")
    ],
    model: ModelOpt = None,
    teacher: TeacherOpt = None,
    weights: WeightsOpt = None,
    adaptor: AdaptorOpt = None,
    resolution: ResolutionOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="neighbours that vote")] = 20,
    temperature: Annotated[
        float, typer.Option("--temperature", min=1e-6, help="vote weight exp(similarity / τ)")
    ] = 0.07,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """kNN classification of val/ among train/ by L2-normalized summaries (k=20, weights exp(sim/0.07))."""
    from rich.table import Table

    from radio.evaluate.images import read_split
    from radio.evaluate.measure import measure_knn

    enc = make_encoder(model, teacher, weights, adaptor, device)
    train = read_split(data, "train")
    val = read_split(data, "val", train.classes)
    r = measure_knn(enc, train, val, _resolution(resolution, enc), k, temperature, batch_size)
    title = f"kNN (k={k}, τ={temperature})"
    table = Table("model", "resolution", "classes", "train", "val", "top-1", "top-5", title=title)
    add_row(
        table,
        r.model,
        str(r.resolution),
        str(len(r.classes)),
        str(r.train),
        str(r.val),
        f"{r.top1:.1%}",
        f"{r.top5:.1%}",
    )
    make_console().print(table)
    write_json(json_path(json_out, "knn", model, teacher, adaptor), r)


@app.command("zero-shot")
@user_errors
def zero_shot(
    model: Annotated[Path, typer.Option("--model", help="a student export folder (`radio export --out`)")],
    data: Annotated[
        Path, typer.Option("--data", help="ImageFolder set (DATA/SPLIT/CLASS/*.jpg); class names from folders")
    ],
    teacher: Annotated[
        str, typer.Option("--teacher", help="the export's CLIP/SigLIP teacher whose head and text tower to use")
    ] = "clip",
    teacher_model: Annotated[
        str | None,
        typer.Option("--teacher-model", help="registry name of that teacher (default: from the export's provenance)"),
    ] = None,
    weights: WeightsOpt = None,
    template: Annotated[
        list[str] | None,
        typer.Option("--template", help="prompt template with {name}; repeatable (default: 'a photo of a {name}.')"),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="which split folder of --data to classify")] = "val",
    resolution: ResolutionOpt = None,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Zero-shot classification: the export's CLIP-head summary vs the CLIP teacher's text embeddings of prompts.

    Prompts: each template with {name} = the class folder's name, underscores as spaces
    ("a photo of a {name}." by default); several templates are averaged as CLIP does.
    """
    from rich.table import Table

    from radio.evaluate.encoders import load_student, load_teacher
    from radio.evaluate.images import read_split
    from radio.evaluate.measure import export_teacher_model, measure_zero_shot, open_clip_tokenizer
    from radio.evaluate.zero_shot import DEFAULT_TEMPLATES

    enc = load_student(model, teacher, device)
    name, recorded = export_teacher_model(enc.model.config, teacher) if teacher_model is None else (teacher_model, None)
    w = weights or recorded
    text_teacher = load_teacher(name, w, device)
    tokenizer = open_clip_tokenizer(text_teacher)
    data_split = read_split(data, split)
    r = measure_zero_shot(
        enc,
        text_teacher,
        tokenizer,
        data_split,
        _resolution(resolution, enc),
        tuple(template) if template else DEFAULT_TEMPLATES,
        batch_size,
    )
    table = Table("model", "text tower", "resolution", "classes", "images", "top-1", "top-5", title="zero-shot")
    add_row(
        table,
        r.model,
        r.teacher_model,
        str(r.resolution),
        str(len(r.classes)),
        str(r.images),
        f"{r.top1:.1%}",
        f"{r.top5:.1%}",
    )
    make_console().print(table)
    print(f"prompts: {len(r.templates)} template(s), e.g. {r.prompts[0][0]!r}")
    write_json(json_path(json_out, "zero-shot", model, None, teacher), r)
