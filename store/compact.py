"""`radio store compact`: rewrite a target key's features (and summary) into a compact codec.

Beside the raw arrays of a key the store then holds::

    targets/KEY/compact/            attributes: codec, rank, clip, normalizer fingerprint and tars, raw_dropped
        features  [rows, h, w, K]   int8 (uint8 for fp8 bits); chunk = 1 row, shard = shard_rows rows
        summary   [rows, Ks]        the same for the summary (when compacted)
        features_scale [K], features_basis [C, R]    float32 codec parameters (basis: rank codecs only)
        summary_scale  [Ks], summary_basis [Cs, Rs]
        sse, ssy  [T]               float64 per tar: Σ (y - ŷ)² and Σ y² over valid rows, in PHI-S space
        complete  [T]               uint8 completion marker per tar, written last

Values are PHI-S-space vectors ``y = normalize(x)`` encoded by :mod:`.codec`; invalid rows stay
zero. One task writes a (tar, key) in whole shards and marks it complete last, so a killed run
resumes at the first incomplete tar (the featurize discipline, DESIGN.md §3). The key's
attributes get a ``compact`` entry (its provenance) once the parameters are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import checksums
from .codec import Codec, CodecError, decode, encode, fit_codec
from .layout import FeatureStore, StoreError
from .normalizers import _phis_group, load_phis, teacher_of
from .phis import PhiS

GROUP = "compact"


def normalizer_for(store: FeatureStore, key: str, stream: str = "features") -> PhiS:
    """The PHI-S normalizer a target key's ``stream`` is compacted in: its teacher's (one target
    space per adaptor head). The one place that says which."""
    try:
        return load_phis(store, key, stream)
    except StoreError:
        raise StoreError(f"{key}: no PHI-S normalizer for {stream}; run `radio fit-phis` before compacting") from None


def _normalizer_group(store: FeatureStore, key: str, stream: str):
    """The Zarr group of :func:`normalizer_for`'s normalizer, or None (change both together)."""
    return _phis_group(store, teacher_of(store, key), stream)


def _normalizer_attrs(store: FeatureStore, key: str, stream: str) -> dict[str, Any]:
    """Which normalizer the codec's values live in: its fingerprint, and the tars it was fitted from."""
    g = _normalizer_group(store, key, stream)
    tars = g.attrs["tars"]  # per key of the teacher: the tars its moments came from
    return {"fingerprint": g.attrs["fingerprint"], "keys": g.attrs.get("keys"), "count": g.attrs["count"],
            "tars": len(set().union(*tars.values())), "tar_indices": tars.get(key)}  # fmt: skip


def check_normalizer(store: FeatureStore, ck: CompactKey) -> None:
    """Compact values are PHI-S space of one fitted normalizer; refuse them once fit-phis replaced it
    (the trainer and export would otherwise mix two spaces)."""
    for stream, attr in (("features", "normalizer"), ("summary", "summary_normalizer")):
        if ck.attrs.get(attr) is None:
            continue
        now = _normalizer_attrs(store, ck.key, stream)["fingerprint"] if _has_phis(store, ck.key, stream) else None
        if now != ck.attrs[attr]["fingerprint"]:
            raise StoreError(f"{ck.key}: compacted in a PHI-S normalizer that `radio fit-phis` has since replaced; "
                             "run `radio store compact --overwrite` (needs the raw targets) or refit from the same tars")  # fmt: skip


def _has_phis(store: FeatureStore, key: str, stream: str) -> bool:
    """Whether ``key``'s teacher has a fitted normalizer whose moments covered ``key``."""
    g = _normalizer_group(store, key, stream)
    return g is not None and "fingerprint" in g.attrs and key in g.attrs.get("keys", [])


@dataclass(frozen=True)
class CompactKey:
    """A key's compact arrays and codecs, as readers use them."""

    key: str
    attrs: dict[str, Any]
    features: Codec
    summary: Codec | None

    @property
    def raw_dropped(self) -> bool:
        return bool(self.attrs.get("raw_dropped"))


def _codec_from(g, stream: str, attrs: dict[str, Any]) -> Codec:
    basis = checksums.read(g[f"{stream}_basis"], ...) if f"{stream}_basis" in g else None
    return Codec(attrs["codec"], checksums.read(g[f"{stream}_scale"], ...), basis, float(attrs["clip"]))


