"""The featurize job (the Ray driver): plan rows, pre-allocate, run the graph, report.

Runs on a local Ray instance by default or on a cluster (``address`` / ``RAY_ADDRESS``). Work is
listed per (tar, teacher) with incomplete target keys; the graph (:mod:`radio.featurize.graph`)
reads and decodes each tar once for all of them, then one actor pool per teacher runs its keys.
Re-running the same job resumes: complete (tar, key) pairs are skipped.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from radio.config import PipelineConfig, fingerprint
from radio.config.mosaic import InputMisfit, Misfit, input_misfit, misfit, mosaic_applies, tile_side
from radio.errors import RadioError
from radio.shards.counts import planned_samples
from radio.shards.tar import expand_shards, open_binary
from radio.store import compact, lease
from radio.store.layout import FeatureStore, Plan, check_store_or_empty, settings_json
from radio.store.provenance import TargetProvenance

from .pixels import add_pixels, partition_resolutions, plan_pixels
from .preflight import check_weights
from .ray_logs import log_path, ray_output_to
from .records import FeaturizeSettings, KeyJob, TarResult, WorkItem
from .teachers import TeacherError, get_spec

CODE_VERSION = "radio-featurize/1"


class FeaturizeError(RadioError):
    """A featurize request that cannot run (unknown teacher, bad --mosaic, ...)."""


@dataclass(frozen=True)
class Selection:
    """The teachers and target keys a run computes, with CLI overrides applied."""

    teachers: dict[str, tuple[str, str | None, tuple[KeyJob, ...]]]  # name → (model, weights, keys)
    notes: tuple[str, ...] = ()  # one line each, for the user (e.g. where --mosaic did not apply)
    mosaic: int | None = None  # the --mosaic override, if any

    @property
    def keys(self) -> list[KeyJob]:
        return [k for _, _, keys in self.teachers.values() for k in keys]


def select(config: PipelineConfig, names: list[str] | None = None, mosaic: int | None = None) -> Selection:
    """Target keys of the teachers matching ``names`` (a config teacher name, a registry model,
    a family such as ``sam``, or a target key); all when ``names`` is empty.

    ``mosaic`` k applies to the selected canvas (SAM) keys whose resolution fits k×k tiles of
    their canvas (the paper: mosaic 4 at 256 px, 2 at 432 px on SAM's 1024 canvas); the other
    canvas keys keep their configured mosaic and are named in one note. No key fitting is a
    :class:`FeaturizeError`. Every key's geometry is validated here, before any store is touched.
    """
    chosen: dict[str, tuple[str, str | None, tuple[KeyJob, ...]]] = {}
    for name in names or []:
        if not any(_matches(name, t, tc, k) for t, tc in config.teachers.items() for k in (None, *tc.targets)):
            known = sorted({*config.teachers, *config.target_keys})
            raise FeaturizeError(f"--teacher {name!r} matches no teacher or target key (known: {', '.join(known)})")
    applied: list[str] = []
    unfit: list[str] = []
    for t, tc in config.teachers.items():
        keys = [k for k in tc.targets if not names or any(_matches(n, t, tc, k) for n in names)]
        if not keys:
            continue
        patch = get_spec(tc.model).patch
        jobs = []
        for k in keys:
            spec = tc.targets[k]
            m = spec.mosaic
            if mosaic is not None and m is not None:  # a canvas key: --mosaic may apply
                if mosaic_applies(m, mosaic, spec.canvas, spec.resolution, patch):
                    m = mosaic
                    applied.append(k)
                else:
                    unfit.append(f"{k} ({spec.resolution} px)")
            jobs.append(KeyJob(k, spec.resolution, m, spec.canvas, config.featurize.shift_margin * patch))
        chosen[t] = (tc.model, tc.weights, tuple(jobs))
    notes: list[str] = []
    if mosaic is not None:
        if not applied:
            why = (
                f"; too large for its tiles: {', '.join(unfit)}" if unfit else "; no selected key is a canvas (SAM) key"
            )
            raise FeaturizeError(f"--mosaic {mosaic} fits no selected target key{why}")
        if unfit:
            notes.append(
                f"--mosaic {mosaic} applies to {', '.join(applied)}; left at their configured mosaic "
                f"(resolution too large for {mosaic}x{mosaic} tiles): {', '.join(unfit)}"
            )
    selection = Selection(chosen, tuple(notes), mosaic)
    validate_geometry(config, selection)
    return selection


def validate_geometry(config: PipelineConfig, selection: Selection) -> None:
    """Every selected key's teacher input and mosaic tiling is possible; raises FeaturizeError.

    Run before the store is planned, so an impossible request leaves no arrays behind.
    """
    for teacher, (model, _, jobs) in selection.teachers.items():
        spec = get_spec(model)
        for job in jobs:
            provenance(config, teacher, job)  # canvas / non-canvas consistency
            if job.mosaic is not None:
                why = _misfit_words(job.canvas, job.mosaic, job.resolution, spec.patch)
                if why:
                    raise FeaturizeError(f"{job.key}: {why}")
                if job.pad and misfit(job.canvas, job.mosaic, job.resolution + 2 * job.pad, spec.patch):
                    raise FeaturizeError(
                        f"{job.key}: featurize.shift_margin {job.pad // spec.patch} needs {2 * job.pad} px of "
                        f"padding in its {tile_side(job.canvas, job.mosaic)} px mosaic tiles, which hold "
                        f"{job.resolution} px images with {tile_side(job.canvas, job.mosaic) - job.resolution} px to spare"
                    )


def _misfit_words(canvas: int, k: int, resolution: int, patch: int) -> str | None:
    """:func:`radio.config.mosaic.misfit`, in featurize's words."""
    why = misfit(canvas, k, resolution, patch)
    tile = tile_side(canvas, k)
    if why is Misfit.NOT_POWER_OF_TWO:
        return f"mosaic {k} is not a power of two (1, 2, 4, ...)"
    if why is Misfit.UNALIGNED:
        return f"mosaic {k} does not split the {canvas} px canvas into {patch}-px-aligned tiles"
    if why is Misfit.TOO_SMALL:
        return f"mosaic {k} tiles of a {canvas} px canvas are {tile} px, smaller than resolution {resolution}"
    return None


def _matches(name: str, teacher: str, tc, key: str | None = None) -> bool:
    if name in (teacher, tc.model) or (key is not None and name == key):
        return True
    try:
        return get_spec(tc.model).family == name
    except TeacherError:
        return False


@dataclass
class FeaturizeReport:
    store: str
    tars: int
    items: int
    skipped: int
    results: list[TarResult] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # tar → why it could not be listed
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # one-line remarks on the selection (--mosaic)
    ray_log: str | None = None  # where Ray's own log lines went (local runs without --verbose)

    @property
    def failed(self) -> list[TarResult]:
        return [r for r in self.results if r.error]

    @property
    def truncated(self) -> list[TarResult]:
        return [r for r in self.results if r.truncated]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unreadable and not self.truncated


def plan_rows(tars: list[str], shard_rows: int, threads: int = 8, crops_per_image: int = 1) -> Plan:
    """Count every tar's samples (img2dataset's ``_stats.json`` / parquet when they agree with the
    tar's size, else its headers; in parallel) and give each a shard-aligned range of
    ``crops_per_image`` rows per sample."""

    def one(path: str) -> tuple[str, int, int, str | None]:
        try:
            with open_binary(path) as f:
                size = f.seek(0, 2)
        except OSError as e:
            return path, 0, 0, f"{type(e).__name__}: {e}"
        n, error = planned_samples(path, size)
        return path, size, n, error

    with ThreadPoolExecutor(threads) as pool:
        return Plan.build(list(pool.map(one, tars)), shard_rows, crops_per_image)


def provenance(config: PipelineConfig, teacher: str, job: KeyJob) -> TargetProvenance:
    """What a target key is (DESIGN.md §3 invariant 5): recorded in the store, checked by distill."""
    tc = config.teachers[teacher]
    spec = get_spec(tc.model)
    why = input_misfit(
        job.mosaic, job.canvas, job.resolution, teacher_canvas=spec.canvas, input_size=spec.input_size, patch=spec.patch
    )
    if why is InputMisfit.NEEDS_MOSAIC:
        raise FeaturizeError(f"{job.key}: {tc.model} takes a fixed {spec.input_size} canvas; give the key a mosaic")
    if why is InputMisfit.NOT_A_CANVAS:
        raise FeaturizeError(f"{job.key}: {tc.model} runs at any size; mosaic applies to canvas teachers (SAM)")
    if why is InputMisfit.OTHER_CANVAS:
        raise FeaturizeError(f"{job.key}: canvas {job.canvas} but {tc.model} takes {spec.input_size}")
    if why is InputMisfit.OFF_PATCH:
        raise FeaturizeError(
            f"{job.key}: resolution {job.resolution} is not a multiple of {tc.model}'s patch {spec.patch}"
        )
    margin = job.pad // spec.patch  # featurize.shift_margin, in the teacher's patches
    grid = spec.grid(job.resolution) + 2 * margin
    return TargetProvenance(
        target_key=job.key,
        teacher=teacher,
        model=tc.model,
        family=spec.family,
        weights=tc.weights or "random-init",
        resolution=job.resolution,
        input_size=job.canvas if job.mosaic is not None else job.resolution,
        patch=spec.patch,
        mosaic=job.mosaic,
        grid=(grid, grid),
        feature_dim=spec.feature_dim,
        summary_dim=spec.summary_dim,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        output_scale=tc.output_scale,
        code_version=CODE_VERSION,
        margin=margin,
    )


def _settings(config: PipelineConfig) -> FeaturizeSettings:
    f = config.featurize
    return FeaturizeSettings(
        f.seed,
        f.crop.kind,
        tuple(f.crop.scale),
        tuple(f.crop.ratio),
        config.data.min_image_size,
        config.data.max_image_pixels,
    )


def prepare(
    config: PipelineConfig, selection: Selection, overwrite: bool = False, notes: list[str] | None = None
) -> tuple[FeatureStore, list[WorkItem]]:
    """Plan (or re-open) the store, pre-allocate the selected keys, list the incomplete work.

    Without ``--mosaic``, a SAM key already featurized with another mosaic resumes with the
    mosaic it has (a note in ``notes`` says so; ``overwrite`` recomputes it with the config's).
    """
    validate_geometry(config, selection)  # before anything is created
    provs = {job.key: provenance(config, t, job) for t, (_, _, jobs) in selection.teachers.items() for job in jobs}
    tars = expand_shards(config.data.shards)
    plan = plan_rows(tars, config.store.shard_rows, crops_per_image=config.featurize.crops_per_image)
    settings = settings_json(asdict(_settings(config)) | {"shards_fingerprint": fingerprint(tars)})
    store = FeatureStore.create(config.store.path, plan, settings)
    f = config.featurize
    plan_pixels(store, f.student_pixels, f.jpeg_quality, partition_resolutions(config.stages), overwrite)
    items: list[WorkItem] = []
    for teacher, (model, weights, jobs) in selection.teachers.items():
        if selection.mosaic is None and not overwrite:
            jobs = tuple(_stored_mosaic(config, store, teacher, job, notes) for job in jobs)
            provs |= {job.key: provenance(config, teacher, job) for job in jobs}
        for job in jobs:
            spec = get_spec(model)
            prov = provs[job.key]
            store.create_target(
                job.key,
                grid=prov.grid,
                feature_dim=spec.feature_dim,
                summary_dim=spec.summary_dim,
                provenance=prov,
                compressor=config.store.compressor,
                overwrite=overwrite,
            )
        done = {job.key: store.completed(job.key) for job in jobs}
        for job in jobs:
            if not done[job.key].all():
                # A normalizer fitted on these teacher outputs → the worker writes int8, not fp16.
                if compact.direct_compact(store, job.key) is None and compact.fitted_on_key(store, job.key) is False:
                    if notes is not None:
                        notes.append(
                            f"{job.key}: its PHI-S was fitted on other teacher outputs; written raw fp16 "
                            "(run `radio fit-phis` again, then `radio store compact`)"
                        )
        for tp in plan.tars:
            todo = tuple(j for j in jobs if not done[j.key][tp.index])
            if todo:
                items.append(WorkItem(tp.index, teacher, model, weights, todo, config.teachers[teacher].output_scale))
    return store, items


def _stored_mosaic(
    config: PipelineConfig, store: FeatureStore, teacher: str, job: KeyJob, notes: list[str] | None
) -> KeyJob:
    """``job`` with the mosaic its key was featurized with, when only the mosaic differs and some
    tar is complete (with none, the key is re-planned with the config's: nothing is lost)."""
    if job.mosaic is None or job.key not in store.target_keys or not store.completed(job.key).any():
        return job
    stored = store.target(job.key).provenance
    k = stored.mosaic
    if k is None or k == job.mosaic:
        return job
    other = replace(job, mosaic=k)
    if stored != provenance(config, teacher, other):
        return job  # more than the mosaic differs: create_target decides
    if notes is not None:
        notes.append(
            f"{job.key} keeps the mosaic {k} it was featurized with (the config says {job.mosaic}); "
            "--overwrite recomputes it with the config's"
        )
    return other


ProgressFn = Callable[[TarResult, int, int], None]


def run_featurize(
    config: PipelineConfig,
    *,
    teachers: list[str] | None = None,
    mosaic: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    on_result: ProgressFn | None = None,
    on_note: Callable[[str], None] | None = None,
    wait: bool = False,
) -> FeaturizeReport:
    """Featurize the selected target keys of ``config`` into its store; resumable.

    The run holds the store's writer lease (:mod:`radio.store.lease`): another writer makes it
    refuse with one line naming the holder, or with ``wait`` wait for it.

    Before anything is written: the selection and its geometry are validated and every
    teacher's weights are resolved (:func:`~radio.featurize.preflight.check_weights`). On a
    local run Ray's own log lines go to ``OUT/logs/featurize-*.log`` (``verbose``: to stderr).
    """
    start = time.perf_counter()
    selection = select(config, teachers, mosaic)
    for note in selection.notes:
        (on_note or print)(note)
    check_weights({t: (model, weights) for t, (model, weights, _) in selection.teachers.items()})
    # before the lease is written: a folder that is not a store stays untouched
    location = check_store_or_empty(config.store.path)
    # One writer at a time; --overwrite deletes keys, so it also waits for no training run to read them.
    with lease.take(config.store.path, "writer", "featurize", destructive=overwrite, wait=wait):
        location.remove_temporaries()  # a killed run's half-written files (we hold the store alone)
        return _featurize(config, selection, start, address, workers, overwrite, verbose, on_result, on_note)


def _featurize(
    config: PipelineConfig,
    selection: Selection,
    start: float,
    address: str | None,
    workers: int | None,
    overwrite: bool,
    verbose: bool,
    on_result: ProgressFn | None,
    on_note: Callable[[str], None] | None,
) -> FeaturizeReport:
    later: list[str] = []
    store, items = prepare(config, selection, overwrite, later)
    for note in later:
        (on_note or print)(note)
    report = FeaturizeReport(str(store.path), len(store.plan.tars), len(items), 0, notes=[*selection.notes, *later])
    report.unreadable = {t.path: t.error for t in store.plan.tars if t.error and t.samples == 0}
    total_keys = sum(len(k) for _, _, k in selection.teachers.values()) * len(store.plan.tars)
    report.skipped = total_keys - sum(len(i.keys) for i in items)
    if items:
        local = not (address or os.environ.get("RAY_ADDRESS"))
        log = log_path(config.out) if local and not verbose else None
        with ray_output_to(log):
            for i, result in enumerate(_run_on_ray(config, store, items, address, workers, verbose, on_note or print)):
                report.results.append(result)
                if on_result:
                    on_result(result, i + 1, len(items))
        report.ray_log = str(log) if log else None
    # Tars the graph did not decode (their targets were complete) get their pixels here.
    add_pixels(store)
    report.seconds = time.perf_counter() - start
    return report


def _run_on_ray(
    config: PipelineConfig,
    store: FeatureStore,
    items: list[WorkItem],
    address: str | None,
    workers: int | None,
    verbose: bool = False,
    on_note: Callable[[str], None] | None = None,
):
    import logging

    import ray

    from .graph import run_on_ray

    gpus = _init_ray(address, verbose)
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # the driver reports progress itself
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows its own, per tar
    ctx.execution_options.preserve_order = False
    yield from run_on_ray(store, items, _settings(config), config.featurize.batch_size, workers, gpus, on_note=on_note)


def _init_ray(address: str | None, verbose: bool = False) -> int:
    """Attach to ``address`` / RAY_ADDRESS, or start a local instance; returns the GPUs available.

    ``verbose``: Ray's INFO lines and the workers' output reach the driver's terminal."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, logging_level="INFO" if verbose else "ERROR", log_to_driver=verbose)
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A new local instance (never an unrelated one found on the machine). Logical CPUs
            # above the physical count let Ray Data's read tasks run beside the actors.
            ray.init(address="local", num_cpus=max(2, (os.cpu_count() or 1) * 2), **kwargs)
    return int(ray.cluster_resources().get("GPU", 0))


def summarize(report: FeaturizeReport) -> dict:
    """Totals for the run summary: samples by reason, per key images/s and bytes."""
    reasons: Counter[str] = Counter()
    seen_tars: set[int] = set()
    per_key: dict[str, dict[str, float]] = {}
    for r in report.results:
        if r.tar_index not in seen_tars and not r.error:
            seen_tars.add(r.tar_index)
            reasons["valid"] += r.valid
            reasons.update(r.reasons)
        for k in r.keys:
            d = per_key.setdefault(k, {"images": 0, "seconds": 0.0, "compute_seconds": 0.0, "bytes": 0})
            d["images"] += r.valid
            d["seconds"] += r.seconds / max(1, len(r.keys))
            d["compute_seconds"] += r.compute_seconds.get(k, 0.0)
            d["bytes"] += r.bytes_written.get(k, 0)
    return {"reasons": dict(reasons), "per_key": per_key}


__all__ = ["FeaturizeError", "FeaturizeReport", "prepare", "run_featurize", "select", "summarize", "validate_geometry"]
