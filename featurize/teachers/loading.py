"""Weights for teachers: hub ids, local checkpoint files, and reproducible random init.

A ``weights`` string is one of

* a hub id ``hf-hub:org/repo``: handed to the library's own hub loading
  (``open_clip.create_model``, ``timm.create_model(..., pretrained=True)``);
* for the open_clip families only, a pretrained tag of the architecture (``"openai"``), handed
  to ``open_clip.create_model(arch, pretrained=tag)``;
* a local checkpoint file: ``*.safetensors`` is read with safetensors, anything else with
  ``torch.load(..., weights_only=True)`` so a checkpoint can never run code (DESIGN §3.6).
  segment-anything's own ``checkpoint=`` argument is never used: it calls ``torch.load``
  without ``weights_only``.

``weights=None`` means random init on a forked CPU generator seeded with
:data:`RANDOM_INIT_SEED` (see :func:`seeded_init`): two processes build bit-identical random
teachers whatever the global seed, and the caller's random stream is left as it was; featurize
resume relies on this for tiny teachers.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from radio.featurize.teachers.base import TeacherError

HUB_PREFIX = "hf-hub:"
RANDOM_INIT_SEED = 0  # the seed of every weights=None teacher; changing it changes every tiny store
_SHOWN_KEYS = 5  # how many offending keys an error message lists


def is_hub_id(weights: str) -> bool:
    """True for ``hf-hub:org/repo`` ids, which go to the library's own hub loading."""
    return weights.startswith(HUB_PREFIX)


@contextmanager
def seeded_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Run model construction on the CPU generator seeded with ``seed``, then restore its state.

    Only the CPU generator is forked: builders construct on the CPU and move afterwards, so the
    init does not depend on the device, and the caller's own random stream is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, on the CPU.

    Accepts what training code commonly writes around a state dict: a ``{"state_dict": ...}``
    wrapper and a DDP ``module.`` prefix on every key.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError) as err:
        # weights_only refuses pickled code objects; say so instead of a pickle traceback
        raise TeacherError(f"cannot read weights file {path} as tensors (weights_only/safetensors): {err}") from err

    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise TeacherError(f"weights file {path} does not hold a state dict of named tensors")
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    return state


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the keys that start with ``prefix``, without it (e.g. SAM's ``image_encoder.``)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, teacher: str) -> None:
    """Strictly load ``state`` into ``model``; a state dict that does not fit raises TeacherError.

    Non-persistent buffers (e.g. open_clip's attention mask) are not in a state dict and are not
    asked for. The message names the teacher and the first few missing, unexpected and
    wrongly-shaped keys so a wrong checkpoint is recognisable at a glance.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", reshaped)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
                parts.append(f"{label}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
        raise TeacherError(f"{teacher}: state dict does not fit the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_file_into(model: nn.Module, path: str | Path, *, teacher: str, prefix: str | None = None) -> None:
    """Read a checkpoint file and strictly load it into ``model``.

    ``prefix``: when some keys carry it (a full-model checkpoint, e.g. SAM's ``image_encoder.``),
    only those keys are loaded, without it; otherwise the file is taken as the model's own dict.
    """
    try:
        state = read_state_dict(path)
    except TeacherError as err:
        raise TeacherError(f"{teacher}: {err}") from err
    if prefix is not None and any(k.startswith(prefix) for k in state):
        state = strip_prefix(state, prefix)
    load_into(model, state, teacher=teacher)
