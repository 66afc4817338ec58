"""The featurize execution graph (Ray Data's batch-inference pattern), and the same graph in-process.

    tars ─▶ TarDecoder (CPU tasks: read, decode once, crop, resize to every geometry, manifest)
         ─▶ TeacherStage(teacher 1) actor pool ─▶ … ─▶ TeacherStage(teacher N) actor pool
         ─▶ Finalizer (driver: moments, completion markers, one result per (tar, teacher))

Each teacher actor declares the host and GPU memory its teacher needs, from its parameter count
and its largest forward, so Ray never packs more teachers onto a node than fit. The CPU stage
takes the CPUs the teacher actors leave free.

Every teacher stage needs at least one live actor for groups to flow, so when one actor of every
selected teacher does not fit the cluster at once (Ray would wait forever for the last one), the
teachers run in **passes**: consecutive stages whose actors fit together, one graph per pass, each
decoding the tars again (:func:`plan_passes`). A teacher that fits no node is refused up front.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Queue
from typing import Any

import numpy as np

from radio.errors import RadioError
from radio.store.layout import FeatureStore

from .decode import TarDecoder
from .finalize import Finalizer
from .records import FeaturizeSettings, KeyJob, TarResult, WorkItem, by_tar, pixel_column
from .teachers import create_teacher, get_spec
from .worker import TeacherStage

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
        later = {(k.resolution, k.pad) for n in names[i + 1 :] for k in teachers[n][2].values()}
        mine = {(k.resolution, k.pad) for k in keys.values()}
        drop = tuple(pixel_column(s, p) for s, p in sorted(mine - later))
        out.append(StageSpec(name, model, weights, tuple(keys.values()), drop))
    return out


# ---- resources ----------------------------------------------------------------------------------


@functools.cache
def teacher_size(model: str) -> tuple[int, int]:
    """(parameters, widest layer input) of a registered teacher, from its meta-device build."""
    import torch

    t = create_teacher(model, device="meta")
    width = max((m.in_features for m in t.modules() if isinstance(m, torch.nn.Linear)), default=1)
    return sum(p.numel() for p in t.parameters()), width


def teacher_memory(
    model: str, keys: tuple[KeyJob, ...], batch_size: int, on_gpu: bool = True, loads_weights: bool = True
) -> tuple[int, int]:
    """(host bytes, accelerator bytes) one actor of this teacher needs.

    Activations of the largest forward: ~16 live ``[tokens, width]`` tensors per image (attention
    and MLP buffers; ``width`` is the widest layer's input, the MLP's), in bf16 on a GPU; on the
    CPU three times that (fp32 and a transient copy) plus one layer's attention scores
    ``[heads, tokens, tokens]`` fp32, heads taken as the feature dim / 64.

    Accelerator: fp32 weights (bf16 autocast casts per op) + activations + 0.5 GiB of CUDA
    context. Host: the weights (twice when a checkpoint is loaded: the built model and the file's
    tensors) + the group's pixels in flight + 0.75 GiB of interpreter, torch and Ray (0.55-0.7
    GiB measured for a tiny teacher) + the activations when the teacher runs on the CPU
    (``on_gpu`` False), all with the 25 % margin Ray Data's memory detector asks for above the
    peak it sees. Measured for random-init SAM-H on a 1024 canvas on the CPU: 6.0-6.1 GiB used;
    requests of 5.5 GiB (no activations) and 6.3 GiB (no margin) were flagged, 7.8 GiB is not.
    """
    params, width = teacher_size(model)
    spec = get_spec(model)
    act = scores = 0
    for k in keys:
        if k.mosaic:
            images, side = max(1, batch_size // (k.mosaic * k.mosaic)), k.canvas
        else:
            images, side = batch_size, k.resolution
        tokens = (side // spec.patch) ** 2
        act = max(act, images * tokens * width * 2 * 16)
        scores = max(scores, images * max(1, spec.feature_dim // 64) * tokens * tokens * 4)
    gpu = params * 4 + act + GiB // 2
    pixels = 3 * batch_size * sum(k.resolution**2 * 3 for k in keys)
    host = (2 if loads_weights else 1) * params * 4 + pixels + 3 * GiB // 4 + (0 if on_gpu else 3 * act + scores)
    host = host * 5 // 4  # Ray Data's memory detector asks for 25 % above the peak it sees
    return host, gpu


def accelerator_bytes() -> int:
    """Memory of one GPU: the driver's own when it has one, else RADIO_GPU_MEMORY_GB, else 80 GiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return int(float(os.environ.get("RADIO_GPU_MEMORY_GB", "80")) * GiB)


