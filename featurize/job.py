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
from dataclasses import asdict, dataclass, field

from radio.config import PipelineConfig, fingerprint
from radio.store.layout import FeatureStore, Plan, settings_json
from radio.store.shards import expand_shards, open_binary

from .counts import planned_samples
from .teachers import TeacherError, get_spec
from .worker import FeaturizeSettings, KeyJob, TarResult, WorkItem

CODE_VERSION = "radio-featurize/1"


class FeaturizeError(ValueError):
    """A featurize request that cannot run (unknown teacher, bad --mosaic, ...)."""


@dataclass(frozen=True)
class Selection:
    """The teachers and target keys a run computes, with CLI overrides applied."""

    teachers: dict[str, tuple[str, str | None, tuple[KeyJob, ...]]]  # name → (model, weights, keys)

    @property
    def keys(self) -> list[KeyJob]:
        return [k for _, _, keys in self.teachers.values() for k in keys]


def select(config: PipelineConfig, names: list[str] | None = None, mosaic: int | None = None) -> Selection:
    """Target keys of the teachers matching ``names`` (a config teacher name, a registry model,
    a family such as ``sam``, or a target key); all when ``names`` is empty."""
    chosen: dict[str, tuple[str, str | None, tuple[KeyJob, ...]]] = {}
    for name in names or []:
        if not any(_matches(name, t, tc) for t, tc in config.teachers.items()):
            known = sorted({*config.teachers, *config.target_keys})
            raise FeaturizeError(f"--teacher {name!r} matches no teacher or target key (known: {', '.join(known)})")
    for t, tc in config.teachers.items():
        keys = [k for k in tc.targets if not names or any(_matches(n, t, tc, k) for n in names)]
        if not keys:
            continue
        jobs = []
        for k in keys:
            spec = tc.targets[k]
            m = spec.mosaic
            if mosaic is not None:
                if m is None:
                    raise FeaturizeError(f"--mosaic applies to mosaic teachers; {k} has none (select with --teacher)")
                m = mosaic
            jobs.append(KeyJob(k, spec.resolution, m, spec.canvas))
        chosen[t] = (tc.model, tc.weights, tuple(jobs))
    return Selection(chosen)


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

    @property
    def failed(self) -> list[TarResult]:
        return [r for r in self.results if r.error]

    @property
    def truncated(self) -> list[TarResult]:
        return [r for r in self.results if r.truncated]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unreadable and not self.truncated


def plan_rows(tars: list[str], shard_rows: int, threads: int = 8) -> Plan:
    """Count every tar's samples (img2dataset's ``_stats.json`` / parquet when they agree with the
    tar's size, else its headers; in parallel) and give each a shard-aligned range."""

    def one(path: str) -> tuple[str, int, int, str | None]:
        try:
            with open_binary(path) as f:
                size = f.seek(0, 2)
        except OSError as e:
            return path, 0, 0, f"{type(e).__name__}: {e}"
        n, error = planned_samples(path, size)
        return path, size, n, error

    with ThreadPoolExecutor(threads) as pool:
        return Plan.build(list(pool.map(one, tars)), shard_rows)


def provenance(config: PipelineConfig, teacher: str, job: KeyJob) -> dict:
    """What a target key is (DESIGN.md §3 invariant 5): recorded in the store, checked by distill."""
    tc = config.teachers[teacher]
    spec = get_spec(tc.model)
    canvas = job.mosaic is not None
    if not canvas and spec.canvas:
        raise FeaturizeError(f"{job.key}: {tc.model} takes a fixed {spec.input_size} canvas; give the key a mosaic")
    if canvas and not spec.canvas:
        raise FeaturizeError(f"{job.key}: {tc.model} runs at any size; mosaic applies to canvas teachers (SAM)")
    if canvas and job.canvas != spec.input_size:
        raise FeaturizeError(f"{job.key}: canvas {job.canvas} but {tc.model} takes {spec.input_size}")
    grid = spec.grid(job.resolution)
    return {
        "target_key": job.key,
        "teacher": teacher,
        "model": tc.model,
        "family": spec.family,
        "weights": tc.weights or "random-init",
        "resolution": job.resolution,
        "input_size": job.canvas if canvas else job.resolution,
        "patch": spec.patch,
        "mosaic": job.mosaic,
        "grid": [grid, grid],
        "feature_dim": spec.feature_dim,
        "summary_dim": spec.summary_dim,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "code_version": CODE_VERSION,
    }


def _settings(config: PipelineConfig) -> FeaturizeSettings:
    f = config.featurize
    return FeaturizeSettings(f.seed, f.crop.kind, tuple(f.crop.scale), config.data.min_image_size,
                             config.data.max_image_pixels)  # fmt: skip


def prepare(config: PipelineConfig, selection: Selection, overwrite: bool = False) -> tuple[FeatureStore, list[WorkItem]]:
    """Plan (or re-open) the store, pre-allocate the selected keys, list the incomplete work."""
    tars = expand_shards(config.data.shards)
    plan = plan_rows(tars, config.store.shard_rows)
    settings = settings_json(asdict(_settings(config)) | {"shards_fingerprint": fingerprint(tars)})
    store = FeatureStore.create(config.store.path, plan, settings)
    items: list[WorkItem] = []
    for teacher, (model, weights, jobs) in selection.teachers.items():
        for job in jobs:
            spec = get_spec(model)
            prov = provenance(config, teacher, job)
            store.create_target(job.key, grid=tuple(prov["grid"]), feature_dim=spec.feature_dim,
                                summary_dim=spec.summary_dim, provenance=prov,
                                compressor=config.store.compressor, overwrite=overwrite)  # fmt: skip
        done = {job.key: store.completed(job.key) for job in jobs}
        for tp in plan.tars:
            todo = tuple(j for j in jobs if not done[j.key][tp.index])
            if todo:
                items.append(WorkItem(tp.index, teacher, model, weights, todo))
    return store, items


ProgressFn = Callable[[TarResult, int, int], None]


def run_featurize(
    config: PipelineConfig,
    *,
    teachers: list[str] | None = None,
    mosaic: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    on_result: ProgressFn | None = None,
) -> FeaturizeReport:
    """Featurize the selected target keys of ``config`` into its store; resumable."""
    start = time.perf_counter()
    selection = select(config, teachers, mosaic)
    store, items = prepare(config, selection, overwrite)
    report = FeaturizeReport(str(store.path), len(store.plan.tars), len(items), 0)
    report.unreadable = {t.path: t.error for t in store.plan.tars if t.error and t.samples == 0}
    total_keys = sum(len(k) for _, _, k in selection.teachers.values()) * len(store.plan.tars)
    report.skipped = total_keys - sum(len(i.keys) for i in items)
    if items:
        for i, result in enumerate(_run_on_ray(config, store, items, address, workers)):
            report.results.append(result)
            if on_result:
                on_result(result, i + 1, len(items))
    report.seconds = time.perf_counter() - start
    return report


def _run_on_ray(config: PipelineConfig, store: FeatureStore, items: list[WorkItem], address: str | None,
                workers: int | None):  # fmt: skip
    import logging

    import ray

    from .graph import run_on_ray

    gpus = _init_ray(address)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the driver reports progress itself
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows its own, per tar
    ctx.execution_options.preserve_order = False
    yield from run_on_ray(store, items, _settings(config), config.featurize.batch_size, workers, gpus)


def _init_ray(address: str | None) -> int:
    """Attach to ``address`` / RAY_ADDRESS, or start a local instance; returns the GPUs available."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
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



__all__ = ["FeaturizeError", "FeaturizeReport", "prepare", "run_featurize", "select", "summarize"]
