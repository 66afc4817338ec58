"""`radio store info` and `radio store verify`: what a store holds, and whether it is consistent."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checksums
from . import compact as compact_mod
from . import pixels as pixels_mod
from .layout import FeatureStore
from .provenance import TargetProvenance


@dataclass
class KeyInfo:
    key: str
    complete_tars: int
    tars: int
    valid_rows: int
    raw_bytes_per_sample: int  # fp16 features + summary of one row
    stored_bytes_per_sample: float  # features + summary on disk (compressed, Zarr indexes) per valid row
    moments_bytes: int  # per-tar moments on disk (C² float64 per tar: fixed, not per sample)
    provenance: TargetProvenance
    codec: str | None = None  # compact codec (`radio store compact`), None when raw only
    rank: int | None = None
    compact_tars: int = 0
    compact_bytes_per_sample: int | None = None  # stored values of one row (1 byte each)
    compact_stored_bytes_per_sample: float | None = None  # the compact arrays on disk per valid row
    variance_retained: float | None = None  # 1 − MSE/Var in PHI-S space over the compacted tars
    raw_dropped: bool = False
    normalizer: str = "raw"  # the PHI-S fingerprint the compact features are encoded in ("raw": no compact data)
    normalizer_current: bool | None = None  # whether that is the teacher's current normalizer (else re-expressed)


@dataclass
class PixelInfo:
    """Student pixels at one partition resolution (``featurize.student_pixels``)."""

    resolution: int
    mode: str
    quality: int | None
    complete_tars: int
    tars: int
    raw_bytes_per_sample: int  # one uint8 [r, r, 3] view
    stored_bytes_per_sample: float  # the view array on disk (zstd, Zarr indexes) per valid row of complete tars


def pixel_info(store: FeatureStore, valid: np.ndarray, tar_of_row: np.ndarray) -> list[PixelInfo]:
    """Per resolution: mode, complete tars, and bytes per valid row (``valid``, ``tar_of_row``: the
    manifest's columns; invalid rows store nothing)."""
    out = []
    for r in pixels_mod.pixel_resolutions(store):
        spec = pixels_mod.pixel_spec(store, r)
        done = pixels_mod.pixels_completed(store, r)
        rows = int(valid[done[tar_of_row]].sum()) if valid.size else 0
        disk = store.location.sizes(f"{pixels_mod.GROUP}/{r}/view")
        out.append(PixelInfo(r, spec.mode, spec.quality, int(done.sum()), len(done), 3 * r * r, disk / max(1, rows)))
    return out


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
        per_row = disk / max(1, valid_rows)
        info = KeyInfo(key, int(done.sum()), len(done), valid_rows, raw, per_row, moments, t.provenance)
        ck = compact_mod.compact_key(store, key)
        if ck is not None:
            cdone = compact_mod.compact_complete(store, key)
            cvalid = int(valid[cdone[tar_of_row]].sum()) if valid.size else 0
            cbase = f"{base}/{compact_mod.GROUP}"
            cdisk = sum(store.location.sizes(f"{cbase}/{n}") for n in ("features", "summary"))
            info.codec, info.rank, info.compact_tars = ck.features.name, ck.features.rank, int(cdone.sum())
            info.compact_bytes_per_sample = t.grid[0] * t.grid[1] * ck.features.stored_channels + (
                ck.summary.stored_channels if ck.summary else (t.summary_dim or 0) * 2
            )
            info.compact_stored_bytes_per_sample = cdisk / max(1, cvalid)
            info.variance_retained = compact_mod.variance_retained(store, key)
            info.raw_dropped = ck.raw_dropped
            info.normalizer = compact_mod.compact_fingerprint(ck) or "raw"
            info.normalizer_current = compact_mod.is_current(store, ck)
        keys.append(info)
    reasons: dict[str, int] = {}
    k = store.plan.crops_per_image  # an image's K rows share its validity and reason
    for r in manifest.column("reason").to_pylist()[::k] if manifest.num_rows else []:
        if r:
            reasons[r] = reasons.get(r, 0) + 1
    return {
        "path": str(store.path),
        "tars": len(store.plan.tars),
        "rows": store.plan.total_rows,
        "crops_per_image": k,
        "samples": manifest.num_rows // k,  # images
        "valid": int(valid.sum()) // k,  # valid images
        "reasons": reasons,
        "shard_rows": store.plan.shard_rows,
        "settings": store.settings,
        "keys": keys,
        "pixels": pixel_info(store, valid, tar_of_row),
    }


@dataclass
class VerifyReport:
    """What `radio store verify` found: ``problems`` (one line each), the (tar, key) pairs to redo
    (``damaged``: key → tar indices; :func:`repair_commands` says how), and ``notes`` (not errors:
    e.g. a key written before data checksums)."""

    problems: list[str] = field(default_factory=list)
    damaged: dict[str, set[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def tar(self, key: str, tar_index: int, problem: str) -> None:
        """A problem of one (tar, key): refeaturizing that tar mends it."""
        self.problems.append(problem)
        self.damaged.setdefault(key, set()).add(tar_index)


def verify_store(path: str | Path, keys: list[str] | None = None) -> list[str]:
    """Every problem :func:`verify_report` finds (in ``keys``, default all); empty when the store is consistent."""
    return verify_report(path, keys).problems


def repair_commands(path: str | Path, report: VerifyReport) -> list[str]:
    """The commands that redo exactly the damaged (tar, key) pairs: mark them incomplete, then featurize."""
    lines = [
        f"radio store invalidate {path} --key {key} --tars {','.join(map(str, sorted(tars)))}"
        for key, tars in sorted(report.damaged.items())
    ]
    return lines + ["radio featurize (the same config and --store) to redo them"] if lines else []


def verify_report(path: str | Path, keys: list[str] | None = None) -> VerifyReport:
    """Check the store; see :class:`VerifyReport`.

    Every checksum is re-checked: each chunk of every complete (tar, key)'s features, summary,
    moments and marker, the compact arrays and codec parameters, the normalizers, and the page
    checksums of every manifest. Checks, per target key and complete tar: a manifest exists with
    the planned samples; rows lie in the tar's range; every valid row's features and summary are
    finite and not all zero (an absent chunk reads as zeros); invalid rows are zero; the stored
    moments count exactly the valid rows' tokens. For compact keys: codec parameters finite and
    positive, decoded values of valid rows finite and not all zero, ``sse`` and ``ssy`` not both
    zero for a tar with valid rows, invalid rows zero, and every raw-dropped tar compacted.
    """
    store = FeatureStore(path)
    report = VerifyReport()
    manifests: dict[int, Any] = {}
    bad_manifests: dict[int, str] = {}
    found = store.location.read_many([store.manifest_name(tp.index) for tp in store.plan.tars])
    for tp in store.plan.tars:
        name = store.manifest_name(tp.index)
        if name in found:
            try:
                manifests[tp.index] = checksums.read_parquet(found[name], name).to_pydict()
            except checksums.CorruptError as e:
                bad_manifests[tp.index] = str(e)
    for key in keys or store.target_keys:
        if not checksums.has_checksums(store.array(key, "features")):
            report.notes.append(
                f"{key}: written before data checksums (no crc32c on its chunks); only consistency was checked"
            )
        done_all = _markers(store, key, report)
        for t in np.flatnonzero(done_all):
            if int(t) in bad_manifests:
                report.tar(key, int(t), f"{key} tar {t} ({_tar_name(store, int(t))}): {bad_manifests[int(t)]}")
        _verify_compact(store, key, manifests, report, done_all)
        info = store.target(key)
        # Tars whose raw arrays are absent on purpose (dropped, or written compact) were checked above.
        try:
            done = done_all & ~compact_mod.raw_missing(store, key)
        except checksums.CorruptError:
            done = np.zeros_like(done_all)  # damaged compact markers (reported above): no raw check to trust
        feats = store.array(key, "features")
        summ = store.array(key, "summary") if info.summary_dim else None
        streams = ("features", "summary") if info.summary_dim else ("features",)
        moments = {
            f"moments/{s}_{n}": store.array(key, f"moments/{s}_{n}") for s in streams for n in ("count", "mean", "m2")
        }
        for tp in store.plan.tars:
            if not done_all[tp.index] or tp.index in bad_manifests:
                continue
            where = f"{key} tar {tp.index} ({posixpath.basename(tp.path)})"
            try:
                for name, array in moments.items():
                    checksums.read(array, tp.index, name)
            except checksums.CorruptError as e:
                report.tar(key, tp.index, f"{where}: {e}")
            if not done[tp.index]:
                continue
            m = manifests.get(tp.index)
            if m is None:
                report.tar(key, tp.index, f"{where}: marked complete but has no manifest")
                continue
            rows = np.asarray(m["row"], dtype=np.int64)
            valid = np.asarray(m["valid"], dtype=bool)
            planned = store.plan.planned_rows(tp)  # samples × crops_per_image
            if len(rows) > planned or (len(rows) < planned and not tp.error):
                report.tar(key, tp.index, f"{where}: manifest has {len(rows)} rows, plan has {planned}")
            if len(rows) and (rows.min() < tp.row_start or rows.max() >= tp.row_start + tp.rows):
                report.tar(key, tp.index, f"{where}: manifest rows outside the tar's range")
                continue
            if not tp.rows:
                continue
            local = rows - tp.row_start
            span = slice(tp.row_start, tp.row_start + tp.rows)
            for name, array in (("features", feats), ("summary", summ)):
                if array is None:
                    continue
                try:
                    arr = checksums.read(array, span, name)
                except checksums.CorruptError as e:
                    report.tar(key, tp.index, f"{where}: {e}")
                    continue
                arr = arr.reshape(arr.shape[0], -1)
                good = arr[local[valid]]
                if not np.isfinite(good).all():
                    report.tar(
                        key,
                        tp.index,
                        f"{where}: non-finite {name} in {int((~np.isfinite(good).all(axis=1)).sum())} valid rows",
                    )
                if len(good) and (np.abs(good).max(axis=1) == 0).any():
                    report.tar(
                        key,
                        tp.index,
                        f"{where}: {int((np.abs(good).max(axis=1) == 0).sum())} valid rows have all-zero {name}",
                    )
                if (arr[local[~valid]] != 0).any():
                    report.tar(key, tp.index, f"{where}: invalid rows hold {name}")
            tokens = int(valid.sum()) * info.grid[0] * info.grid[1]
            try:
                count = int(checksums.read(moments["moments/features_count"], tp.index))
            except checksums.CorruptError:
                continue  # reported above
            if count != tokens:
                report.tar(key, tp.index, f"{where}: moments count {count} != {tokens} valid tokens")
    _verify_pixels(store, manifests, bad_manifests, report)
    _verify_normalizers(store, report)
    return report


def _verify_pixels(
    store: FeatureStore, manifests: dict[int, Any], bad_manifests: dict[int, str], report: VerifyReport
) -> None:
    """Per resolution and complete tar: every chunk's crc32c, a manifest, valid rows hold a view
    (raw: not all zero; jpeg: a length within the row and a JPEG start marker), invalid rows none.
    A damaged tar is rewritten by `radio store add-pixels PATH --resolution R --tars T`."""
    for r in pixels_mod.pixel_resolutions(store):
        g = store.root[pixels_mod.GROUP][str(r)]
        spec = pixels_mod.pixel_spec(store, r)
        try:
            done = pixels_mod.pixels_completed(store, r)
        except checksums.CorruptError as e:
            report.problems.append(f"{e}; run `radio store add-pixels {store.path} --resolution {r} --tars all`")
            continue
        bad: list[int] = []
        for tp in store.plan.tars:
            if not done[tp.index] or not tp.rows:
                continue
            where = f"pixels {r} tar {tp.index} ({posixpath.basename(tp.path)})"
            m = manifests.get(tp.index)
            if m is None:
                why = bad_manifests.get(tp.index, "marked complete but has no manifest")
                report.problems.append(f"{where}: {why}")
                bad.append(tp.index)
                continue
            try:
                arr = checksums.read(g["view"], slice(tp.row_start, tp.row_start + tp.rows), f"pixels/{r}/view")
            except checksums.CorruptError as e:
                report.problems.append(f"{where}: {e}")
                bad.append(tp.index)
                continue
            local = np.asarray(m["row"], dtype=np.int64) - tp.row_start
            valid = np.asarray(m["valid"], dtype=bool)
            flat = arr.reshape(len(arr), -1)
            if spec.mode == "raw":
                empty = int((flat[local[valid]].max(axis=1, initial=0) == 0).sum())
            else:
                head = flat[local[valid]]
                n = head[:, :4].copy().view("<u4").reshape(-1).astype(np.int64)
                soi = (head[:, 4] == 0xFF) & (head[:, 5] == 0xD8)
                empty = int(((n <= 0) | (n > spec.capacity) | ~soi).sum())
            problem = f"{empty} valid rows hold no {spec.mode} view" if empty else None
            if (flat[local[~valid]] != 0).any():
                problem = "invalid rows hold pixels"
            if problem:
                report.problems.append(f"{where}: {problem}")
                bad.append(tp.index)
        if bad:
            tars = ",".join(map(str, bad))
            report.problems[-1] += f"; run `radio store add-pixels {store.path} --resolution {r} --tars {tars}`"


def _tar_name(store: FeatureStore, t: int) -> str:
    return posixpath.basename(store.plan.tars[t].path)


def _markers(store: FeatureStore, key: str, report: VerifyReport) -> np.ndarray:
    """``[T] bool`` completion markers of ``key``; a damaged marker chunk is a problem of its tar (read as not complete)."""
    try:
        return store.completed(key)
    except checksums.CorruptError:
        pass
    marker = store.array(key, "complete")
    done = np.zeros(len(store.plan.tars), bool)
    for t in range(len(done)):
        try:
            done[t] = bool(checksums.read(marker, t))
        except checksums.CorruptError as e:
            report.tar(key, t, f"{key} tar {t} ({_tar_name(store, t)}): completion marker: {e}")
    return done


def _verify_normalizers(store: FeatureStore, report: VerifyReport) -> None:
    """Every array of every stored normalizer reads back (crc32c); a damaged one is refitted by `radio fit-phis`."""
    if "normalizers" not in store.root:
        return
    for teacher, tg in sorted(store.root["normalizers"].groups()):
        for stream, g in sorted(tg.groups()):
            # the unversioned layout keeps its arrays on the stream group; versions are sub-groups
            versions = [(f"normalizers/{teacher}/{stream}", g)]
            versions += [(f"normalizers/{teacher}/{stream}/{fp}", v) for fp, v in sorted(g.groups())]
            for where, v in versions:
                for name, array in sorted(v.arrays()):
                    try:
                        checksums.read(array, ..., f"{where}/{name}")
                    except checksums.CorruptError as e:
                        report.problems.append(f"{e}; run `radio fit-phis` to refit it")


def _verify_compact(
    store: FeatureStore, key: str, manifests: dict[int, Any], report: VerifyReport, raw_done: np.ndarray
) -> None:
    try:
        ck = compact_mod.compact_key(store, key)
        done = compact_mod.compact_complete(store, key)
    except checksums.CorruptError as e:
        report.problems.append(f"{key} compact: {e}; run `radio store compact --overwrite` (needs the raw targets)")
        return
    if ck is None:
        return
    import torch

    from .codec import decode

    problems = report.problems
    g = store.root["targets"][key][compact_mod.GROUP]
    for stream, codec in (("features", ck.features), ("summary", ck.summary)):
        if codec is None:
            continue
        if not (np.isfinite(codec.scale).all() and (codec.scale > 0).all()):
            problems.append(f"{key} compact: {stream} scale has non-finite or non-positive values")
        if codec.basis is not None and not np.isfinite(codec.basis).all():
            problems.append(f"{key} compact: {stream} basis has non-finite values")
        if g[stream].shape[-1] != codec.stored_channels:
            problems.append(
                f"{key} compact: {stream} stores {g[stream].shape[-1]} values, codec says {codec.stored_channels}"
            )
    if ck.raw_dropped and (raw_done & ~done).any():
        problems.append(f"{key} compact: raw targets dropped but {int((raw_done & ~done).sum())} tars not compacted")
    for tp in store.plan.tars:
        if not done[tp.index] or not tp.rows:
            continue
        where = f"{key} compact tar {tp.index} ({posixpath.basename(tp.path)})"
        m = manifests.get(tp.index)
        if m is None:
            report.tar(key, tp.index, f"{where}: marked complete but has no manifest")
            continue
        local = np.asarray(m["row"], dtype=np.int64) - tp.row_start
        valid = np.asarray(m["valid"], dtype=bool)
        try:
            sse, ssy = (float(checksums.read(g[n], tp.index, f"compact/{n}")) for n in ("sse", "ssy"))
            checksums.read(g["direct"], tp.index, "compact/direct")
        except checksums.CorruptError as e:
            report.tar(key, tp.index, f"{where}: {e}")
            continue
        if valid.any() and sse == 0 and ssy == 0:
            # compacting valid rows always leaves some signal (Σy² > 0): zeros mean no data was written
            report.tar(
                key, tp.index, f"{where}: sse and ssy are 0 for {int(valid.sum())} valid rows (compact data are zeros)"
            )
        for stream, codec in (("features", ck.features), ("summary", ck.summary)):
            if codec is None:
                continue
            try:
                q = checksums.read(g[stream], slice(tp.row_start, tp.row_start + tp.rows), f"compact/{stream}")
            except checksums.CorruptError as e:
                report.tar(key, tp.index, f"{where}: {e}")
                continue
            qv = q[local[valid]]
            decoded = decode(codec, torch.from_numpy(qv)).reshape(int(valid.sum()), -1)
            bad = int((~torch.isfinite(decoded).all(dim=1)).sum())
            if bad:
                report.tar(key, tp.index, f"{where}: non-finite decoded {stream} in {bad} valid rows")
            zero = int((qv.reshape(len(qv), -1) == 0).all(axis=1).sum())
            if zero:
                report.tar(key, tp.index, f"{where}: {zero} valid rows have all-zero compact {stream}")
            if (q[local[~valid]] != 0).any():
                report.tar(key, tp.index, f"{where}: invalid rows hold compact {stream}")
