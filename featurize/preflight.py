"""The weights preflight: before planning a store or starting Ray, can every teacher load?

Each selected teacher's ``weights`` is resolved on the driver, without building a model:

* none (random init, the tiny teachers): nothing to resolve;
* a local checkpoint file (or, for an ``hf:`` teacher, a saved model's folder): it must exist;
* a hub id ``hf-hub:org/repo``: the repo must be in the local Hugging Face cache, or (when
  ``HF_HUB_OFFLINE`` is not set) the hub must answer for it;
* an open_clip pretrained tag (``openai``): one of the hub repos open_clip maps the tag to must
  be cached, unless the hub may be reached (open_clip then downloads it itself).

Failures become one :class:`WeightsError` with one line per teacher, naming the teacher and how
to supply its weights (the config field, the cache variables), so a missing checkpoint costs
seconds instead of a Ray start and one hub traceback per tar.
"""

from __future__ import annotations

import os
from pathlib import Path

from radio.errors import RadioError

from .teachers.loading import HUB_PREFIX, is_hub_id

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class WeightsError(RadioError):
    """One or more teachers' weights cannot be found; one line per teacher."""


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(repo: str) -> bool:
    """True if the hub cache holds a snapshot of model repo ``org/name``."""
    snapshots = _hub_cache() / f"models--{repo.strip('/').replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in snapshots.iterdir())


def _reachable(repo: str) -> str | None:
    """None if the hub answers for ``repo``, else why not (one line)."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo.strip("/"), timeout=10)
    except Exception as e:  # any failure (network, auth, 404) means the same to the user
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def _cache_hint(teacher: str) -> str:
    return (
        f"download it into the hub cache {_hub_cache()} (HF_HUB_CACHE / HF_HOME select the cache), "
        f"or set teachers.{teacher}.weights in the pipelines file to a local checkpoint file"
    )


def _open_clip_repos(tag: str) -> list[str]:
    import open_clip

    repos = []
    for model, t in open_clip.list_pretrained():
        if t == tag:
            repo = open_clip.get_pretrained_cfg(model, t).get("hf_hub")
            if repo:
                repos.append(repo.strip("/"))
    return repos


def weights_problem(teacher: str, model: str, weights: str | None) -> str | None:
    """Why teacher ``teacher``'s ``weights`` cannot be loaded here, or None when they can."""
    if weights is None:
        return None
    field = f"teachers.{teacher}.weights"
    if is_hub_id(weights):
        repo = weights[len(HUB_PREFIX) :]
        if in_hub_cache(repo):
            return None
        if _offline():
            return f"{weights} is not in the hub cache and HF_HUB_OFFLINE is set; {_cache_hint(teacher)}"
        why = _reachable(repo)
        return (
            None
            if why is None
            else f"{weights} is not in the hub cache and the hub did not answer ({why}); {_cache_hint(teacher)}"
        )
    path = Path(weights)
    if path.is_file() or path.is_dir():  # a folder: an hf: teacher's saved model (hf_family)
        return None
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in weights or os.sep in weights:
        return f"weights file {weights} not found; put the checkpoint there or set {field} in the pipelines file to its path"
    repos = _open_clip_repos(weights)
    if not repos:
        return f"weights {weights!r} is neither a file, a hub id (hf-hub:org/repo) nor an open_clip pretrained tag; set {field}"
    if any(in_hub_cache(r) for r in repos) or not _offline():
        return None
    return f"open_clip tag {weights!r} is not in the hub cache and HF_HUB_OFFLINE is set; {_cache_hint(teacher)}"


def check_weights(teachers: dict[str, tuple[str, str | None]]) -> None:
    """``{teacher: (model, weights)}``: raise :class:`WeightsError` listing every teacher whose
    weights cannot be resolved, one line each."""
    problems = []
    for teacher, (model, weights) in teachers.items():
        why = weights_problem(teacher, model, weights)
        if why:
            problems.append(f"teacher {teacher} ({model}): {why}")
    if problems:
        raise WeightsError("\n".join(problems))