def compact_key(store: FeatureStore, key: str) -> CompactKey | None:
    """The key's compact codec, or None when it has none (parameters not yet fully written)."""
    g = store.root["targets"][key]
    if GROUP not in g or "codec" not in g[GROUP].attrs:
        return None
    c = g[GROUP]
    attrs = dict(c.attrs)
    return CompactKey(key, attrs, _codec_from(c, "features", attrs),
                      _codec_from(c, "summary", attrs) if attrs["summary"] else None)  # fmt: skip


def compact_complete(store: FeatureStore, key: str) -> np.ndarray:
    """``[T] bool``: which tars are compacted for ``key`` (all False without a compact group)."""
    g = store.root["targets"][key]
    if GROUP not in g or "complete" not in g[GROUP]:
        return np.zeros(len(store.plan.tars), bool)
    return checksums.read(g[GROUP]["complete"]).astype(bool)


def reads_compact(store: FeatureStore, key: str) -> bool:
    """Whether readers take ``key`` from its compact arrays: every raw-complete tar is compacted."""
    ck = compact_key(store, key)
    if ck is None:
        return False
    done = compact_complete(store, key)
    return bool(done[store.completed(key)].all()) and bool(done.any())


def prepare_compact(store: FeatureStore, key: str, codec: str = "int8", rank: int | None = None,
                    variance: float | None = None, clip: float = 4.0, summary: bool = False,
                    overwrite: bool = False) -> CompactKey:  # fmt: skip
    """Fit the codec from the key's normalizer and allocate its compact arrays (idempotent: the
    same request on an existing group resumes it; another one needs ``overwrite``)."""
    info = store.target(key)
    phis_f = normalizer_for(store, key, "features")
    if summary and not info.summary_dim:
        raise StoreError(f"{key}: has no summary to compact")
    phis_s = normalizer_for(store, key, "summary") if summary else None
    try:
        cf = fit_codec(phis_f, codec, rank, variance, clip)
        cs = fit_codec(phis_s, codec, None, None, clip) if phis_s is not None else None
    except CodecError as e:
        raise StoreError(f"{key}: {e}") from None
    attrs = {"codec": codec, "rank": cf.rank, "variance": variance, "clip": clip, "summary": bool(summary),
             "normalizer": _normalizer_attrs(store, key, "features"),
             "summary_normalizer": _normalizer_attrs(store, key, "summary") if summary else None}  # fmt: skip
    g = store.root["targets"][key]
    if GROUP in g and "codec" in g[GROUP].attrs:
        old = {k: v for k, v in g[GROUP].attrs.items() if k != "raw_dropped"}
        if old == attrs:
            return compact_key(store, key)
        if g[GROUP].attrs.get("raw_dropped") or g[GROUP]["direct"][:].any():
            raise StoreError(f"{key}: some of its raw targets are not on disk (dropped, or featurized compact); "
                             "it cannot be compacted again with other settings")  # fmt: skip
        if not overwrite:
            changed = sorted(k for k in old.keys() | attrs.keys() if old.get(k) != attrs.get(k))
            raise StoreError(f"{key}: compacted with other settings ({', '.join(changed)}); pass --overwrite to redo it")
    if GROUP in g:
        store.location.remove_prefix(f"targets/{key}/{GROUP}")
        store.root = store._open_root()
        g = store.root["targets"][key]
    c = g.create_group(GROUP)
    n, t, r = store.plan.total_rows, len(store.plan.tars), store.plan.shard_rows
    h, w = info.grid
    k = cf.stored_channels
    # The raw arrays' compressor (the shipped pipelines store none): the trainer's direct reader
    # serves uncompressed shards with one positioned read per run of rows. crc32c ends every chain.
    compressor = checksums.plain_compressors(store.array(key, "features"))
    make = checksums.create_array
    make(c, "features", shape=(n, h, w, k), dtype=cf.dtype, chunks=(1, h, w, k), shards=(r, h, w, k),
         compressor=compressor, fill_value=0, dimension_names=("row", "y", "x", "channel"))  # fmt: skip
    if cs is not None:
        make(c, "summary", shape=(n, cs.stored_channels), dtype=cs.dtype, chunks=(r, cs.stored_channels),
             compressor=compressor, fill_value=0, dimension_names=("row", "channel"))  # fmt: skip
    for stream, cd in (("features", cf), ("summary", cs)):
        if cd is None:
            continue
        make(c, f"{stream}_scale", shape=cd.scale.shape, dtype="float32", chunks=cd.scale.shape, fill_value=0)[...] = cd.scale
        if cd.basis is not None:
            make(c, f"{stream}_basis", shape=cd.basis.shape, dtype="float32", chunks=cd.basis.shape,
                 fill_value=0)[...] = cd.basis  # fmt: skip
    for name in ("sse", "ssy"):
        make(c, name, shape=(t,), dtype="float64", chunks=(1,), fill_value=0)
    make(c, "direct", shape=(t,), dtype="uint8", chunks=(1,), fill_value=0)  # written compact by featurize
    make(c, "complete", shape=(t,), dtype="uint8", chunks=(1,), fill_value=0)
    # Attributes last: a codec named in them has its parameters fully written.
    c.attrs.update(attrs)
    provenance = dict(g.attrs)
    provenance["compact"] = {"codec": codec, "rank": cf.rank, "clip": clip, "summary": bool(summary),
                             "normalizer_tars": attrs["normalizer"]["tars"]}  # fmt: skip
    g.attrs.update(provenance)
    return compact_key(store, key)


