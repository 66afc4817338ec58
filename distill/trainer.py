"""`radio distill --stage N`: train the student against the cached targets of one stage.

One sectioned loop (set-up, resume, the step, logging, checkpoints), no callback framework.
Runs alone or under torchrun (DDP: NCCL on GPUs, gloo on CPU); bf16 autocast on GPU.

Reproducibility: everything random (rows, flips, CPE crops) is a function of (seed, stage,
partition, step), so a run killed at any point and resumed from its last checkpoint computes
exactly the steps an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from radio.config import PipelineConfig, to_yaml
from radio.shards.images import ImageLimits
from radio.store.compact_decode import build_decoders, decode_targets, raw_dropped
from radio.store.layout import FeatureStore, StoreError
from radio.store.manifest import Manifest
from radio.store.normalizers import Normalizer, current_fingerprint, normalizer_for, teacher_of
from radio.store.split import split_rows

from . import distributed
from .accumulate import mean_losses, micro_batches, sync_on_last
from .activations import checkpoint_activations
from .checkpoint import load_checkpoint, load_weights, remove_stale_temps, save_checkpoint, save_weights
from .checks import adaptor_specs, mosaic_notes, stage_targets
from .compiled import CompileOrEager, compile_on
from .cpe import draw_crops
from .data import PartitionRows, StepBatches, WorkerEnvironment, collate
from .final_weights import EXPORT_PREFIX, export_payload, final_meta, final_metadata, student_state
from .heads import drop_backbone_grads, heads_only, in_warmup, param_groups
from .loss import DistillLoss, KeyTarget, keys_at
from .mesa import build_mesa, mesa_note
from .prefetch import DevicePrefetch, to_device
from .reproject import reproject_heads, reprojection_note
from .resolutions import SizeSchedule, skips_keys, step_sizes
from .run import RunFolder
from .schedule import lr_at
from .shift import ShiftError, clamp_record, size_plans, unshifted_sizes
from .spaces import TargetSpace, final_spaces, first_change, from_records, records
from .step_log import BadStep, StepLog, flush_into
from .student import Student
from .weights_in import HUB, TIMM, Source, convert, open_source, student_fields, with_student


class DistillError(StoreError):
    """A distill request that cannot start (missing previous stage, bad stage number, ...)."""


class NonFiniteError(DistillError):
    """A batch's targets, loss or gradients are NaN or inf: the run stops before any weights are
    written from the parameters they touched (the last good checkpoint is kept). Exit 1: the
    data (or the run) is at fault, not the command."""

    exit_code = 1


def build_student(store: FeatureStore, config: PipelineConfig, seed: int = 0) -> Student:
    """The pipeline's student, randomly initialised from ``seed`` (the global RNG is left as it was)."""
    s = config.student
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Student(
            s.size,
            adaptor_specs(store, config),
            cpe_max_size=s.cpe_max_size,
            register_multiple=s.register_multiple,
            adaptor_hidden=s.adaptor_hidden,
            adaptor_inner=s.adaptor_inner,
            pos_dropout=s.pos_dropout,
        )


def build_normalizers(store: FeatureStore, keys: list[str], mode: str) -> dict[str, Normalizer]:
    """The feature normalizer of every teacher of ``keys``, keyed by teacher: one target space
    per adaptor head, whatever key (resolution) a batch came from."""
    return {t: normalizer_for(store, teacher=t, mode=mode) for t in sorted({teacher_of(store, k) for k in keys})}


class Partitions(nn.Module):
    """The student run on every partition's images in one forward call, so DDP sees one forward
    per backward even when a stage trains two resolutions at once."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, images: list[torch.Tensor], crops: list[torch.Tensor]) -> list:
        return [self.student(x, crops=c) for x, c in zip(images, crops)]


@dataclass
class StageResult:
    stage: int
    run: Path
    start_step: int
    end_step: int
    total_steps: int
    stopped_by: str | None  # the signal that stopped it early, if any
    losses: list[float]


class _StopFlag:
    """Set by SIGTERM / SIGUSR1 (cluster preemption): finish the step, checkpoint, exit."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _crop_generator(seed: int, stage: int, partition: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, stage, partition, step]).generate_state(1)[0]))
    return g


