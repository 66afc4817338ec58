"""Featurize's GPU stage: one teacher over decoded groups → whole-shard writes per target key.

A :class:`TeacherStage` lives in a Ray actor (one actor pool per teacher) and keeps its teacher
loaded. It takes the pixels the CPU stage (:mod:`radio.featurize.decode`) decoded once for
every teacher, runs its target keys, writes each Zarr shard whole, and hands per-group moments
to the driver, which writes moments and the completion marker last (DESIGN.md §3).
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from radio.store import compact
from radio.store.layout import FeatureStore
from radio.store.moments import Moments
from radio.store.phis import PhiS

from . import mosaic
from .hostmem import keep_heap_for_cpu_teachers
from .teachers import Teacher, create_teacher


@dataclass(frozen=True)
class KeyJob:
    """One target key: images resized to ``resolution``; ``mosaic`` k tiles them on a ``canvas``."""

    key: str
    resolution: int
    mosaic: int | None = None
    canvas: int = 1024


@dataclass(frozen=True)
class WorkItem:
    tar_index: int
    teacher: str  # the config's teacher name
    model: str  # registry name
    weights: str | None
    keys: tuple[KeyJob, ...]
    output_scale: float = 1.0  # the teacher config's output_scale, applied to every output

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> WorkItem:
        d = json.loads(s)
        return cls(d["tar_index"], d["teacher"], d["model"], d["weights"], tuple(KeyJob(**k) for k in d["keys"]),
                   d.get("output_scale", 1.0))  # fmt: skip


@dataclass
class TarResult:
    tar_index: int
    teacher: str
    keys: list[str]
    samples: int = 0
    valid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    compute_seconds: dict[str, float] = field(default_factory=dict)  # per key: teacher time only
    bytes_written: dict[str, int] = field(default_factory=dict)  # per key: raw fp16 bytes of valid rows
    teacher_inputs: dict[str, int] = field(default_factory=dict)  # per key: images or canvases the teacher ran on
    truncated: str | None = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> TarResult:
        return cls(**json.loads(s))


@dataclass(frozen=True)
class FeaturizeSettings:
    """What every worker must agree on; also recorded in the store."""

    seed: int = 0
    crop_kind: str = "random_square"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    min_image_size: int = 32
    max_image_pixels: int = 64_000_000


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def moments_column(key: str, stream: str) -> str:
    return f"mom:{key}:{stream}"


def result_column(teacher: str) -> str:
    return f"res:{teacher}"


def pack_moments(m: Moments | None, dim: int) -> np.ndarray:
    """``[1 + C + C²]`` float64: count, mean, M2 (a fixed-shape Ray Data column)."""
    m = m or Moments.empty(dim)
    return np.concatenate([[float(m.count)], np.asarray(m.mean, np.float64), np.asarray(m.m2, np.float64).ravel()])


def unpack_moments(v: np.ndarray, dim: int) -> Moments:
    return Moments(int(v[0]), v[1 : 1 + dim].copy(), v[1 + dim :].reshape(dim, dim).copy())


class TeacherStage:
    """One teacher's GPU stage: callable for Ray Data's ``map_batches`` over decoded groups
    (see :mod:`radio.featurize.decode`); usable directly too.

    For every group of a tar where this teacher has incomplete keys, it runs the teacher on the
    group's pixels (``batch_size`` images per forward), writes each of the group's shards whole
    for every key, and adds per key the group's moments and a JSON result to the row. Moments
    and completion markers are the driver's (:mod:`radio.featurize.finalize`), once every group
    of the tar has passed. A teacher that cannot load (missing weights) fails only its own keys.
    """

    def __init__(
        self,
        store_path: str,
        settings: FeaturizeSettings,
        teacher: str,
        model: str,
        weights: str | None,
        keys: list[KeyJob] | tuple[KeyJob, ...],
        batch_size: int = 16,
        device: str | None = None,
        threads: int | None = None,
        drop: tuple[str, ...] = (),
    ):
        from .teachers import get_spec

        self.store = FeatureStore(store_path)
        self.settings = settings
        self.name = teacher
        self.spec = get_spec(model)
        self.keys = tuple(KeyJob(**k) if isinstance(k, dict) else k for k in keys)
        self.batch_size = batch_size
        self.device = pick_device(device)
        self.drop = drop  # pixel columns no later stage needs
        if threads:
            torch.set_num_threads(threads)
        if self.device.type == "cpu":
            keep_heap_for_cpu_teachers()  # else each forward re-faults its activations (hostmem)
        self.error: str | None = None
        self.teacher: Teacher | None = None
        self.last_inputs = 0  # images or canvases of the last forward (the run report counts them)
        self._direct_cache: dict[str, tuple[compact.CompactKey, PhiS] | None] = {}
        try:
            self.teacher = create_teacher(model, weights, device=self.device)
        except Exception as e:  # noqa: BLE001 - reported per (tar, key); other teachers go on
            self.error = f"{type(e).__name__}: {e}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["meta"])
        out = {k: v for k, v in batch.items() if k not in self.drop}
        dims = {"features": self.spec.feature_dim, "summary": self.spec.summary_dim}
        cols = {moments_column(k.key, st): [] for k in self.keys for st, d in dims.items() if d}
        results = []
        for i in range(n):
            meta = json.loads(str(batch["meta"][i]))
            todo, output_scale = self._todo(meta)
            res: dict[str, Any] = {"keys": [k.key for k in todo], "error": None, "compute_seconds": {},
                                   "bytes": {}, "seconds": 0.0}  # fmt: skip
            moments: dict[tuple[str, str], Moments] = {}
            if todo:
                start = time.perf_counter()
                try:
                    if self.error:
                        raise RuntimeError(self.error)
                    moments = self.group(meta, batch["valid"][i], {c: batch[c][i] for c in batch if c.startswith("px")},
                                         todo, res, output_scale)  # fmt: skip
                except Exception as e:  # noqa: BLE001 - this (tar, teacher) fails; the job goes on
                    res["error"] = self.error or f"{type(e).__name__}: {e}"
                res["seconds"] = time.perf_counter() - start
            results.append(json.dumps(res))
            for k in self.keys:
                for st, d in dims.items():
                    if d:
                        cols[moments_column(k.key, st)].append(pack_moments(moments.get((k.key, st)), d))
        out[result_column(self.name)] = np.array(results, dtype=object)
        out |= {c: np.stack(v) for c, v in cols.items()}
        return out

    def _todo(self, meta: dict[str, Any]) -> tuple[list[KeyJob], float]:
        """This teacher's incomplete keys of the group's tar, and its ``output_scale``."""
        item = json.loads(meta["item"])
        mine = next((w for w in item["work"] if w["teacher"] == self.name), None)
        if mine is None:
            return [], 1.0
        return [KeyJob(**k) for k in mine["keys"]], float(mine.get("output_scale", 1.0))

    def group(self, meta: dict[str, Any], valid: np.ndarray, pixels: dict[str, np.ndarray], todo: list[KeyJob],
              res: dict[str, Any], output_scale: float = 1.0) -> dict[tuple[str, str], Moments]:  # fmt: skip
        """Targets of one group for each key in ``todo``: whole-shard writes; returns the moments
        of the valid rows' fp16 targets per (key, stream). ``output_scale`` multiplies both outputs.

        A key with a fitted normalizer is written compact (PHI-S-space int8, never raw fp16); its
        error sums go to the driver in ``res["compact_errors"]``, which records them before the
        completion marker."""
        from .decode import pixel_column

        r = self.store.plan.shard_rows
        windows, row_start = meta["windows"], meta["row_start"]
        idx = np.flatnonzero(valid)
        keys = [meta["keys"][i] for i in idx]
        spec = self.spec
        out: dict[tuple[str, str], Moments] = {}
        res.setdefault("teacher_inputs", {})
        res.setdefault("compact_errors", {})
        with ThreadPoolExecutor(max_workers=2) as writer:
            writes: list[Future] = []
            direct_writes: dict[str, list[Future]] = {}
            for job in todo:
                g = job.resolution // spec.patch
                feats = np.zeros((windows * r, g, g, spec.feature_dim), np.float16)
                summ = np.zeros((windows * r, spec.summary_dim), np.float16) if spec.summary_dim else None
                t0 = time.perf_counter()
                self.last_inputs = 0
                if len(idx):
                    crops = torch.from_numpy(np.ascontiguousarray(pixels[pixel_column(job.resolution)][idx]))
                    with torch.inference_mode(), autocast_for(self.device):
                        f, sm = self._forward(self.teacher, job, crops, keys)
                        if output_scale != 1.0:
                            f, sm = f * output_scale, (sm * output_scale if sm is not None else None)
                    # Round to fp16 first: the moments describe the stored targets.
                    f16 = f.to(torch.float16)
                    out[(job.key, "features")] = _moments(f16.reshape(-1, f16.shape[-1]))
                    feats[idx] = f16.cpu().numpy()
                    if summ is not None and sm is not None:
                        sm16 = sm.to(torch.float16)
                        out[(job.key, "summary")] = _moments(sm16)
                        summ[idx] = sm16.cpu().numpy()
                res["compute_seconds"][job.key] = time.perf_counter() - t0
                res["bytes"][job.key] = feats[idx].nbytes + (summ[idx].nbytes if summ is not None else 0)
                res["teacher_inputs"][job.key] = self.last_inputs
                direct = self._direct(job.key)
                for w in range(windows):  # whole shards only
                    sl = slice(w * r, (w + 1) * r)
                    part = summ[sl] if summ is not None else None
                    if direct is None:
                        writes.append(writer.submit(self.store.write_shard, job.key, row_start + w * r, feats[sl], part))
                    else:  # encoded right before its write
                        rows = [int(i) - w * r for i in idx if w * r <= i < (w + 1) * r]
                        direct_writes.setdefault(job.key, []).append(writer.submit(
                            compact.write_direct_window, self.store, direct[0], row_start + w * r, feats[sl], part,
                            rows, direct[1]))  # fmt: skip
            for w in writes:
                w.result()  # durable before the row moves on (the driver marks completion after)
            for key, futures in direct_writes.items():
                sums = [f.result() for f in futures]
                res["compact_errors"][key] = [float(sum(e[0] for e in sums)), float(sum(e[1] for e in sums))]
        return out

    def _direct(self, key: str) -> tuple[compact.CompactKey, PhiS] | None:
        """The codec and normalizer ``key`` is written compact in (the driver created it), or None."""
        if key not in self._direct_cache:
            ck = compact.compact_key(self.store, key)
            self._direct_cache[key] = None if ck is None else (ck, compact.compact_phis(self.store, ck, "features"))
        return self._direct_cache[key]

    def _forward(
        self, teacher: Teacher, job: KeyJob, crops: torch.Tensor, keys: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``crops [n, s, s, 3] uint8`` → features ``[n, h, w, C]`` and summary ``[n, Cs]`` (or None)."""
        spec = teacher.spec
        x = crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        x = teacher.normalize(x)
        if job.mosaic is None:
            self.last_inputs = len(x)  # counted for the run report (mosaic: k² images per input)
            outs = [teacher(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
            f = torch.cat([o.features for o in outs])
            sm = torch.cat([o.summary for o in outs]) if spec.summary_dim else None
        else:
            k = job.mosaic
            offsets = mosaic.tile_offsets(self.settings.seed, keys, job.canvas, k, job.resolution, spec.patch)
            canvases = mosaic.compose(x, k, job.canvas, offsets)
            self.last_inputs = len(canvases)
            step = max(1, self.batch_size // (k * k))
            grid = torch.cat([teacher(canvases[i : i + step]).features for i in range(0, len(canvases), step)])
            f, sm = mosaic.split(grid, len(keys), k, job.canvas, job.resolution, offsets), None
        return f, sm


def _moments(x: torch.Tensor) -> Moments:
    """Moments of ``x [N, C]`` in float64 on its own device: on a GPU, the C² work of M2 stays
    off the CPU (for SAM-H, 4096 tokens × 1280² per image would otherwise stall the pipeline)."""
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=0)
    xc = x64 - mean
    return Moments(x.shape[0], mean.cpu().numpy(), (xc.T @ xc).cpu().numpy())


def autocast_for(device: torch.device):
    """bf16 autocast on GPU (teachers' released precision); exact fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
