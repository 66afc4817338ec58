"""`radio store info` and `radio store verify`: what a store holds, and whether it is consistent."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import compact as compact_mod
from .layout import FeatureStore


@dataclass
class KeyInfo:
    key: str
    complete_tars: int
    tars: int
    valid_rows: int
    raw_bytes_per_sample: int  # fp16 features + summary of one row
    stored_bytes_per_sample: float  # features + summary on disk (compressed, Zarr indexes) per valid row
    moments_bytes: int  # per-tar moments on disk (C² float64 per tar: fixed, not per sample)
    provenance: dict[str, Any]
    codec: str | None = None  # compact codec (`radio store compact`), None when raw only
    rank: int | None = None
    compact_tars: int = 0
    compact_bytes_per_sample: int | None = None  # stored values of one row (1 byte each)
    compact_stored_bytes_per_sample: float | None = None  # the compact arrays on disk per valid row
    variance_retained: float | None = None  # 1 − MSE/Var in PHI-S space over the compacted tars
    raw_dropped: bool = False
    normalizer: str = "raw"  # the PHI-S fingerprint the compact features are encoded in ("raw": no compact data)
    normalizer_current: bool | None = None  # whether that is the teacher's current normalizer (else re-expressed)


def store_info(path: str | Path) -> dict[str, Any]:
    store = FeatureStore(path)
    manifest = store.manifest()
    valid = np.asarray(manifest.column("valid").to_pylist(), dtype=bool) if manifest.num_rows else np.zeros(0, bool)
    tar_of_row = np.asarray(manifest.column("tar_index").to_pylist()) if manifest.num_rows else np.zeros(0, int)
    keys = []
    for key in store.target_keys:
        t = store.target(key)
        done = store.completed(key)
        valid_rows = int(valid[done[tar_of_row]].sum()) if valid.size else 0
        raw = t.grid[0] * t.grid[1] * t.feature_dim * 2 + (t.summary_dim or 0) * 2
        base = f"targets/{key}"
        disk = sum(store.location.sizes(f"{base}/{name}") for name in ("features", "summary"))
        moments = store.location.sizes(f"{base}/moments")
        info = KeyInfo(key, int(done.sum()), len(done), valid_rows, raw, disk / max(1, valid_rows), moments, t.attrs)
        ck = compact_mod.compact_key(store, key)
        if ck is not None:
            cdone = compact_mod.compact_complete(store, key)
            cvalid = int(valid[cdone[tar_of_row]].sum()) if valid.size else 0
            cbase = f"{base}/{compact_mod.GROUP}"
            cdisk = sum(store.location.sizes(f"{cbase}/{n}") for n in ("features", "summary"))
            info.codec, info.rank, info.compact_tars = ck.features.name, ck.features.rank, int(cdone.sum())
            info.compact_bytes_per_sample = (t.grid[0] * t.grid[1] * ck.features.stored_channels
                                             + (ck.summary.stored_channels if ck.summary else (t.summary_dim or 0) * 2))
            info.compact_stored_bytes_per_sample = cdisk / max(1, cvalid)
            info.variance_retained = compact_mod.variance_retained(store, key)
            info.raw_dropped = ck.raw_dropped
            info.normalizer = compact_mod.compact_fingerprint(ck) or "raw"
            info.normalizer_current = compact_mod.is_current(store, ck)
        keys.append(info)
    reasons: dict[str, int] = {}
    for r in manifest.column("reason").to_pylist() if manifest.num_rows else []:
        if r:
            reasons[r] = reasons.get(r, 0) + 1
    return {
        "path": str(store.path),
        "tars": len(store.plan.tars),
        "rows": store.plan.total_rows,
        "samples": manifest.num_rows,
        "valid": int(valid.sum()),
        "reasons": reasons,
        "shard_rows": store.plan.shard_rows,
        "settings": store.settings,
        "keys": keys,
    }


def verify_store(path: str | Path, keys: list[str] | None = None) -> list[str]:
    """Every problem found (in ``keys``, default all); empty when the store is consistent.

    Checks, per target key and complete tar: a manifest exists with the planned samples; rows lie
    in the tar's range; every valid row's features and summary are finite and not all zero;
    invalid rows are zero; the stored moments count exactly the valid rows' tokens. For compact
    keys: codec parameters finite and positive, decoded values of valid rows finite, invalid rows
    zero, and every raw-dropped tar compacted.
    """
    store = FeatureStore(path)
    problems: list[str] = []
    manifests: dict[int, Any] = {}
    found = store.location.read_many([store.manifest_name(tp.index) for tp in store.plan.tars])
    for tp in store.plan.tars:
        data = found.get(store.manifest_name(tp.index))
        if data is not None:
            manifests[tp.index] = pq.read_table(pa.BufferReader(data)).to_pydict()
    for key in keys or store.target_keys:
        problems += _verify_compact(store, key, manifests)
        info = store.target(key)
        # Tars whose raw arrays are absent on purpose (dropped, or written compact) were checked above.
        done = store.completed(key) & ~compact_mod.raw_missing(store, key)
        feats = store.array(key, "features")
        summ = store.array(key, "summary") if info.summary_dim else None
        count = store.array(key, "moments/features_count")
        for tp in store.plan.tars:
            if not done[tp.index]:
                continue
            where = f"{key} tar {tp.index} ({posixpath.basename(tp.path)})"
            m = manifests.get(tp.index)
            if m is None:
                problems.append(f"{where}: marked complete but has no manifest")
                continue
            rows = np.asarray(m["row"], dtype=np.int64)
            valid = np.asarray(m["valid"], dtype=bool)
            if len(rows) > tp.samples or (len(rows) < tp.samples and not tp.error):
                problems.append(f"{where}: manifest has {len(rows)} rows, plan has {tp.samples}")
            if len(rows) and (rows.min() < tp.row_start or rows.max() >= tp.row_start + tp.rows):
                problems.append(f"{where}: manifest rows outside the tar's range")
                continue
            if not tp.rows:
                continue
            f = feats[tp.row_start : tp.row_start + tp.rows]
            local = rows - tp.row_start
            flat = f.reshape(f.shape[0], -1)
            for name, arr in (("features", flat), ("summary", summ[tp.row_start : tp.row_start + tp.rows] if summ is not None else None)):
                if arr is None:
                    continue
                good = arr[local[valid]]
                if not np.isfinite(good).all():
                    problems.append(f"{where}: non-finite {name} in {int((~np.isfinite(good).all(axis=1)).sum())} valid rows")
                if len(good) and (np.abs(good).max(axis=1) == 0).any():
                    problems.append(f"{where}: {int((np.abs(good).max(axis=1) == 0).sum())} valid rows have all-zero {name}")
                if (arr[local[~valid]] != 0).any():
                    problems.append(f"{where}: invalid rows hold {name}")
            tokens = int(valid.sum()) * info.grid[0] * info.grid[1]
            if int(count[tp.index]) != tokens:
                problems.append(f"{where}: moments count {int(count[tp.index])} != {tokens} valid tokens")
    return problems


def _verify_compact(store: FeatureStore, key: str, manifests: dict[int, Any]) -> list[str]:
    ck = compact_mod.compact_key(store, key)
    if ck is None:
        return []
    import torch

    from .codec import decode

    problems: list[str] = []
    g = store.root["targets"][key][compact_mod.GROUP]
    for stream, codec in (("features", ck.features), ("summary", ck.summary)):
        if codec is None:
            continue
        if not (np.isfinite(codec.scale).all() and (codec.scale > 0).all()):
            problems.append(f"{key} compact: {stream} scale has non-finite or non-positive values")
        if codec.basis is not None and not np.isfinite(codec.basis).all():
            problems.append(f"{key} compact: {stream} basis has non-finite values")
        if g[stream].shape[-1] != codec.stored_channels:
            problems.append(f"{key} compact: {stream} stores {g[stream].shape[-1]} values, codec says {codec.stored_channels}")
    done = compact_mod.compact_complete(store, key)
    if ck.raw_dropped and (store.completed(key) & ~done).any():
        problems.append(f"{key} compact: raw targets dropped but {int((store.completed(key) & ~done).sum())} tars not compacted")
    for tp in store.plan.tars:
        if not done[tp.index] or not tp.rows:
            continue
        where = f"{key} compact tar {tp.index} ({posixpath.basename(tp.path)})"
        m = manifests.get(tp.index)
        if m is None:
            problems.append(f"{where}: marked complete but has no manifest")
            continue
        local = np.asarray(m["row"], dtype=np.int64) - tp.row_start
        valid = np.asarray(m["valid"], dtype=bool)
        for stream, codec in (("features", ck.features), ("summary", ck.summary)):
            if codec is None:
                continue
            q = g[stream][tp.row_start : tp.row_start + tp.rows]
            decoded = decode(codec, torch.from_numpy(q[local[valid]])).reshape(int(valid.sum()), -1)
            bad = int((~torch.isfinite(decoded).all(dim=1)).sum())
            if bad:
                problems.append(f"{where}: non-finite decoded {stream} in {bad} valid rows")
            if (q[local[~valid]] != 0).any():
                problems.append(f"{where}: invalid rows hold compact {stream}")
    return problems