class ClusterTooSmall(RadioError):
    """A teacher's actor needs more memory than any node (or GPU) of the cluster has."""


@dataclass(frozen=True)
class ClusterMemory:
    """What the teacher actors may reserve: Ray's ``memory`` resource (bytes) summed over alive
    nodes and on the largest node, and the GPUs."""

    total: float
    largest: float
    gpus: float

    @classmethod
    def of_ray(cls) -> ClusterMemory:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        mem = [float(r.get("memory", 0.0)) for r in nodes]
        return cls(sum(mem), max(mem, default=0.0), sum(float(r.get("GPU", 0.0)) for r in nodes))


def plan_passes(
    specs: list[StageSpec], needs: list[tuple[int, float]], cluster: ClusterMemory
) -> list[list[StageSpec]]:
    """Split the stages, in graph order, into passes whose actors (one per teacher) fit together.

    ``needs[i]``: (host bytes, GPUs) one actor of ``specs[i]`` reserves. A pass is closed when the
    next stage's host memory would exceed the cluster's total or its GPU share the cluster's GPUs.
    Raises :class:`ClusterTooSmall` for a teacher that fits no node at all."""
    for s, (host, gpu) in zip(specs, needs):
        if host > cluster.largest:
            raise ClusterTooSmall(
                f"teacher {s.teacher} ({s.model}) needs {host / GiB:.1f} GiB of host memory per actor; the largest "
                f"Ray node offers {cluster.largest / GiB:.1f} GiB: add a node with more memory"
            )
        if gpu > cluster.gpus:
            raise ClusterTooSmall(
                f"teacher {s.teacher} ({s.model}) needs {gpu:g} GPUs per actor; the cluster has {cluster.gpus:g}"
            )
    passes: list[list[StageSpec]] = []
    host_sum, gpu_sum = 0.0, 0.0
    for s, (host, gpu) in zip(specs, needs):
        if passes and host_sum + host <= cluster.total and gpu_sum + gpu <= cluster.gpus + 1e-9:
            passes[-1].append(s)
            host_sum, gpu_sum = host_sum + host, gpu_sum + gpu
        else:
            passes.append([s])
            host_sum, gpu_sum = host, gpu
    return passes


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


def build_stages(
    store: FeatureStore,
    items: list[WorkItem],
    settings: FeaturizeSettings,
    batch_size: int,
    threads: int | None = None,
    device: str | None = None,
) -> list[TeacherStage]:
    """The teacher stages of ``items``, in graph order (each loads its teacher)."""
    return [
        TeacherStage(
            str(store.path),
            settings,
            s.teacher,
            s.model,
            s.weights,
            s.keys,
            batch_size,
            device=device,
            threads=threads,
            drop=s.drop,
        )
        for s in stage_specs(items)
    ]


def run_local(
    store: FeatureStore,
    items: list[WorkItem],
    settings: FeaturizeSettings,
    batch_size: int,
    threads: int | None = None,
    device: str | None = None,
    stages: list[TeacherStage] | None = None,
) -> Iterator[TarResult]:
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


