"""Which backbones a probe table holds: the model asked for, a random-init backbone of the same
size, and (for an export) the teachers of its store, where their weights are present.

"Present": the registry's seeded random init (tiny teachers: the very teacher featurize ran),
a local file that exists, or a hub id already in the local Hugging Face cache (nothing is
downloaded). SAM-like canvas teachers run on one fixed canvas only and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..encoders import load_teacher, pick_device
from ..errors import EvalError
from .backbone import DenseBackbone, ExportBackbone, TeacherBackbone, TimmBackbone, create_timm

BASELINE_SEED = 1234


@dataclass
class Lineup:
    """``rows``: ``(backbone, kind)`` with kind "model", "random-init" or "teacher"; ``skipped``:
    one line per baseline that could not be built, and why."""

    rows: list[tuple[DenseBackbone, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def weights_present(weights: str | None) -> bool:
    """True for None (seeded init), an existing file, or a hub id in the local HF cache."""
    if weights is None:
        return True
    if weights.startswith("hf-hub:"):
        from radio.featurize.preflight import in_hub_cache

        return in_hub_cache(weights.removeprefix("hf-hub:"))
    return Path(weights).is_file()


def random_student(model) -> nn.Module:
    """An export's architecture with fresh seeded weights (the ``radio.load`` model type)."""
    from radio.distill.export import RadioModel, student_of

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASELINE_SEED)
        student = student_of(model.config)
    device = next(model.parameters()).device
    return RadioModel(student, nn.ModuleDict(), model.config).to(device).eval()


def _teacher_row(lineup: Lineup, name: str, weights: str | None, label: str, kind: str, device) -> None:
    from radio.featurize.teachers import get_spec

    if get_spec(name).canvas:
        lineup.skipped.append(f"{label}: runs only on its fixed canvas")
    elif not weights_present(weights):
        lineup.skipped.append(f"{label}: weights {weights} not present")
    else:
        lineup.rows.append((TeacherBackbone(load_teacher(name, weights, str(device)), name=label), kind))


def lineup(
    model: Path | None,
    teacher: str | None,
    timm_model: str | None,
    weights: str | None,
    device: str | None,
    baselines: bool = True,
) -> Lineup:
    """Exactly one of ``model`` (an export), ``teacher`` (registry name) and ``timm_model``."""
    from radio.featurize.teachers import get_spec

    if sum(x is not None for x in (model, teacher, timm_model)) != 1:
        raise EvalError("give exactly one of --model (a student export), --teacher (a registered teacher), --timm")
    out = Lineup()
    dev = pick_device(device)
    if model is not None:
        from radio.distill.export import load

        from ..measure import export_teacher_model

        net = load(model, dev)
        name = Path(model).name or "student"
        out.rows.append((ExportBackbone(net, name), "model"))
        if baselines:
            out.rows.append(
                (ExportBackbone(random_student(net), f"random-init {net.config['student']['size']}"), "random-init")
            )
            for t in net.teachers:
                try:
                    tname, tw = export_teacher_model(net.config, t)
                except EvalError as e:
                    out.skipped.append(f"teacher {t}: {e}")
                    continue
                _teacher_row(out, tname, tw, f"teacher {t} ({tname})", "teacher", dev)
    elif teacher is not None:
        w = weights or get_spec(teacher).weights
        out.rows.append((TeacherBackbone(load_teacher(teacher, w, str(dev))), "model"))
        if baselines:
            if w is None:
                out.skipped.append(f"random-init {teacher}: the model is itself the seeded random init")
            else:
                out.rows.append(
                    (TeacherBackbone(load_teacher(teacher, None, str(dev)), f"random-init {teacher}"), "random-init")
                )
    else:
        assert timm_model is not None
        out.rows.append((TimmBackbone(create_timm(timm_model, weights, dev), timm_model), "model"))
        if baselines:
            if weights is None:
                out.skipped.append(f"random-init {timm_model}: the model is itself random-init (no --weights)")
            else:
                rnd = create_timm(timm_model, None, dev, seed=BASELINE_SEED)
                out.rows.append((TimmBackbone(rnd, f"random-init {timm_model}"), "random-init"))
    return out
