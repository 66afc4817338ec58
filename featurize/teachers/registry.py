"""The teacher registry (timm-style): a frozen spec and a builder per name.

Family modules register their sizes at import (``radio.featurize.teachers`` imports them all)::

    @register_teacher(TeacherSpec(name="dinov2_tiny", ...))
    def _build(spec, weights): ...

and everything else goes through :func:`create_teacher`, which owns what every teacher has in
common: the random-init seed, the meta device, the target device/dtype, eval mode and frozen
parameters.

A name that is not registered is resolved, once per process, in this order:

1. the ``radio.teachers`` entry-point group: every installed plugin is loaded (its module's
   ``register_teacher`` calls run; an entry point naming a function is called with no
   arguments), as pytest loads its plugins;
2. ``LIBRARY:MODEL`` (``timm:``, ``open_clip:``, ``hf:``): the library's resolver (registered by
   :func:`register_resolver`) builds the model on the meta device and reads the spec off it;
3. ``package.module:function``: ``function(weights) -> Teacher`` is the builder; the spec is the
   one its teacher carries, built on the meta device, renamed to the config's string.

Resolved names are cached but not listed: :func:`list_teachers` lists what is registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import entry_points

import torch

from radio.featurize.teachers.base import Teacher, TeacherError, TeacherSpec
from radio.featurize.teachers.loading import seeded_init

TeacherBuilder = Callable[[TeacherSpec, str | None], Teacher]
"""``builder(spec, weights) -> Teacher``: builds on the ambient default device (CPU, or meta
under ``torch.device("meta")``) in float32; ``weights=None`` means random init (the registry
seeds it)."""


@dataclass(frozen=True)
class _Entry:
    spec: TeacherSpec
    builder: TeacherBuilder


_REGISTRY: dict[str, _Entry] = {}
_RESOLVED: dict[str, _Entry] = {}  # generic and module:builder names, resolved on first use

Resolver = Callable[[str, str], tuple[TeacherSpec, TeacherBuilder]]
"""``resolver(name, model) -> (spec, builder)`` for ``name = "LIBRARY:model"``; raises
:class:`TeacherError` (one line) for a model the library does not know or cannot be mapped."""

_RESOLVERS: dict[str, Resolver] = {}
ENTRY_POINT_GROUP = "radio.teachers"
_plugins_loaded = False


def register_teacher(
    spec: TeacherSpec, builder: TeacherBuilder | None = None
) -> TeacherBuilder | Callable[[TeacherBuilder], TeacherBuilder]:
    """Register ``builder`` under ``spec.name``; without ``builder``, return a decorator.

    A name can be registered once: silently replacing a teacher would change what a store's
    target key means.
    """

    def register(fn: TeacherBuilder) -> TeacherBuilder:
        if spec.name in _REGISTRY:
            raise TeacherError(f"teacher {spec.name!r} is already registered")
        _REGISTRY[spec.name] = _Entry(spec, fn)
        return fn

    return register if builder is None else register(builder)


def register_resolver(library: str, resolver: Resolver) -> None:
    """Resolve names ``library:MODEL`` with ``resolver`` (one per library prefix)."""
    if library in _RESOLVERS:
        raise TeacherError(f"a resolver for {library!r}: is already registered")
    _RESOLVERS[library] = resolver


def load_plugins() -> None:
    """Load every ``radio.teachers`` entry point once (a module, or a function called with no args)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except TeacherError:
            raise
        except Exception as err:  # a broken plugin is the user's install, not our traceback
            raise TeacherError(f"teacher plugin {ep.name!r} ({ep.value}) failed to load: {err}") from err


def list_teachers() -> list[str]:
    """Registered teacher names (installed plugins' included), sorted."""
    load_plugins()
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _RESOLVED:
        return _RESOLVED[name]
    load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if not sep:
        raise TeacherError(
            f"unknown teacher {name!r} (known: {', '.join(list_teachers())}; "
            f"or {', '.join(f'{p}:MODEL' for p in sorted(_RESOLVERS))}, or package.module:builder)"
        )
    if prefix in _RESOLVERS:
        spec, builder = _RESOLVERS[prefix](name, rest)
    else:
        spec, builder = _resolve_builder(name, prefix, rest)
    _RESOLVED[name] = _Entry(spec, builder)
    return _RESOLVED[name]


def _resolve_builder(name: str, module_name: str, attr: str) -> tuple[TeacherSpec, TeacherBuilder]:
    """``package.module:function`` → the spec of the teacher ``function(None)`` builds on meta."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        libraries = ", ".join(f"{p}:" for p in sorted(_RESOLVERS))
        raise TeacherError(
            f"unknown teacher {name!r}: no library prefix {libraries} and no importable module {module_name!r} ({err})"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TeacherError(f"teacher {name!r}: module {module_name!r} has no function {attr!r}")

    def builder(spec: TeacherSpec, weights: str | None) -> Teacher:
        teacher = fn(weights)
        if not isinstance(teacher, Teacher):
            raise TeacherError(f"teacher {name!r}: {attr}() returned {type(teacher).__name__}, not a Teacher")
        teacher.spec = spec  # the config's name is the registry name
        return teacher

    with torch.device("meta"):
        probe = fn(None)
    if not isinstance(probe, Teacher):
        raise TeacherError(f"teacher {name!r}: {attr}() returned {type(probe).__name__}, not a Teacher")
    return replace(probe.spec, name=name), builder


def get_spec(name: str) -> TeacherSpec:
    """The frozen spec of a registered teacher; unknown name → :class:`TeacherError`."""
    return _entry(name).spec


def create_teacher(
    name: str,
    weights: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Teacher:
    """Build a registered teacher, in eval mode with ``requires_grad=False`` everywhere.

    ``weights``: a hub id (``hf-hub:...``), a local checkpoint file, or None for random init with
    the fixed seed of :mod:`radio.featurize.teachers.loading` (the spec's released weights are
    ``get_spec(name).weights``; pass them explicitly). ``device="meta"`` builds the architecture
    without allocating anything (weights must then be None): enough to check dims and grids
    of the real sizes on any machine.
    """
    entry = _entry(name)
    device = torch.device(device)
    if device.type == "meta":
        if weights is not None:
            raise TeacherError(f"{name}: weights cannot be loaded onto the meta device")
        with torch.device("meta"):
            teacher = entry.builder(entry.spec, None)
    elif weights is None:
        with seeded_init():
            teacher = entry.builder(entry.spec, None)
    else:
        teacher = entry.builder(entry.spec, weights)
    teacher = teacher.to(device=device, dtype=dtype)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