def _valid_local_rows(store: FeatureStore, tar_index: int) -> np.ndarray:
    tp = store.plan.tars[tar_index]
    name = store.manifest_name(tar_index)
    if not store.location.exists(name):
        return np.zeros(0, np.int64)
    m = checksums.read_parquet(store.location.read_bytes(name), f"{store.path}/{name}", ["row", "valid"]).to_pydict()
    rows = np.asarray(m["row"], np.int64)
    return rows[np.asarray(m["valid"], bool)] - tp.row_start


def encode_rows(phis: PhiS, codec: Codec, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Raw rows ``x [R, ..., C]`` → stored ``[R, ..., K]`` (invalid rows zero), and Σ(y-ŷ)², Σy² of the valid ones."""
    out = np.zeros(x.shape[:-1] + (codec.stored_channels,), codec.dtype)
    if not len(valid):
        return out, 0.0, 0.0
    xv = torch.from_numpy(np.ascontiguousarray(x[valid])).double()
    y = ((xv - torch.from_numpy(phis.mean)) @ torch.from_numpy(phis.transform).T).float()
    q = encode(codec, y)
    err = (y.double() - decode(codec, q).double()).pow(2).sum()
    out[valid] = q.numpy()
    return out, float(err), float(y.double().pow(2).sum())


def compact_tar(store: FeatureStore, ck: CompactKey, tar_index: int) -> None:
    """Compact one (tar, key) in whole shards; the completion marker is the last write."""
    key, tp, r = ck.key, store.plan.tars[tar_index], store.plan.shard_rows
    g = store.root["targets"][key][GROUP]
    valid = _valid_local_rows(store, tar_index)
    phis_f = normalizer_for(store, key, "features")
    phis_s = normalizer_for(store, key, "summary") if ck.summary is not None else None
    sse = ssy = 0.0
    for start in range(0, tp.rows, r):
        rows = slice(tp.row_start + start, tp.row_start + start + r)
        local = valid[(valid >= start) & (valid < start + r)] - start
        raw = checksums.read(store.array(key, "features"), rows, f"{store.path}: {key} tar {tar_index}: targets/{key}/features")
        q, e, s = encode_rows(phis_f, ck.features, raw, local)
        g["features"][rows] = q
        sse, ssy = sse + e, ssy + s
        if phis_s is not None:
            raw_s = checksums.read(store.array(key, "summary"), rows, f"{store.path}: {key} tar {tar_index}: targets/{key}/summary")
            qs, _, _ = encode_rows(phis_s, ck.summary, raw_s, local)
            g["summary"][rows] = qs
    g["sse"][tar_index] = sse
    g["ssy"][tar_index] = ssy
    g["complete"][tar_index] = 1


def compact_store_key(store: FeatureStore, key: str, on_tar: Callable[[int], None] | None = None, **codec: Any) -> int:
    """Compact every raw-complete tar of ``key`` not yet compacted; returns how many were done."""
    ck = prepare_compact(store, key, **codec)
    raw, done = store.completed(key), compact_complete(store, key)
    if ck.raw_dropped:
        return 0
    todo = np.flatnonzero(raw & ~done)
    for t in todo:
        compact_tar(store, ck, int(t))
        if on_tar:
            on_tar(int(t))
    return len(todo)


def direct_compact(store: FeatureStore, key: str) -> CompactKey | None:
    """Driver side of featurize: the codec a key's new tars are written in directly, or None (raw).

    A key with a fitted feature normalizer gets an ``int8`` compact group if it has none (the
    settings of an earlier `radio store compact` are kept), so tars featurized after
    ``fit-phis --max-tars`` never exist as raw fp16 on disk.
    """
    if not _has_phis(store, key, "features"):
        return None
    ck = compact_key(store, key)
    if ck is None:
        ck = prepare_compact(store, key)
    check_normalizer(store, ck)
    return ck


def write_direct_window(store: FeatureStore, ck: CompactKey, row_start: int, features: np.ndarray,
                        summary: np.ndarray | None, valid: list[int], phis: PhiS) -> tuple[float, float]:  # fmt: skip
    """Worker side: one whole shard of rows written compact (features) and raw (summary, unless the
    codec compacts it too); returns Σ(y-ŷ)², Σy² of the valid rows. ``features [R, h, w, C]`` fp16."""
    g = store.root["targets"][ck.key][GROUP]
    r = store.plan.shard_rows
    q, sse, ssy = encode_rows(phis, ck.features, features, np.asarray(valid, np.int64))
    g["features"][row_start : row_start + r] = q
    if summary is not None:
        if ck.summary is not None:
            p = normalizer_for(store, ck.key, "summary")
            g["summary"][row_start : row_start + r] = encode_rows(p, ck.summary, summary, np.asarray(valid, np.int64))[0]
        else:
            store.array(ck.key, "summary")[row_start : row_start + r] = summary
    return sse, ssy


def mark_direct_complete(store: FeatureStore, key: str, tar_index: int, sse: float, ssy: float) -> None:
    """A tar written compact by featurize: its error sums, then ``direct``, then the compact marker
    (the caller writes the key's own completion marker after this)."""
    g = store.root["targets"][key][GROUP]
    g["sse"][tar_index] = sse
    g["ssy"][tar_index] = ssy
    g["direct"][tar_index] = 1
    g["complete"][tar_index] = 1


def raw_missing(store: FeatureStore, key: str) -> np.ndarray:
    """``[T] bool``: tars whose raw targets are not on disk (dropped, or written compact directly)."""
    g = store.root["targets"][key]
    if GROUP not in g or "codec" not in g[GROUP].attrs:
        return np.zeros(len(store.plan.tars), bool)
    if g[GROUP].attrs.get("raw_dropped"):
        return store.completed(key) | compact_complete(store, key)
    return g[GROUP]["direct"][:].astype(bool)


def variance_retained(store: FeatureStore, key: str) -> float | None:
    """1 − MSE / Var of the compacted features in PHI-S space, over the compacted tars."""
    g = store.root["targets"][key]
    if GROUP not in g or "sse" not in g[GROUP]:
        return None
    done = compact_complete(store, key)
    ssy = float(g[GROUP]["ssy"][:][done].sum())
    return 1.0 - float(g[GROUP]["sse"][:][done].sum()) / ssy if ssy > 0 else None


def ck_has_summary(g) -> bool:
    """Whether the compact group holds the summary (else the raw summary must stay)."""
    return bool(g[GROUP].attrs.get("summary"))


def drop_raw(store: FeatureStore, key: str) -> None:
    """Delete the raw features and summary chunks of ``key`` (the array metadata stays, reading as
    zeros); the caller checks first that the compact arrays are complete and verified."""
    g = store.root["targets"][key]
    g[GROUP].attrs["raw_dropped"] = True  # first: from now on readers must not trust raw chunks
    for name in ("features", "summary") if ck_has_summary(g) else ("features",):
        store.location.remove_prefix(f"targets/{key}/{name}/c")
