"""Before training: does the store hold what the stage asks for? One clear error if not.

The trainer reads everything it needs (grids, dims, which keys are SAM mosaics, normalizers)
from the store's provenance, never from featurize's code.
"""

from __future__ import annotations

from radio.config import PATCH, PipelineConfig
from radio.config.resolutions import exact_sizes
from radio.store.layout import FeatureStore, StoreError
from radio.store.normalizers import normalizer_info, teacher_of

from .adaptors import AdaptorSpec
from .loss import KeyTarget


class StageMismatch(StoreError):
    """The store does not hold the targets (or normalizers) a stage needs."""


def describe_store(store: FeatureStore) -> str:
    """``key (grid, state, PHI-S)`` for every key, for error messages."""
    parts = []
    for key in store.target_keys:
        t = store.target(key)
        done = store.completed(key)
        state = "complete" if done.all() else f"{int(done.sum())}/{len(done)} tars"
        info = normalizer_info(store, teacher_of(store, key))
        phis = "PHI-S" if info is not None and key in info.get("keys", []) else "no PHI-S"
        parts.append(f"{key} ({t.grid[0]}x{t.grid[1]}, {state}, {phis})")
    return ", ".join(parts) or "no target keys"


def adaptor_specs(store: FeatureStore, config: PipelineConfig) -> list[AdaptorSpec]:
    """One adaptor per config teacher, with the dims its keys have in the store."""
    specs, missing = [], []
    for name, teacher in config.teachers.items():
        key = next((k for k in teacher.targets if k in store.target_keys), None)
        if key is None:
            missing.append(name)
            continue
        t = store.target(key)
        specs.append(AdaptorSpec(name, t.summary_dim, t.feature_dim))
    if missing:
        raise StageMismatch(
            f"teacher(s) {', '.join(missing)} have no target key in the store {store.path} "
            f"(the store has: {describe_store(store)}); run `radio featurize`"
        )
    return specs


def _same_tiling(stored: int | None, configured: int | None) -> bool:
    """A SAM key featurized with another mosaic k is the same target (DESIGN: a mosaic only packs
    k² images into one canvas at patch-aligned offsets; each image's grid block is its target at
    the key's resolution). Only canvas vs. plain inputs differ in kind."""
    return (stored is None) == (configured is None)


def mosaic_notes(store: FeatureStore, config: PipelineConfig, stage: int) -> list[str]:
    """One line per key of stage ``stage`` whose stored mosaic differs from the config's: distill
    trains on it as it is (e.g. featurized with ``radio featurize --teacher sam --mosaic 4``)."""
    notes = []
    keys = dict.fromkeys(k for part in config.stages[stage - 1].partitions for k in part.targets)
    for key in keys:
        if key not in store.target_keys:
            continue
        stored, configured = store.target(key).provenance.mosaic, config.target(key)[2].mosaic
        if stored != configured and _same_tiling(stored, configured):
            notes.append(
                f"{key} was featurized with mosaic {stored}, the config says {configured}; training on it "
                "as it is (a mosaic changes only how images were packed on the teacher's canvas)"
            )
    return notes


def stage_targets(store: FeatureStore, config: PipelineConfig, stage: int) -> list[tuple[int, list[KeyTarget]]]:
    """The partitions of stage ``stage`` (1-based) as ``(resolution, [KeyTarget])``; raises
    :class:`StageMismatch` listing every problem and what the store has. A partition with
    ``resolutions`` gives its largest size that every exact key fits (where evaluation reads it);
    its steps train at the drawn sizes."""
    s = config.stages[stage - 1]
    problems: list[str] = []
    partitions = []
    have = set(store.target_keys)
    for part in s.partitions:
        keys = []
        grid = part.nominal // PATCH
        for key in part.targets:
            if key not in have:
                problems.append(f"missing target key {key}")
                continue
            info = store.target(key)
            teacher_name, _, spec = config.target(key)
            prov = info.provenance
            if prov.resolution != spec.resolution or not _same_tiling(prov.mosaic, spec.mosaic):
                problems.append(
                    f"{key} was featurized at resolution {prov.resolution} mosaic {prov.mosaic}, "
                    f"the config asks for {spec.resolution} mosaic {spec.mosaic}"
                )
            done = store.completed(key)
            if not done.all():
                problems.append(f"{key} is incomplete ({int(done.sum())}/{len(done)} tars)")
            if config.normalization != "none":
                fit = normalizer_info(store, teacher_of(store, key))
                if fit is None or key not in fit.get("keys", []):
                    problems.append(f"no PHI-S of {teacher_of(store, key)} covering {key} (run `radio fit-phis`)")
            exact = prov.mosaic is not None
            core = prov.core_grid  # the stored grid less a shift margin
            # stochastic resolutions: an exact key trains at the sizes of its grid, skipped at the others
            sizes = exact_sizes(core[0], part.resolutions, PATCH) if part.resolutions and exact else None
            if sizes is not None and (not sizes or core[0] != core[1]):
                problems.append(
                    f"{key} grid {core[0]}x{core[1]} fits no student size of {list(part.resolutions or ())} "
                    "(SAM targets are never interpolated)"
                )
            if exact and sizes is None and tuple(core) != (grid, grid):
                problems.append(
                    f"{key} grid {core[0]}x{core[1]} != student grid {grid}x{grid} at "
                    f"{part.resolution} px (SAM targets are never interpolated)"
                )
            w = s.loss_weights.get(key)
            keys.append(
                KeyTarget(
                    key,
                    teacher_name,
                    tuple(core),
                    exact,
                    info.summary_dim is not None,
                    w.summary if w else 1.0,
                    w.features if w else 1.0,
                    sizes,
                    prov.margin,
                )
            )
        # a stochastic partition's one size (evaluation, messages): the largest every exact key fits
        common = [size for size in part.sizes if all(size in t.sizes for t in keys if t.sizes is not None)]
        partitions.append((max(common) if common else part.nominal, keys))
    if problems:
        raise StageMismatch(
            f"stage {stage} does not match the store {store.path}: {'; '.join(problems)}. "
            f"The store has: {describe_store(store)}"
        )
    return partitions
