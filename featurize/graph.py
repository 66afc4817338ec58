"""The featurize execution graph (Ray Data's batch-inference pattern), and the same graph in-process.

    tars ─▶ TarDecoder (CPU tasks: read, decode once, crop, resize to every geometry, manifest)
         ─▶ TeacherStage(teacher 1) actor pool ─▶ … ─▶ TeacherStage(teacher N) actor pool
         ─▶ Finalizer (driver: moments, completion markers, one result per (tar, teacher))

Each teacher actor declares the host and GPU memory its teacher needs, from its parameter count
and its largest forward, so Ray never packs more teachers onto a node than fit. The CPU stage
takes the CPUs the teacher actors leave free.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from queue import Queue
from typing import Any

import numpy as np

from radio.store.layout import FeatureStore

from .decode import TarDecoder, by_tar, pixel_column
from .finalize import Finalizer
from .teachers import create_teacher, get_spec
from .worker import FeaturizeSettings, KeyJob, TarResult, TeacherStage, WorkItem

GiB = 1 << 30


@dataclass(frozen=True)
class StageSpec:
    """One teacher stage: its keys (every selected incomplete key) and the pixel columns it can
    drop because no later stage needs them."""

    teacher: str
    model: str
    weights: str | None
    keys: tuple[KeyJob, ...]
    drop: tuple[str, ...]


def stage_specs(items: list[WorkItem]) -> list[StageSpec]:
    teachers: dict[str, tuple[str, str | None, dict[str, KeyJob]]] = {}
    for it in items:
        keys = teachers.setdefault(it.teacher, (it.model, it.weights, {}))[2]
        keys.update({k.key: k for k in it.keys})
    names = list(teachers)
    out = []
    for i, name in enumerate(names):
        model, weights, keys = teachers[name]
        later = {k.resolution for n in names[i + 1 :] for k in teachers[n][2].values()}
        mine = {k.resolution for k in keys.values()}
        out.append(StageSpec(name, model, weights, tuple(keys.values()),
                             tuple(pixel_column(s) for s in sorted(mine - later))))  # fmt: skip
    return out


# ---- resources ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def teacher_size(model: str) -> tuple[int, int]:
    """(parameters, widest layer input) of a registered teacher, from its meta-device build."""
    import torch

    t = create_teacher(model, device="meta")
    width = max((m.in_features for m in t.modules() if isinstance(m, torch.nn.Linear)), default=1)
    return sum(p.numel() for p in t.parameters()), width


def teacher_memory(model: str, keys: tuple[KeyJob, ...], batch_size: int) -> tuple[int, int]:
    """(host bytes, accelerator bytes) one actor of this teacher needs.

    Accelerator: fp32 weights (bf16 autocast casts per op) + the largest forward's activations,
    taken as ~16 live ``[tokens, width]`` bf16 tensors per image (attention and MLP buffers)
    + 0.5 GiB of CUDA context. Host: weights twice (build, then checkpoint load) + the group's
    pixels in flight + 0.75 GiB of interpreter, torch and Ray (measured: 0.55-0.7 GiB for
    a tiny teacher).
    """
    params, width = teacher_size(model)
    spec = get_spec(model)
    act = 0
    for k in keys:
        if k.mosaic:
            images, side = max(1, batch_size // (k.mosaic * k.mosaic)), k.canvas
        else:
            images, side = batch_size, k.resolution
        act = max(act, images * (side // spec.patch) ** 2 * width * 2 * 16)
    gpu = params * 4 + act + GiB // 2
    pixels = 3 * batch_size * sum(k.resolution**2 * 3 for k in keys)
    host = 2 * params * 4 + pixels + 3 * GiB // 4
    return host, gpu


def accelerator_bytes() -> int:
    """Memory of one GPU: the driver's own when it has one, else RADIO_GPU_MEMORY_GB, else 80 GiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return int(float(os.environ.get("RADIO_GPU_MEMORY_GB", "80")) * GiB)


# ---- in-process ---------------------------------------------------------------------------------


def prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
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


