"""Multi-resolution training removes mode switching (paper §4.1–4.2, Table 2, A.5).

Claim: a student trained at one low resolution changes its features with the input resolution
("mode switching": at high resolution they stop looking like the low-resolution ones); training
in stages that end with low- and high-resolution partitions together (the paper's 432 + 1024
stage) gives a student whose features vary less across resolutions: lower scale variance
(A.5) in the fine and coarse ranges, and PCA maps that look alike at every resolution.

Set-up: tiny random-init CLIP and DINOv2 teachers with resolution-partitioned target keys, @112
(8×8 grid, for the 128 px partition) and @224 (16×16, for the 256 px partition), as the paper
pairs low- and high-resolution keys with its partitions. Two students, same total steps:
*single* trains at 128 px only; *multi-stage* trains stage 1 at 128 px, then stage 2 at 128 and
256 px together. Both are evaluated with `radio eval equivariance` (with ``--tiling``) and
`radio viz pca` on bundled photos at 128–512 px.

Stochastic arm (C-RADIOv4, issue 26 part 3): a third student trains stage 1 as *multi-stage*
does, then stage 2 with the same two partitions and keys, each drawing its size per step
(``resolutions``: low {96, 128, 160, 192}, high {224, 256, 320}) instead of fixed 128 and 256 px.
Beside scale variance, every student's fidelity F (`radio eval fidelity`, held-out rows) is
measured at the fixed stage's 128 + 256 px partitions: does drawing sizes cost fidelity there?
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from . import common
from .common import Outcome, Scale

NAME = "multires"
CLAIM = (
    "Training with low- and high-resolution partitions together gives a student with lower scale variance "
    "across input resolutions than single-resolution training, with no visible mode switch in its PCA maps "
    "(paper §4.1–4.2, Table 2, A.5)."
)
RESOLUTIONS = (128, 192, 256, 384, 512)
LOW = ["clip@112", "dinov2@112"]
HIGH = ["clip@224", "dinov2@224"]
STOCHASTIC_LOW = [96, 128, 160, 192]
STOCHASTIC_HIGH = [224, 256, 320]
LABELS = {
    "single": "single (128 px)",
    "multi": "multi-stage (128, then 128 + 256 px)",
    "stochastic": "stochastic (128, then sizes drawn per step)",
}


def _stage(steps: int, partitions: list[dict], scale: Scale) -> dict:
    return {
        "steps": steps,
        "partitions": partitions,
        "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 0.0},
        "schedule": {"warmup_steps": scale.pick(20, 1)},
        "checkpoint_every": 1000,
    }


def build(root: Path, scale: Scale):
    """(single-resolution, multi-stage, stochastic-resolution pipeline) on the same store, same
    total steps and batches."""
    teachers = {
        "clip": {"model": "clip_tiny", "targets": {"clip@112": {"resolution": 112}, "clip@224": {"resolution": 224}}},
        "dinov2": {
            "model": "dinov2_tiny",
            "targets": {"dinov2@112": {"resolution": 112}, "dinov2@224": {"resolution": 224}},
        },
    }
    steps = scale.pick(300, 4)
    low = {"resolution": 128, "batch_size": scale.pick(16, 4), "targets": LOW}
    high = {"resolution": 256, "batch_size": scale.pick(8, 2), "targets": HIGH}
    held = scale.pick(16, 4)
    single = common.pipeline(NAME, root, teachers, [_stage(steps, [low], scale)], held_out=held)
    multi = common.pipeline(
        NAME,
        root,
        teachers,
        [_stage(steps // 2, [low], scale), _stage(steps - steps // 2, [low, high], scale)],
        held_out=held,
    )
    drawn = [
        {k: v for k, v in low.items() if k != "resolution"} | {"resolutions": STOCHASTIC_LOW},
        {k: v for k, v in high.items() if k != "resolution"} | {"resolutions": STOCHASTIC_HIGH},
    ]
    stochastic = common.pipeline(
        NAME,
        root,
        teachers,
        [_stage(steps // 2, [low], scale), _stage(steps - steps // 2, drawn, scale)],
        held_out=held,
    )
    return single, multi, stochastic


def run(out: Path, scale: Scale) -> Outcome:
    from radio.distill.export import load
    from radio.evaluate.encoders import load_student
    from radio.evaluate.measure import measure_equivariance, measure_fidelity, pca_picture
    from radio.store.layout import FeatureStore

    work = common.fresh(out / "work")
    common.sample_shards(work, images=scale.pick(128, 16), shard_size=scale.pick(32, 8))
    single, multi, stochastic = build(work, scale)
    common.featurize(multi)
    common.fit_phis(multi)
    photos = common.photo_files(
        work, scale.pick(["astronaut", "chelsea", "coffee", "rocket", "horse", "coins"], ["astronaut", "coffee"])
    )
    resolutions = scale.pick(RESOLUTIONS, (128, 256))
    table, results, pcas, fids = [], {}, {}, {}
    for tag, config in (("single", single), ("multi", multi), ("stochastic", stochastic)):
        export = common.distill(config, work / f"run-{tag}")
        enc = load_student(export)
        r = measure_equivariance(enc, photos, resolutions, tiling=True)
        results[tag] = r
        pcas[tag] = out / f"pca-{tag}.png"
        pca_picture(enc, photos[: scale.pick(3, 1)], resolutions, pcas[tag])
        # every student on the fixed stage's partitions (128 px: the @112 keys, 256 px: the @224 keys)
        fids[tag] = measure_fidelity(load(export), FeatureStore(multi.store.path), multi, "held-out", stage=2)
        table.append(
            {
                "student": LABELS[tag],
                "fine": r.native["fine"],
                "coarse": r.native["coarse"],
                "all": r.native["all"],
                "coarse (tiling)": (r.tiling or {}).get("coarse"),
                "F @128 px": _geo(fids[tag], 128),
                "F @256 px": _geo(fids[tag], 256),
            }
        )
    s, m = results["single"].native, results["multi"].native
    agrees = all(
        cast(float, m[k]) < cast(float, s[k]) for k in ("fine", "coarse") if s[k] is not None and m[k] is not None
    )
    verdict = (
        f"Scale variance fine {s['fine']:.4g} → {m['fine']:.4g}, coarse "
        f"{_fmt(s['coarse'])} → {_fmt(m['coarse'])} (single → multi-stage; lower is better): "
        + (
            f"the multi-stage student is more scale-consistent, as in the paper: "
            f"{_drop(s['fine'], m['fine']):.1%} lower (fine), {_drop(s['coarse'], m['coarse']):.1%} lower (coarse)."
            if agrees
            else "the multi-stage student is NOT more scale-consistent in every range here."
        )
        + " Images: "
        + ", ".join(p.stem for p in photos)
        + f"; resolutions {list(resolutions)}."
    )
    if not agrees or _drop(s["fine"], m["fine"]) < 0.2:
        verdict += (
            " The tiny random-init teachers have little resolution-dependent structure to switch between "
            "(their @112 and @224 keys are the same network at two sizes), and the student is trained for a "
            "few hundred steps, so the effect the paper measures at 1024 px is weak here (its Table 2 compares students trained for "
            "hundreds of thousands of steps)."
        )
    verdict += " " + _stochastic_verdict(results, table)
    _picture(out / f"{NAME}.png", pcas, results)
    extra = {t: r.__dict__ for t, r in results.items()} | {"fidelity": {t: f.keys for t, f in fids.items()}}
    return Outcome(NAME, CLAIM, table, agrees, verdict, f"{NAME}.png", extra=extra)


def _geo(result, resolution: int) -> float:
    """Geometric-mean F of a fidelity result's keys at one partition resolution."""
    import math

    values = [k["fidelity"] for k in result.keys if k["resolution"] == resolution]
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _stochastic_verdict(results: dict, table: list[dict]) -> str:
    """The stochastic arm against the fixed multi-stage student: scale variance and fidelity."""
    m, s = results["multi"].native, results["stochastic"].native
    rows = {r["student"]: r for r in table}
    fm, fs = rows[LABELS["multi"]], rows[LABELS["stochastic"]]
    better = [k for k in ("fine", "coarse") if s[k] is not None and m[k] is not None and s[k] < m[k]]
    return (
        f"Stochastic arm against fixed multi-stage: scale variance fine {_fmt(m['fine'])} → {_fmt(s['fine'])}, "
        f"coarse {_fmt(m['coarse'])} → {_fmt(s['coarse'])} "
        f"({'lower in ' + ' and '.join(better) if better else 'not lower in either range'}); fidelity at the "
        f"fixed stage's sizes F@128 {fm['F @128 px']:.3g} → {fs['F @128 px']:.3g}, "
        f"F@256 {fm['F @256 px']:.3g} → {fs['F @256 px']:.3g} (the fixed student trains at exactly those sizes)."
    )


def _drop(before: float | None, after: float | None) -> float:
    return 0.0 if not before or after is None else (before - after) / before


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _picture(path: Path, pcas: dict[str, Path], results: dict) -> None:
    """The two PCA grids (`radio viz pca`) stacked, each titled with its scale variance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    images = {t: Image.open(p) for t, p in pcas.items()}
    fig, axes = plt.subplots(len(images), 1, figsize=(10, 3.2 * len(images)))
    for ax, (tag, img) in zip(axes, images.items()):
        r = results[tag].native
        ax.imshow(img)
        ax.set_axis_off()
        name = LABELS[tag]
        ax.set_title(
            f"{name}: PCA of the features per resolution; scale variance fine {_fmt(r['fine'])}, "
            f"coarse {_fmt(r['coarse'])}",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