def _decode(
    batch: dict[str, np.ndarray], store_path: str, settings: FeaturizeSettings, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    yield from TarDecoder(store_path, settings, batch_size)(batch)


def run_on_ray(
    store: FeatureStore,
    items: list[WorkItem],
    settings: FeaturizeSettings,
    batch_size: int,
    workers: int | None,
    gpus: int,
    cluster: ClusterMemory | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[TarResult]:
    """Build and run the Ray Data graph (one per pass, see :func:`plan_passes`); yields results as
    tars finish. ``cluster``: what actors may reserve (default: the attached cluster's)."""
    cluster = cluster or ClusterMemory.of_ray()
    gpu_total = accelerator_bytes() if gpus else 0
    specs = stage_specs(items)
    needs: dict[str, tuple[int, float]] = {}  # teacher → (host bytes, GPUs) of one actor
    for s in specs:
        host, gpu = teacher_memory(s.model, s.keys, batch_size, on_gpu=bool(gpus), loads_weights=bool(s.weights))
        needs[s.teacher] = (host, _gpu_share(gpu, gpu_total) if gpus else 0.0)
    passes = plan_passes(specs, [needs[s.teacher] for s in specs], cluster)
    if len(passes) > 1 and on_note:
        need = sum(h for h, _ in needs.values()) / GiB
        on_note(
            f"one actor of each teacher needs {need:.1f} GiB of host memory and the cluster offers "
            f"{cluster.total / GiB:.1f} GiB: the teachers run in {len(passes)} passes ("
            + "; ".join(", ".join(s.teacher for s in p) for p in passes)
            + "), each decoding the tars again"
        )
    for p in passes:
        names = {s.teacher for s in p}
        yield from _run_pass(
            store, [it for it in items if it.teacher in names], settings, batch_size, workers, gpus, needs
        )


def _gpu_share(gpu_bytes: int, gpu_total: int) -> float:
    """A GPU share proportional to the memory the teacher needs (at most one whole GPU)."""
    return min(1.0, max(0.05, round(gpu_bytes / gpu_total + 0.005, 2)))


def _run_pass(
    store: FeatureStore,
    items: list[WorkItem],
    settings: FeaturizeSettings,
    batch_size: int,
    workers: int | None,
    gpus: int,
    needs: dict[str, tuple[int, float]],
) -> Iterator[TarResult]:
    """One Ray Data graph over ``items``; ``needs``: teacher → (host bytes, GPUs) of one actor."""
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

    ds: ray.data.Dataset = ray.data.from_items([{"item": t.encode()} for t in tars], override_num_blocks=len(tars))
    # ray's stubs type map_batches' fn as taking the batch alone; fn_kwargs supplies the rest
    ds = ds.map_batches(
        _decode,  # type: ignore[arg-type]
        batch_size=1,
        num_cpus=decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=decoders),
        fn_kwargs=dict(store_path=str(store.path), settings=settings, batch_size=batch_size),
    )
    for s in specs:
        host, gpu_share = needs[s.teacher]
        gpu_kwargs: dict[str, Any] = {"num_gpus": gpu_share} if gpus else {}
        ds = ds.map_batches(
            TeacherStage,
            batch_size=1,  # one group = about one teacher batch
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n),  # grows as memory allows
            num_cpus=teacher_cpus,
            memory=host,
            fn_constructor_kwargs=dict(
                store_path=str(store.path),
                settings=settings,
                teacher=s.teacher,
                model=s.model,
                weights=s.weights,
                keys=s.keys,
                batch_size=batch_size,
                threads=threads,
                drop=s.drop,
            ),
            **gpu_kwargs,
        )
    fin = Finalizer(store)
    for row in ds.iter_rows():
        yield from fin.add(row)


__all__ = [
    "ClusterMemory",
    "ClusterTooSmall",
    "StageSpec",
    "build_stages",
    "plan_passes",
    "prefetch",
    "run_local",
    "run_on_ray",
    "stage_specs",
    "teacher_memory",
    "teacher_size",
]