def build_stages(store: FeatureStore, items: list[WorkItem], settings: FeaturizeSettings, batch_size: int,
                 threads: int | None = None, device: str | None = None) -> list[TeacherStage]:  # fmt: skip
    """The teacher stages of ``items``, in graph order (each loads its teacher)."""
    return [TeacherStage(str(store.path), settings, s.teacher, s.model, s.weights, s.keys, batch_size,
                         device=device, threads=threads, drop=s.drop) for s in stage_specs(items)]  # fmt: skip


def run_local(store: FeatureStore, items: list[WorkItem], settings: FeaturizeSettings, batch_size: int,
              threads: int | None = None, device: str | None = None,
              stages: list[TeacherStage] | None = None) -> Iterator[TarResult]:  # fmt: skip
    """The same graph in this process: decoding runs ahead in a thread, teachers in turn.
    ``stages``: prebuilt by :func:`build_stages` (a benchmark keeps loading out of its clock)."""
    decoder = TarDecoder(str(store.path), settings, batch_size)
    stages = stages if stages is not None else build_stages(store, items, settings, batch_size, threads, device)
    fin = Finalizer(store)

    def groups() -> Iterator[dict[str, np.ndarray]]:
        for tar in by_tar(items):
            yield from decoder.groups(tar)

    for group in prefetch(groups()):
        for stage in stages:
            group = stage(group)
        yield from fin.add({k: v[0] for k, v in group.items()})


# ---- on Ray -------------------------------------------------------------------------------------


def _decode(batch: dict[str, np.ndarray], store_path: str, settings: FeaturizeSettings,
            batch_size: int) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    yield from TarDecoder(store_path, settings, batch_size)(batch)


def run_on_ray(store: FeatureStore, items: list[WorkItem], settings: FeaturizeSettings, batch_size: int,
               workers: int | None, gpus: int) -> Iterator[TarResult]:  # fmt: skip
    """Build and run the Ray Data graph; yields results as tars finish."""
    import ray

    specs = stage_specs(items)
    tars = by_tar(items)
    cpus = ray.cluster_resources().get("CPU", 1)
    n = max(1, workers or max(1, gpus))  # actors per teacher
    decode_cpus = 1.0 if gpus else 0.5
    # Fractional CPUs on a CPU-only node: actors that reserve every CPU starve the CPU stage.
    teacher_cpus = 1.0 if gpus else max(0.25, min(1.0, (cpus - decode_cpus) / (n * len(specs))))
    free = cpus - teacher_cpus * n * len(specs)
    decoders = max(1, min(len(tars), int(free // decode_cpus)))
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    gpu_total = accelerator_bytes() if gpus else 0

    ds: ray.data.Dataset = ray.data.from_items([{"item": t.to_json()} for t in tars], override_num_blocks=len(tars))
    # ray's stubs type map_batches' fn as taking the batch alone; fn_kwargs supplies the rest
    ds = ds.map_batches(_decode, batch_size=1, num_cpus=decode_cpus, concurrency=decoders,  # type: ignore[arg-type]
                        fn_kwargs=dict(store_path=str(store.path), settings=settings, batch_size=batch_size))  # fmt: skip
    for s in specs:
        host, gpu = teacher_memory(s.model, s.keys, batch_size)
        gpu_kwargs: dict[str, Any] = {}
        if gpus:  # a GPU share proportional to the memory the teacher needs
            gpu_kwargs["num_gpus"] = min(1.0, max(0.05, round(gpu / gpu_total + 0.005, 2)))
        ds = ds.map_batches(
            TeacherStage,
            batch_size=1,  # one group = about one teacher batch
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n),  # grows as memory allows
            num_cpus=teacher_cpus,
            memory=host,
            fn_constructor_kwargs=dict(store_path=str(store.path), settings=settings, teacher=s.teacher,
                                       model=s.model, weights=s.weights, keys=s.keys, batch_size=batch_size,
                                       threads=threads, drop=s.drop),
            **gpu_kwargs,
        )  # fmt: skip
    fin = Finalizer(store)
    for row in ds.iter_rows():
        yield from fin.add(row)


__all__ = ["StageSpec", "build_stages", "prefetch", "run_local", "run_on_ray", "stage_specs", "teacher_memory", "teacher_size"]