def _optimizer(student: Student, cfg) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    groups = param_groups(student, cfg.weight_decay, cfg.head_weight_decay)  # the heads decay by their own rate
    return create_optimizer_v2(groups, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay)


def loss_spaces(store: FeatureStore, normalizers: nn.ModuleDict) -> dict[str, TargetSpace]:
    """The target space of every teacher the loss trains: its normalizer object (what the loss
    actually uses) and the store fingerprint it was loaded as (the run's reader lease keeps
    fit-phis from moving the store's pointer meanwhile)."""
    return {t: TargetSpace.of(n, current_fingerprint(store, t)) for t, n in normalizers.items()}


def _initial_weights(run: Path, stage: int, init: str | Path | None) -> str | Path | None:
    if init is not None:
        if str(init).startswith((TIMM, HUB)) or Path(init).is_dir():
            return str(init)  # a timm model or a hub repo in the cache, a saved model's folder
        if not Path(init).is_file():
            raise DistillError(f"--init {init}: no such file")
        return Path(init)
    if stage == 1:
        return None
    previous = RunFolder(run).stage(stage - 1).weights
    if not previous.is_file():
        raise DistillError(
            f"stage {stage} starts from stage {stage - 1}'s final weights {previous}, which do not exist; "
            f"run `radio distill --stage {stage - 1}` first or pass --init CKPT"
        )
    return previous


def _load_student_weights(student: Student, path: Path) -> tuple[dict[str, TargetSpace] | None, set[str]]:
    """Load a stage's initial weights (final weights or a checkpoint) into ``student``; returns
    the target spaces their heads were trained in (None: a file written before radio recorded
    them) and the heads the file does not have (left at their random initialisation)."""
    if path.suffix == ".safetensors":
        tensors = load_weights(path)
        state, spaces = student_state(tensors), final_spaces(tensors, final_meta(path), EXPORT_PREFIX)
    else:
        ckpt = load_checkpoint(path)
        state, spaces = ckpt["model"], from_records(ckpt.get("normalizers"))
    return spaces, fit_state(student, state, path, new_heads=True)


def _load_source(student: Student, source: Source, log) -> tuple[dict[str, TargetSpace] | None, set[str], set[str]]:
    """Load an ``--init SOURCE`` into ``student``; returns the spaces its heads were trained in, the
    heads it lacks (fresh) and the released heads whose target space it does not carry (both warm up)."""
    if source.layout == "radio":
        return source.spaces, fit_state(student, source.state, Path(source.label), new_heads=True), set()
    teachers = [(t.name, t.summary_dim is not None) for t in student.teachers]
    state, loaded = convert(source, student.state_dict(), teachers)
    new_heads = fit_state(student, state, Path(source.label), new_heads=True)
    # released heads whose space the source does not record: RADIO's own PHI-S space, not the store's
    unknown = {h for h in loaded if h not in (source.spaces or {})}
    lines = [*source.notes]
    lines += [
        f"{name}: head loaded from {source.label}, trained in a target space it does not record "
        "(RADIO's own PHI-S): it warms up with the backbone frozen"
        for name in sorted(unknown)
    ]
    for line in lines if log is not None else []:
        print(f"note: {line}", file=log)
    return source.spaces, new_heads, unknown


