"""Featurize one (tar, teacher): decode → crop → teacher at each target geometry → whole-shard writes.

A :class:`TarFeaturizer` lives in a Ray actor and keeps its teachers loaded across tars. For one
:class:`WorkItem` it streams the tar window by window (one window = one Zarr shard of rows),
runs the teacher for every target key of the item, writes each window as a whole shard, and
only after the last shard, the moments and the manifest are durable writes the completion
marker of each key (DESIGN.md §3). Decoding runs ahead in a thread and writes trail behind in
another, so the teacher is rarely idle.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from queue import Queue
from typing import Any

import numpy as np
import torch

from radio.store import compact
from radio.store.crops import CropBox, choose_crop, crop_resize
from radio.store.images import ImageLimits
from radio.store.layout import FeatureStore, TarPlan
from radio.store.moments import Moments
from radio.store.phis import PhiS
from radio.store.shards import Sample, ShardReader

from . import mosaic
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


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``it`` in a background thread, ``depth`` items ahead; re-raise its exception here."""
    q: Queue = Queue(maxsize=depth)
    done = object()

    def run() -> None:
        try:
            for x in it:
                q.put(x)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    threading.Thread(target=run, daemon=True).start()
    while (x := q.get()) is not done:
        if isinstance(x, BaseException):
            raise x
        yield x


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TarFeaturizer:
    """Callable for Ray Data's ``map_batches`` (one work item per batch), usable directly too."""

    def __init__(
        self,
        store_path: str,
        settings: FeaturizeSettings,
        batch_size: int = 16,
        device: str | None = None,
        threads: int | None = None,
    ):
        self.store = FeatureStore(store_path)
        self.settings = settings
        self.batch_size = batch_size
        self.device = pick_device(device)
        if threads:
            torch.set_num_threads(threads)
        self.teachers: dict[tuple[str, str | None], Teacher] = {}

    # Ray Data entry point: {"item": [json]} → {"result": [json]}
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        return {"result": [self.process(WorkItem.from_json(str(s))).to_json() for s in batch["item"]]}

    def teacher(self, model: str, weights: str | None) -> Teacher:
        if (model, weights) not in self.teachers:
            self.teachers[(model, weights)] = create_teacher(model, weights, device=self.device)
        return self.teachers[(model, weights)]

    def process(self, item: WorkItem) -> TarResult:
        """Featurize one tar for one teacher; never raises (errors are in the result)."""
        result = TarResult(item.tar_index, item.teacher, [k.key for k in item.keys])
        start = time.perf_counter()
        try:
            self._process(item, result)
        except Exception as e:  # noqa: BLE001 - one bad tar must not stop the job
            result.error = f"{type(e).__name__}: {e}"
        result.seconds = time.perf_counter() - start
        return result

    def _process(self, item: WorkItem, result: TarResult) -> None:
        tp = self.store.plan.tars[item.tar_index]
        teacher = self.teacher(item.model, item.weights)
        s = self.settings
        reader = ShardReader(tp.path, ImageLimits(s.min_image_size, s.max_image_pixels))
        moments = {(k.key, stream): None for k in item.keys for stream in ("features", "summary")}
        manifest: list[dict[str, Any]] = []
        reasons: Counter[str] = Counter()
        result.compute_seconds = {k.key: 0.0 for k in item.keys}
        result.bytes_written = {k.key: 0 for k in item.keys}
        result.teacher_inputs = {k.key: 0 for k in item.keys}
        writes: list[Future] = []
        # Keys with a fitted normalizer are written compact (PHI-S-space int8), never as raw fp16.
        direct = {k.key: self._direct(k.key) for k in item.keys}
        errors = {k.key: [0.0, 0.0] for k in item.keys}  # Σ(y-ŷ)², Σy² of the direct-written rows
        with ThreadPoolExecutor(max_workers=1) as writer:
            for row_start, samples in _prefetch(self._windows(reader, tp)):
                boxes = [self._box(x) for x in samples]
                manifest += [self._manifest_row(tp, row_start + i, x, b) for i, (x, b) in enumerate(zip(samples, boxes))]
                reasons.update(x.reason or "valid" for x in samples)
                valid = [i for i, x in enumerate(samples) if x.valid]
                for job in item.keys:
                    t0 = time.perf_counter()
                    self.last_inputs = 0
                    feats, summ, window_moments = self._window_targets(teacher, job, samples, boxes, valid,
                                                                       item.output_scale)  # fmt: skip
                    result.compute_seconds[job.key] += time.perf_counter() - t0
                    result.teacher_inputs[job.key] += self.last_inputs
                    for stream, m in window_moments.items():
                        prev = moments[(job.key, stream)]
                        moments[(job.key, stream)] = m if prev is None else prev.merge(m)
                    result.bytes_written[job.key] += feats[valid].nbytes + (summ[valid].nbytes if summ is not None else 0)
                    if direct[job.key] is None:
                        writes.append(writer.submit(self.store.write_shard, job.key, row_start, feats, summ))
                    else:
                        writes.append(writer.submit(self._write_direct, direct[job.key], errors[job.key], row_start,
                                                    feats, summ, valid))  # fmt: skip
                # Surface write errors early and bound memory: at most a few windows in flight.
                while len(writes) > 2 * len(item.keys):
                    writes.pop(0).result()
            for w in writes:
                w.result()
        if reader.truncated:
            result.truncated = reader.error
        self.store.write_manifest(tp.index, manifest)
        for job in item.keys:
            for stream in ("features", "summary"):
                m = moments[(job.key, stream)]
                if stream == "summary" and teacher.spec.summary_dim is None:
                    continue
                dim = teacher.spec.feature_dim if stream == "features" else teacher.spec.summary_dim
                self.store.write_moments(job.key, tp.index, stream, m or Moments.empty(dim))
            if direct[job.key] is not None:
                compact.mark_direct_complete(self.store, job.key, tp.index, *errors[job.key])
            self.store.mark_complete(job.key, tp.index)  # last: the (tar, key) is now complete
        result.samples = len(manifest)
        result.valid = reasons["valid"]
        result.reasons = {r: n for r, n in reasons.items() if r != "valid"}

    def _direct(self, key: str) -> tuple[compact.CompactKey, PhiS] | None:
        """The codec and normalizer a key is written compact in (the driver created it), or None."""
        ck = compact.compact_key(self.store, key)
        if ck is None:
            return None
        return ck, compact.normalizer_for(self.store, key, "features")

    def _write_direct(self, codec: tuple[compact.CompactKey, PhiS], errors: list[float], row_start: int,
                      feats: np.ndarray, summ: np.ndarray | None, valid: list[int]) -> None:  # fmt: skip
        """Encode one window right before its write (the writer thread: one at a time per item)."""
        sse, ssy = compact.write_direct_window(self.store, codec[0], row_start, feats, summ, valid, codec[1])
        errors[0] += sse
        errors[1] += ssy

    def _windows(self, reader: ShardReader, tp: TarPlan) -> Iterator[tuple[int, list[Sample]]]:
        """(first row, samples) per Zarr shard of the tar's row range, in member order."""
        r = self.store.plan.shard_rows
        window: list[Sample] = []
        for sample in reader:
            if sample.ordinal >= tp.samples:
                raise RuntimeError(f"{tp.path} holds more samples than planned ({tp.samples}); was it rewritten?")
            window.append(sample)
            if len(window) == r:
                yield tp.row_start + sample.ordinal + 1 - r, window
                window = []
        if window:
            yield tp.row_start + window[0].ordinal, window

    def _box(self, sample: Sample) -> CropBox | None:
        if not sample.valid:
            return None
        h, w = sample.pixels.shape[:2]
        s = self.settings
        return choose_crop(s.seed, sample.key, w, h, s.crop_kind, s.crop_scale)

    @staticmethod
    def _manifest_row(tp: TarPlan, row: int, x: Sample, box: CropBox | None) -> dict[str, Any]:
        h, w = x.pixels.shape[:2] if x.pixels is not None else (None, None)
        return {
            "row": row, "key": x.key, "uid": x.uid, "tar": tp.path, "tar_index": tp.index, "ordinal": x.ordinal,
            "offset": x.image.offset if x.image else None, "size": x.image.size if x.image else None,
            "valid": x.valid, "reason": x.reason, "width": w, "height": h,
            "crop_x": box.x if box else None, "crop_y": box.y if box else None, "crop_size": box.size if box else None,
        }  # fmt: skip

    def _window_targets(
        self, teacher: Teacher, job: KeyJob, samples: list[Sample], boxes: list[CropBox | None], valid: list[int],
        output_scale: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Moments]]:
        """Targets of one window for one key: ``features [R, h, w, C]`` and ``summary [R, Cs]`` fp16,
        zero rows where a sample is invalid or the window is shorter than a shard; and the moments
        of the valid rows' fp16 targets per stream. ``output_scale`` multiplies both outputs."""
        spec = teacher.spec
        r = self.store.plan.shard_rows
        g = job.resolution // spec.patch
        feats = np.zeros((r, g, g, spec.feature_dim), np.float16)
        summ = np.zeros((r, spec.summary_dim), np.float16) if spec.summary_dim else None
        if not valid:
            return feats, summ, {}
        crops = np.stack([crop_resize(samples[i].pixels, boxes[i], job.resolution) for i in valid])
        with torch.inference_mode(), autocast_for(self.device):
            f, sm = self._forward(teacher, job, torch.from_numpy(crops), [samples[i].key for i in valid])
            if output_scale != 1.0:
                f, sm = f * output_scale, (sm * output_scale if sm is not None else None)
        # Round to fp16 first: the moments describe the stored targets, the values the trainer sees.
        f16 = f.to(torch.float16)
        window_moments = {"features": _moments(f16.reshape(-1, f16.shape[-1]))}
        feats[valid] = f16.cpu().numpy()
        if summ is not None and sm is not None:
            sm16 = sm.to(torch.float16)
            window_moments["summary"] = _moments(sm16)
            summ[valid] = sm16.cpu().numpy()
        return feats, summ, window_moments

    def _forward(
        self, teacher: Teacher, job: KeyJob, crops: torch.Tensor, keys: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``crops [n, s, s, 3] uint8`` → features ``[n, h, w, C]`` and summary ``[n, Cs]`` (or None)."""
        spec = teacher.spec
        x = crops.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
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
