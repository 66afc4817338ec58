"""Featurize's GPU stage: one teacher over decoded groups → whole-shard writes per target key.

A :class:`TeacherStage` lives in a Ray actor (one actor pool per teacher) and keeps its teacher
loaded. It takes the pixels the CPU stage (:mod:`radio.featurize.decode`) decoded once for
every teacher, runs its target keys, writes each Zarr shard whole, and hands per-group moments
to the driver, which writes moments and the completion marker last (DESIGN.md §3).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from radio.store import compact
from radio.store.layout import FeatureStore
from radio.store.moments import Moments
from radio.store.phis import PhiS

from . import mosaic
from .hostmem import keep_heap_for_cpu_teachers
from .records import (
    FeaturizeSettings,
    GroupHeader,
    GroupResult,
    KeyJob,
    KeyOutcome,
    moments_column,
    pack_moments,
    pixel_column,
    to_batch,
)
from .teachers import Teacher, create_teacher


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TeacherStage:
    """One teacher's GPU stage: callable for Ray Data's ``map_batches`` over decoded groups
    (see :mod:`radio.featurize.decode`); usable directly too.

    For every group of a tar where this teacher has incomplete keys, it runs the teacher on the
    group's pixels (``batch_size`` images per forward), writes each of the group's shards whole
    for every key, and adds to the row its :class:`GroupResult` and per key the group's moments.
    Moments and completion markers are the driver's (:mod:`radio.featurize.finalize`), once every
    group of the tar has passed. A teacher that cannot load (missing weights) fails only its own keys.
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
        n = len(batch["item"])
        out = {k: v for k, v in batch.items() if k not in self.drop}
        dims = {"features": self.spec.feature_dim, "summary": self.spec.summary_dim}
        names = [k.key for k in self.keys]
        rows = []
        for i in range(n):
            header = GroupHeader.from_row({c: v[i] for c, v in batch.items()})
            mine = header.item.of(self.name)
            todo = list(mine.keys) if mine else []
            res = GroupResult()
            moments: dict[tuple[str, str], Moments] = {}
            if todo:
                assert mine is not None  # todo comes from it
                start = time.perf_counter()
                try:
                    if self.error:
                        raise RuntimeError(self.error)
                    pixels = {c: batch[c][i] for c in batch if c.startswith("px")}
                    moments = self.group(header, batch["valid"][i], pixels, todo, res, mine.output_scale)
                except Exception as e:  # noqa: BLE001 - this (tar, teacher) fails; the job goes on
                    res.error = self.error or f"{type(e).__name__}: {e}"
                res.seconds = time.perf_counter() - start
            row = res.columns(self.name, names)
            for k in self.keys:
                for st, d in dims.items():
                    if d:
                        row[moments_column(k.key, st)] = pack_moments(moments.get((k.key, st)), d)
            rows.append(row)
        return out | to_batch(rows)

    def group(
        self,
        header: GroupHeader,
        valid: np.ndarray,
        pixels: dict[str, np.ndarray],
        todo: list[KeyJob],
        res: GroupResult,
        output_scale: float = 1.0,
    ) -> dict[tuple[str, str], Moments]:
        """Targets of one group for each key in ``todo``: whole-shard writes; returns the moments
        of the valid rows' fp16 targets per (key, stream). ``output_scale`` multiplies both outputs.

        A key with a fitted normalizer is written compact (PHI-S-space int8, never raw fp16); its
        error sums go to the driver in the key's ``compact_errors``, which records them before the
        completion marker."""
        r = self.store.plan.shard_rows
        windows, row_start = header.windows, header.row_start
        idx = np.flatnonzero(valid)
        keys = [header.keys[i] for i in idx]
        spec = self.spec
        out: dict[tuple[str, str], Moments] = {}
        with ThreadPoolExecutor(max_workers=2) as writer:
            writes: list[Future] = []
            direct_writes: dict[str, list[Future]] = {}
            for job in todo:
                g = (job.resolution + 2 * job.pad) // spec.patch  # the cached grid: g + 2m with a shift margin
                feats = np.zeros((windows * r, g, g, spec.feature_dim), np.float16)
                summ = np.zeros((windows * r, spec.summary_dim), np.float16) if spec.summary_dim else None
                t0 = time.perf_counter()
                self.last_inputs = 0
                if len(idx):
                    crops = torch.from_numpy(np.ascontiguousarray(pixels[pixel_column(job.resolution, job.pad)][idx]))
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
                seconds = time.perf_counter() - t0
                nbytes = feats[idx].nbytes + (summ[idx].nbytes if summ is not None else 0)
                res.keys[job.key] = KeyOutcome(seconds, nbytes, self.last_inputs)
                direct = self._direct(job.key)
                for w in range(windows):  # whole shards only
                    sl = slice(w * r, (w + 1) * r)
                    part = summ[sl] if summ is not None else None
                    if direct is None:
                        writes.append(
                            writer.submit(self.store.write_shard, job.key, row_start + w * r, feats[sl], part)
                        )
                    else:  # encoded right before its write
                        rows = [int(i) - w * r for i in idx if w * r <= i < (w + 1) * r]
                        direct_writes.setdefault(job.key, []).append(
                            writer.submit(
                                compact.write_direct_window,
                                self.store,
                                direct[0],
                                row_start + w * r,
                                feats[sl],
                                part,
                                rows,
                                direct[1],
                            )
                        )
            for w in writes:
                w.result()  # durable before the row moves on (the driver marks completion after)
            for key, futures in direct_writes.items():
                sums = [f.result() for f in futures]
                res.keys[key].compact_errors = (float(sum(e[0] for e in sums)), float(sum(e[1] for e in sums)))
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
            side = job.resolution + 2 * job.pad  # a shift margin lives in the tile's padding: no extra canvas
            offsets = mosaic.tile_offsets(self.settings.seed, keys, job.canvas, k, side, spec.patch)
            canvases = mosaic.compose(x, k, job.canvas, offsets)
            self.last_inputs = len(canvases)
            step = max(1, self.batch_size // (k * k))
            grid = torch.cat([teacher(canvases[i : i + step]).features for i in range(0, len(canvases), step)])
            f, sm = mosaic.split(grid, len(keys), k, job.canvas, side, offsets), None
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