def fit_state(student: nn.Module, state: dict, path: Path, new_heads: bool = False) -> set[str]:
    """Load ``state`` into ``student`` or say in one line why it does not fit (names or shapes).
    With ``new_heads``, adaptor heads ``state`` lacks entirely stay as they are (a teacher added
    since those weights were written); returns their names."""
    own = student.state_dict()
    bad = [
        f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if bad:
        raise DistillError(
            f"{path}: weights do not fit this student ({len(bad)} tensors of another shape: {', '.join(bad[:3])})"
        )
    missing, unexpected = student.load_state_dict(state, strict=False)
    absent: set[str] = set()
    if new_heads:  # whole heads only: a head missing some of its tensors is another architecture
        heads = {k.split(".")[1] for k in own if k.startswith("adaptors.")}
        absent = {h for h in heads if not any(k.startswith(f"adaptors.{h}.") for k in state)}
        missing = [k for k in missing if not any(k.startswith(f"adaptors.{h}.") for h in absent)]
    if missing or unexpected:
        raise DistillError(
            f"{path}: weights do not fit this student (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return absent


def _non_finite(stage: int, bad: BadStep, targets: list[dict], ckpt: Path, kept: int) -> NonFiniteError:
    """The one line for a step whose values are not finite: which key (and store rows) or which
    loss. ``targets``: that step's batches on this rank, read again from the store (``row`` and
    ``targets`` only); called only on that path, so its per-row reductions cost nothing in a
    healthy run."""
    step = bad.step
    where = (
        f"stopped without writing weights; the last good checkpoint {ckpt} (step {kept}) is kept"
        if kept
        else "stopped without writing weights (no checkpoint yet)"
    )
    for b in targets:
        rows = b["row"].cpu()
        for key, streams in b["targets"].items():
            for stream, t in streams.items():
                if t.element_size() == 1:  # compact bytes: finite by construction
                    continue
                ok = torch.isfinite(t.float()).reshape(t.shape[0], -1).all(1).cpu()
                if not bool(ok.all()):
                    bad_rows = rows[~ok].tolist()
                    shown = ", ".join(map(str, bad_rows[:8]))
                    shown += f", ... ({len(bad_rows)} rows)" if len(bad_rows) > 8 else ""
                    return NonFiniteError(
                        f"stage {stage} step {step}: target {key}/{stream} is not finite (NaN or inf) "
                        f"in store rows {shown}; {where}"
                    )
    for name, v in zip(bad.names, bad.local):
        if not bool(torch.isfinite(v)):
            return NonFiniteError(
                f"stage {stage} step {step}: loss {name} is not finite with finite targets "
                f"(training diverged: lower the learning rate or clip gradients); {where}"
            )
    if len(bad.local) > len(bad.names) and not bool(torch.isfinite(bad.local[-1])):
        return NonFiniteError(f"stage {stage} step {step}: the gradient norm is not finite; {where}")
    return NonFiniteError(f"stage {stage} step {step}: a value on another rank is not finite (NaN or inf); {where}")


def _targets_of(datasets: list[PartitionRows], samplers: list[StepBatches], step: int) -> list[dict]:
    """This rank's targets of 0-based ``step``, read again from the store (the error path)."""
    out = []
    for dataset, sampler in zip(datasets, samplers):
        rows = sampler.local_rows(sampler.global_rows(step))
        arrays = dataset.reader.read(rows)
        out.append(
            {
                "row": torch.from_numpy(rows),
                "targets": {k: {n: torch.from_numpy(a) for n, a in t.items()} for k, t in arrays.items()},
            }
        )
    return out


def train_stage(
    config: PipelineConfig,
    stage: int,
    *,
    steps: int | None = None,
    out: str | Path | None = None,
    init: str | Path | None = None,
    workers: int = 0,
    device: str | None = None,
    flip: bool = False,
    on_step: Callable[[dict], None] | None = None,
    each_step: bool | None = None,
) -> StageResult:
    """Train stage ``stage`` (1-based) of ``config``; resumes from the stage's checkpoint if present.

    ``on_step(record)`` gets every step's metrics record when it reaches the host. ``each_step``:
    flush every step, so the hook sees each step as it ends (a host sync per step; default: when
    a hook is given, in one process); False keeps ``stages[].log_every`` (the CLI's progress).
    Under DDP the interval is always ``log_every``: every rank must flush at the same steps."""
    if not 1 <= stage <= len(config.stages):
        raise DistillError(f"--stage {stage}: the pipeline has stages 1..{len(config.stages)}")
    from radio.store import lease

    d = distributed.setup(device)
    try:
        # A reader lease for the run: `compact --drop-raw`, `featurize --overwrite` and `fit-phis`
        # refuse to delete or rewrite the store meanwhile (each rank holds its own).
        with lease.take(config.store.path, "reader", "distill"):
            every = each_step if each_step is not None else on_step is not None
            every = every and not d.enabled  # ranks with and without a hook must flush together
            return _train(config, stage, d, steps, Path(out or config.out), init, workers, flip, on_step, every)
    finally:
        distributed.teardown(d)


def _train(
    config: PipelineConfig,
    stage: int,
    d: distributed.Dist,
    steps: int | None,
    run: Path,
    init: str | Path | None,
    workers: int,
    flip: bool,
    on_step: Callable[[dict], None] | None,
    each_step: bool,
) -> StageResult:
    # ---- set-up: store, targets, student, loss, optimizer ------------------------------------
    cfg = config.stages[stage - 1]
    store = FeatureStore(config.store.path)
    partitions: list[tuple[int, list[KeyTarget]]] = stage_targets(store, config, stage)
    if d.main:
        for note in mosaic_notes(store, config, stage):
            print(f"note: {note}", file=sys.stderr)
    keys = sorted({t.key for _, ts in partitions for t in ts})
    total = steps or cfg.steps
    folder = RunFolder(run)
    sdir = folder.stage(stage)
    init_from = _initial_weights(run, stage, init)
    # --init SOURCE is read first: a released model's args set the student it needs
    source = open_source(init_from) if init is not None and init_from is not None else None
    if source is not None:
        config = config.model_copy(
            update={"student": with_student(config.student, student_fields(source), source.label)}
        )
    student = build_student(store, config, cfg.seed)
    resolutions = [r for p in cfg.partitions for r in p.sizes]  # (every size a step may draw)
    recompute = checkpoint_activations(config.student.checkpoint_activations, config.student.size, resolutions)
    student.set_grad_checkpointing(recompute)
    if recompute and config.student.checkpoint_activations == "auto" and d.main:
        print(
            f"note: activation checkpointing on (student {config.student.size} at {max(resolutions)} px; "
            "student.checkpoint_activations: false turns it off)",
            file=sys.stderr,
        )
    # Compact keys (`radio store compact`) arrive as one byte per value and are decoded on the device.
    decoders = build_decoders(store, keys).to(d.device)
    if len(decoders) and config.normalization != "phis":
        dropped = [k for k in decoders if raw_dropped(store, k)]
        if dropped:
            raise DistillError(
                f"{', '.join(dropped)}: only stored compact in PHI-S space; train with normalization: phis"
            )
        decoders = type(decoders)()  # another normalization trains on the raw targets still there
    loss_fn = DistillLoss(
        partitions,
        build_normalizers(store, keys, config.normalization),
        prenormalized=frozenset(decoders),
        partition_weights=cfg.partition_weight_values,
    ).to(d.device)
    spaces = loss_spaces(store, loss_fn.normalizers)  # the spaces the heads train in: recorded with the weights

    # ---- resume --------------------------------------------------------------------------------
    ckpt_path = sdir.checkpoint
    state = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    start = int(state["step"]) if state else 0
    if state:
        # The cosine schedule is a function of the total: another --steps would continue on another curve.
        if int(state.get("total_steps", total)) != total:
            raise DistillError(
                f"stage {stage}: the checkpoint {ckpt_path} is of a run of {state['total_steps']} steps "
                f"(at step {start}), not {total}; resume with --steps {state['total_steps']}, "
                "or remove the checkpoint to start over with another step count"
            )
        # The optimizer's moments are in the space the heads trained in: a refit since cannot be resumed.
        changed = first_change(from_records(state.get("normalizers")) or {}, spaces)
        if changed is not None:
            teacher, old, now = changed
            why = "fit-phis ran since" if old.mode == now.mode else "the normalization changed since"
            raise DistillError(
                f"stage {stage}: cannot resume {ckpt_path}: its {teacher} head trained in normalizer {old.label}, "
                f"the store's current one is {now.label} ({why}; the optimizer state is in the old "
                f"space); remove {ckpt_path} to restart the stage from its initial weights"
            )
        fit_state(student, state["model"], ckpt_path)
        head_spaces = (from_records(state.get("normalizers")) or {}) | spaces
        reprojected = list(state.get("reprojected", []))
        new_heads = set(state.get("new_heads", []))
    elif init_from is not None:
        released: set[str] = set()
        if source is not None:
            recorded, new_heads, released = _load_source(student, source, sys.stderr if d.main else None)
        else:
            recorded, new_heads = _load_student_weights(student, Path(init_from))
        head_spaces = (recorded or {}) | spaces
        reprojected = reproject_heads(student.adaptors, recorded or {}, spaces, str(init_from))
        fresh, new_heads = new_heads, new_heads | released  # released heads warm up as fresh ones do
        if d.main:
            for name in sorted(fresh):
                print(
                    f"note: {name}: head not in {init_from}: initialised at random "
                    f"(trained alone for the first {cfg.head_warmup_steps} steps)",
                    file=sys.stderr,
                )
            if recorded is None and (source is None or source.layout == "radio"):  # (released heads: noted above)
                print(
                    f"note: {init_from} records no normalizers (written before radio recorded them): "
                    "the space its heads were trained in cannot be checked",
                    file=sys.stderr,
                )
            for r in reprojected:
                print(reprojection_note(r), file=sys.stderr)
    else:
        head_spaces, reprojected, new_heads = dict(spaces), [], set(student.adaptors.keys())
    student.to(d.device)
    optimizer = _optimizer(student, cfg.optimizer)
    if state:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # another set of parameter groups: written before head_weight_decay
            raise DistillError(
                f"stage {stage}: {ckpt_path} holds optimizer state of another layout ({e}); "
                f"remove {ckpt_path} to restart the stage from its initial weights"
            ) from None
    mesa = build_mesa(student, cfg.mesa, state)  # MESA's EMA student (None: off), resumed with the run
    if d.main and (mesa_line := mesa_note(cfg.mesa, state)) is not None:
        print(mesa_line, file=sys.stderr)
    used = {t.teacher for _, ts in partitions for t in ts}
    model: nn.Module = Partitions(student)
    if d.enabled:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[d.device.index] if d.device.type == "cuda" else None,
            # a teacher absent from this stage, or an exact key a drawn size skips (stochastic resolutions)
            find_unused_parameters=used != set(student.adaptors.keys()) or skips_keys(partitions),
        )
    ddp = model if d.enabled else None
    if compile_on(cfg.compile, d.device):
        model = CompileOrEager(model, sys.stderr if d.main else None)

    # ---- data: deterministic batches from (seed, stage, partition, step) -----------------------
    limits = ImageLimits(config.data.min_image_size, config.data.max_image_pixels)
    # The columnar manifest, built once per run; workers memory-map it (shared pages). Every rank
    # writes the same bytes atomically, so ranks sharing the run folder do not race.
    manifest = Manifest.build(store)
    split = split_rows(store, keys, config.eval.held_out, manifest)
    manifest_dir = manifest.save(folder.manifest)
    del manifest
    for (resolution, _), part in zip(partitions, cfg.partitions):
        if part.batch_size is not None and part.batch_size % (cfg.accumulate * d.world):
            raise DistillError(
                f"stage {stage} partition {resolution} px: batch size {part.batch_size} does not divide "
                f"into accumulate {cfg.accumulate} micro-steps on {d.world} ranks"
            )
    loaders, datasets, samplers, schedules = [], [], [], []
    try:  # the shift-equivariant loss (distill/shift.py): per partition and size, from the store's margins
        shifts = [
            size_plans(part.sizes, ts, cfg.shift.enabled, cfg.shift.sigma, decoders)
            for (_, ts), part in zip(partitions, cfg.partitions)
        ]
    except ShiftError as e:
        raise DistillError(f"stage {stage}: {e}") from None
    for (resolution, _), plans in zip(partitions, shifts):
        if cfg.shift.enabled and d.main and (still := unshifted_sizes(plans)):
            print(
                f"note: stage {stage} partition {resolution} px: the shift loss leaves {still} px unshifted "
                "(a margin of featurize.shift_margin teacher patches covers less than one student patch there)",
                file=sys.stderr,
            )
    for p, (resolution, ts) in enumerate(partitions):
        part = cfg.partitions[p]
        dataset = PartitionRows(
            str(store.path),
            resolution,
            ts,
            limits,
            manifest_dir,
            compact=frozenset(decoders),
            shift=shifts[p],
            device_jpeg=d.device.type == "cuda",  # stored JPEG views: nvJPEG on the GPU, not a loader core
        )
        try:
            # a token budget's batch per size is rounded to whole micro-steps on every rank
            schedules.append(SizeSchedule.of(part, cfg.seed, stage, p, total, d.world * cfg.accumulate))
            sampler = StepBatches(
                split.train,
                part.batch_size or 1,  # (a token budget's batches come from its schedule)
                cfg.seed * 1000 + stage,
                p,
                start,
                total,
                d.rank,
                d.world,
                flip,
                cfg.sampling,
                store.plan.shard_rows,
                store.plan.image_rows(split.train),  # crops_per_image > 1: one crop per image per epoch
                schedules[p],
                shifts[p],
            )
        except ValueError as e:
            raise DistillError(f"stage {stage} partition {resolution} px: {e}") from None
        datasets.append(dataset)
        samplers.append(sampler)
        # forkserver, not fork: tensorstore's threads do not survive a fork of a process that used
        # it (it aborts), and the workers get the manifest as a path to memory-map, not a copy.
        loaders.append(
            iter(
                DataLoader(
                    dataset,
                    batch_sampler=sampler,
                    num_workers=workers,
                    collate_fn=collate,
                    pin_memory=d.device.type == "cuda",
                    persistent_workers=workers > 0,
                    multiprocessing_context="forkserver" if workers > 0 else None,
                    worker_init_fn=WorkerEnvironment() if workers > 0 else None,
                )
            )
        )

    # ---- bookkeeping: run folder, metrics (rank 0) ----------------------------------------------
    metrics_path = sdir.metrics
    if d.main:
        sdir.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(sdir.path)  # a killed run's half-written checkpoint (only rank 0 writes here)
        sdir.config.write_text(to_yaml(config))
        if reprojected:
            sdir.reprojected.write_text(json.dumps(reprojected, indent=1) + "\n")
        _truncate_metrics(metrics_path, start)  # steps after the last checkpoint are redone

    saved = start  # the step of the checkpoint on disk (0: none)

    def checkpoint(step: int) -> None:
        nonlocal saved
        saved = step
        if d.main:
            save_checkpoint(
                ckpt_path,
                {
                    "model": student.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "stage": stage,
                    "total_steps": total,
                    "normalizers": records(head_spaces),
                    "reprojected": reprojected,
                    "new_heads": sorted(new_heads),
                    **({"mesa": mesa.state_dict()} if mesa is not None else {}),
                },
            )

    # ---- the loop --------------------------------------------------------------------------------
    # No host sync per step: the losses stay on the device until a log step (every log_every, a
    # checkpoint, a stop, the end) moves them to the host and checks them (step_log.py). A caller
    # that wants every step's values as it ends (each_step) has each step log.
    losses: list[float] = []
    step = start
    stopped_by = None
    model.train()
    steplog = StepLog(d, 1 if each_step else cfg.log_every)
    prefetch = DevicePrefetch(loaders, d.device, total - start)  # step k+1's batches copied during step k
    with _StopFlag() as stop, open(metrics_path, "a") if d.main else contextlib.nullcontext() as log:

        def write(record: dict) -> None:
            losses.append(record["total"])
            if log is not None:  # rank 0 only
                log.write(json.dumps(record) + "\n")
                log.flush()
            if on_step:
                on_step(record)

        def logged() -> None:
            """Flush the step log; a non-finite step stops the run before anything is written."""
            try:
                flush_into(steplog, write)
            except BadStep as bad:  # the parameters are spoiled now: no checkpoint, no weights
                targets = _targets_of(datasets, samplers, bad.step - 1)
                raise _non_finite(stage, bad, targets, ckpt_path, saved) from None

        while step < total:
            batches, t_data = next(prefetch)
            batches = [decode_targets(b, decoders) for b in batches]
            lr = lr_at(step, total, cfg.optimizer.lr, cfg.schedule.warmup_steps, cfg.schedule.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            crops = []
            sizes, step_batches = step_sizes(schedules, cfg.partitions, step)  # the step's drawn sizes
            for p in range(len(batches)):
                global_b = step_batches[p]
                c = draw_crops(global_b, _crop_generator(cfg.seed, stage, p, step), config.student.pos_dropout)
                local = global_b // d.world
                crops.append(to_device(c[d.rank * local : (d.rank + 1) * local], d.device))
            drawn_parts = [(sz, keys_at(ts, sz)) for (_, ts), sz in zip(partitions, sizes)]  # (MESA's names)
            optimizer.zero_grad(set_to_none=True)
            out: dict[str, torch.Tensor] = {}
            for i, micro, micro_crops in micro_batches(batches, crops, cfg.accumulate):  # accumulate: 1 = one pass
                with sync_on_last(ddp, i, cfg.accumulate):
                    with _autocast(d.device):
                        outputs = model([b["image"] for b in micro], micro_crops)
                        micro_out = loss_fn(outputs, micro, sizes)
                        if mesa is not None:  # the EMA student on the student's very input (images, CPE crops)
                            inputs = [b["image"] for b in micro]
                            micro_out = mesa.add_to(
                                micro_out, step, outputs, inputs, micro_crops, drawn_parts, loss_fn.partition_weights
                            )
                    (micro_out["total"] / cfg.accumulate).backward()
                out = mean_losses(out or None, micro_out, cfg.accumulate)
            warmup = in_warmup(step, cfg.head_warmup_steps, new_heads)
            if warmup:  # new heads train alone first: the backbone's gradients go, its optimizer groups sit out
                drop_backbone_grads(student)
            grad_norm = None
            if cfg.optimizer.grad_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optimizer.grad_clip)
            with heads_only(optimizer) if warmup else contextlib.nullcontext():
                optimizer.step()
            if mesa is not None:
                mesa.update()  # from step 0, also before mesa.start_step
            step += 1

            # A NaN or inf in a target reaches its key's loss (MSE, cosine and the PHI-S matmul all
            # propagate it), so the per-key losses, which go to the host for the log anyway, are the
            # check: no extra device pass over the targets (isfinite().all() on them costs 7x the
            # MSE on a CPU). The gradient norm rides along.
            drawn = {f"size_{p}": sz for p, (sz, sch) in enumerate(zip(sizes, schedules)) if sch is not None}
            drawn |= clamp_record(
                [s.plan(step - 1) for s in samplers],
                cfg.seed * 1000 + stage,
                step - 1,
                [s.global_rows for s in samplers],
            )
            steplog.add(step, lr, out, grad_norm, t_data, sum(step_batches), drawn)
            due = step % cfg.checkpoint_every == 0 or step == total
            if due or steplog.due(step):
                logged()  # before any checkpoint: none is ever written past an unchecked step
            if due:
                checkpoint(step)
            # Every step: the stop flag is a host value, and its all-reduce (gloo, even beside NCCL)
            # never waits for the device.
            if distributed.any_across(d, stop.signal is not None):
                logged()  # (nothing is pending if this step just logged)
                stopped_by = stop.signal or "a signal on another rank"
                checkpoint(step)
                break
    if step == total and d.main:
        # The final weights carry what export needs (dims, normalizers, provenance): a run can be
        # exported where the store is not.
        extra, meta = export_payload(store, config, stage, head_spaces)  # the loss's normalizers, not the store's
        meta["reprojected"] = reprojected
        save_weights(
            student.state_dict() | extra | (mesa.final_tensors() if mesa is not None else {}),
            sdir.weights,
            {"stage": str(stage), "steps": str(total)} | final_metadata(meta),
        )
    return StageResult(stage, run, start, step, total, stopped_by, losses)


def _truncate_metrics(path: Path, start: int) -> None:
    """Keep only the records of steps ≤ ``start`` (a killed run may have logged later ones)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start]
    path.write_text("".join(line + "\n" for line in keep))
