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
from .normalizers import (
    _phis_group,
    current_fingerprint,
    load_phis,
    load_teacher_phis,
    normalizer_info,
    provenance_fingerprint,
    teacher_of,
)
from .phis import PhiS
from .provenance import COMPACT as COMPACT_ATTR  # the key attribute that records a compaction

GROUP = "compact"
STREAM_ATTR = {"features": "normalizer", "summary": "summary_normalizer"}  # where a group records its normalizer
SETTINGS = ("codec", "rank", "variance", "clip", "summary")  # what a request chooses (a resume must match)


def current_phis(store: FeatureStore, key: str, stream: str = "features") -> PhiS:
    """The PHI-S new compact data of ``key``'s ``stream`` is encoded in: its teacher's current one
    (one target space per adaptor head), as the :class:`PhiS` the codec works in. Existing compact
    data stays in the one it was encoded in (:func:`compact_phis`); the trainer's and evaluation's
    :class:`~radio.store.normalizers.Normalizer` comes from :func:`~radio.store.normalizers.normalizer_for`."""
    try:
        return load_phis(store, key, stream)
    except StoreError:
        raise StoreError(f"{key}: no PHI-S normalizer for {stream}; run `radio fit-phis` before compacting") from None


def _normalizer_attrs(store: FeatureStore, key: str, stream: str) -> dict[str, Any]:
    """Which normalizer the codec's values live in (the current one): its fingerprint, and the tars it was fitted from."""
    g = _phis_group(store, teacher_of(store, key), stream)
    tars = g.attrs["tars"]  # per key of the teacher: the tars its moments came from
    return {
        "fingerprint": g.attrs["fingerprint"],
        "keys": g.attrs.get("keys"),
        "count": g.attrs["count"],
        "tars": len(set().union(*tars.values())),
        "tar_indices": tars.get(key),
    }


def compact_fingerprint(ck: CompactKey, stream: str = "features") -> str | None:
    """The fingerprint of the normalizer ``ck``'s ``stream`` is encoded in (None: not compacted)."""
    n = ck.attrs.get(STREAM_ATTR[stream])
    return None if n is None else str(n["fingerprint"])


def compact_phis(store: FeatureStore, ck: CompactKey, stream: str = "features") -> PhiS:
    """The normalizer ``ck``'s ``stream`` was encoded in, by its recorded fingerprint: decode and
    resume with this one, never with a later refit's."""
    fp = compact_fingerprint(ck, stream)
    try:
        return load_teacher_phis(store, teacher_of(store, ck.key), stream, fp)
    except StoreError:
        raise StoreError(f"{ck.key}: compacted in PHI-S {fp} for {stream}, which the store does not hold") from None


def is_current(store: FeatureStore, ck: CompactKey, stream: str = "features") -> bool:
    """Whether ``ck``'s ``stream`` is expressed in its teacher's current normalizer (else readers re-express it)."""
    return compact_fingerprint(ck, stream) == current_fingerprint(store, teacher_of(store, ck.key), stream)


def check_normalizer(store: FeatureStore, ck: CompactKey) -> None:
    """The normalizers ``ck`` is encoded in are in the store (one line if not). A refit since is
    fine: readers re-express the values in the current normalizer (:func:`reexpression`)."""
    for stream in ("features", "summary"):
        if ck.attrs.get(STREAM_ATTR[stream]) is not None:
            compact_phis(store, ck, stream)


def reexpression(old: PhiS, new: PhiS) -> tuple[np.ndarray, np.ndarray]:
    """``A [C, C]``, ``b [C]`` with ``y_new = y_old A + b`` for row vectors: PHI-S space of ``old``
    → PHI-S space of ``new``, ``y_new = T_new (T_old⁻¹ y_old + μ_old − μ_new)`` (float64; exact,
    so decoded int8 values keep their error of half a step of the old space, mapped by T_new T_old⁻¹)."""
    a = old.inverse.T @ new.transform.T
    b = (old.mean - new.mean) @ new.transform.T
    return a, b


def _has_phis(store: FeatureStore, key: str, stream: str) -> bool:
    """Whether ``key``'s teacher has a fitted normalizer whose moments covered ``key``."""
    g = _phis_group(store, teacher_of(store, key), stream)
    return g is not None and key in g.attrs.get("keys", [])


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
    return CompactKey(
        key, attrs, _codec_from(c, "features", attrs), _codec_from(c, "summary", attrs) if attrs["summary"] else None
    )


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


def _fit(
    key: str, features: PhiS, summary: PhiS | None, codec: str, rank: int | None, variance: float | None, clip: float
) -> tuple[Codec, Codec | None]:
    try:
        return (
            fit_codec(features, codec, rank, variance, clip),
            fit_codec(summary, codec, None, None, clip) if summary is not None else None,
        )
    except CodecError as e:
        raise StoreError(f"{key}: {e}") from None


def plan_compact(
    store: FeatureStore,
    key: str,
    codec: str = "int8",
    rank: int | None = None,
    variance: float | None = None,
    clip: float = 4.0,
    summary: bool = False,
    overwrite: bool = False,
) -> tuple[str, CompactKey | None]:
    """What :func:`prepare_compact` would do with ``key``, writing nothing (one-line
    :class:`StoreError` for a request it refuses): ``("resume", ck)`` the existing group,
    ``("new", ck or None)`` a group in the current normalizer (replacing ``ck``), or
    ``("restore", ck)`` the same after restoring raw targets from ``ck`` (they are not all on disk).

    The same request resumes the existing group in the normalizer it was encoded in, also after
    a refit (readers re-express it); ``overwrite`` recompacts it in the current one.
    """
    info = store.target(key)
    if summary and not info.summary_dim:
        raise StoreError(f"{key}: has no summary to compact")
    phis_f = current_phis(store, key, "features")
    phis_s = current_phis(store, key, "summary") if summary else None
    _fit(key, phis_f, phis_s, codec, rank, variance, clip)  # the request is valid in the current normalizer
    if fitted_on_key(store, key) is False:
        raise StoreError(
            f"{key}: its PHI-S was fitted on other teacher outputs (featurized again since); "
            "run `radio fit-phis` before compacting"
        )
    ck = compact_key(store, key)
    if ck is None:
        return "new", None
    # The request in the existing group's own normalizers (a stream it did not compact: the current one).
    own_s = compact_phis(store, ck, "summary") if summary and ck.summary is not None else phis_s
    cf, _ = _fit(key, compact_phis(store, ck, "features"), own_s, codec, rank, variance, clip)
    want = {
        "codec": codec,
        "rank": cf.rank,
        "variance": variance,
        "clip": clip,
        "summary": bool(summary),
        "normalizer": ck.attrs.get("normalizer"),
        "summary_normalizer": (
            ck.attrs.get("summary_normalizer") if ck.summary is not None else _normalizer_attrs(store, key, "summary")
        )
        if summary
        else None,
    }
    changed = sorted(k for k in ck.attrs.keys() | want.keys() if k != "raw_dropped" and ck.attrs.get(k) != want.get(k))
    stale = not all(is_current(store, ck, st) for st in ("features", "summary") if ck.attrs.get(STREAM_ATTR[st]))
    if not changed and not (overwrite and stale):
        return "resume", ck
    if not overwrite:
        raise StoreError(f"{key}: compacted with other settings ({', '.join(changed)}); pass --overwrite to redo it")
    return ("restore" if raw_missing(store, key)[store.completed(key)].any() else "new"), ck


def prepare_compact(
    store: FeatureStore,
    key: str,
    codec: str = "int8",
    rank: int | None = None,
    variance: float | None = None,
    clip: float = 4.0,
    summary: bool = False,
    overwrite: bool = False,
) -> CompactKey:
    """Fit the codec from the key's current normalizer and allocate its compact arrays (idempotent:
    the same request on an existing group resumes it; another one needs ``overwrite``, which
    first restores raw targets that are only stored compact, see :func:`plan_compact`)."""
    action, old = plan_compact(store, key, codec, rank, variance, clip, summary, overwrite)
    if action == "resume":
        assert old is not None
        _record_provenance(store, key, old)  # a run killed before it was recorded
        return old
    if action == "restore":
        assert old is not None
        restore_raw(store, old)
    info = store.target(key)
    phis_f = current_phis(store, key, "features")
    phis_s = current_phis(store, key, "summary") if summary else None
    cf, cs = _fit(key, phis_f, phis_s, codec, rank, variance, clip)
    attrs = {
        "codec": codec,
        "rank": cf.rank,
        "variance": variance,
        "clip": clip,
        "summary": bool(summary),
        "normalizer": _normalizer_attrs(store, key, "features"),
        "summary_normalizer": _normalizer_attrs(store, key, "summary") if summary else None,
    }
    g = store.root["targets"][key]
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
    make(
        c,
        "features",
        shape=(n, h, w, k),
        dtype=cf.dtype,
        chunks=(1, h, w, k),
        shards=(r, h, w, k),
        compressor=compressor,
        fill_value=0,
        dimension_names=("row", "y", "x", "channel"),
    )
    if cs is not None:
        make(
            c,
            "summary",
            shape=(n, cs.stored_channels),
            dtype=cs.dtype,
            chunks=(r, cs.stored_channels),
            compressor=compressor,
            fill_value=0,
            dimension_names=("row", "channel"),
        )
    for stream, cd in (("features", cf), ("summary", cs)):
        if cd is None:
            continue
        make(c, f"{stream}_scale", shape=cd.scale.shape, dtype="float32", chunks=cd.scale.shape, fill_value=0)[...] = (
            cd.scale
        )
        if cd.basis is not None:
            make(c, f"{stream}_basis", shape=cd.basis.shape, dtype="float32", chunks=cd.basis.shape, fill_value=0)[
                ...
            ] = cd.basis
    for name in ("sse", "ssy"):
        make(c, name, shape=(t,), dtype="float64", chunks=(1,), fill_value=0)
    make(c, "direct", shape=(t,), dtype="uint8", chunks=(1,), fill_value=0)  # written compact by featurize
    make(c, "complete", shape=(t,), dtype="uint8", chunks=(1,), fill_value=0)
    # Attributes last, in one write of zarr.json (zarr's ``attrs.update`` writes once per key: a
    # kill in between left ``codec`` without ``clip``): a codec named in them has its parameters fully written.
    c.update_attributes(attrs)
    ck = compact_key(store, key)
    assert ck is not None
    _record_provenance(store, key, ck)
    return ck


def _record_provenance(store: FeatureStore, key: str, ck: CompactKey) -> None:
    """The key's ``compact`` provenance entry (one write, only when it is not already there)."""
    entry = {
        "codec": ck.attrs["codec"],
        "rank": ck.attrs["rank"],
        "clip": ck.attrs["clip"],
        "summary": bool(ck.attrs["summary"]),
        "normalizer_tars": ck.attrs["normalizer"]["tars"],
    }
    g = store.root["targets"][key]
    if g.attrs.get(COMPACT_ATTR) != entry:
        g.update_attributes({COMPACT_ATTR: entry})


def restore_raw(store: FeatureStore, ck: CompactKey) -> int:
    """Write the raw fp16 targets of every compacted tar whose raw ones are not on disk, decoded
    from ``ck`` in the normalizer it was encoded in (lossy by the codec's error; invalid rows stay
    zero); returns how many tars. Idempotent: ``ck`` is read, never changed, so a killed run redoes it."""
    missing = raw_missing(store, ck.key) & compact_complete(store, ck.key)
    g = store.root["targets"][ck.key][GROUP]
    streams = [("features", ck.features)] + ([("summary", ck.summary)] if ck.summary is not None else [])
    for t in np.flatnonzero(missing):
        tp = store.plan.tars[int(t)]
        rows = slice(tp.row_start, tp.row_start + tp.rows)
        valid = _valid_local_rows(store, int(t))
        for stream, codec in streams:
            p = compact_phis(store, ck, stream)
            q = g[stream][rows]
            x = np.zeros(q.shape[:-1] + (len(p.mean),), np.float16)
            if len(valid):
                y = decode(codec, torch.from_numpy(q[valid])).double()
                x[valid] = (y @ torch.from_numpy(p.inverse).T + torch.from_numpy(p.mean)).numpy().astype(np.float16)
            store.array(ck.key, stream)[rows] = x  # whole shards: a tar's rows never share one
    return int(missing.sum())


def _valid_local_rows(store: FeatureStore, tar_index: int) -> np.ndarray:
    tp = store.plan.tars[tar_index]
    name = store.manifest_name(tar_index)
    try:  # only complete tars are compacted: a missing manifest is damage, never "no valid rows"
        data = store.location.read_bytes(name)
    except FileNotFoundError:
        raise StoreError(
            f"{store.location.url_of(name)}: missing, but tar {tar_index} ({tp.path}) is marked complete; "
            "run `radio store verify`"
        ) from None
    m = checksums.read_parquet(data, f"{store.path}/{name}", ["row", "valid"]).to_pydict()
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
    phis_f = compact_phis(store, ck, "features")  # the group's own: a resume after a refit stays in one space
    phis_s = compact_phis(store, ck, "summary") if ck.summary is not None else None
    sse = ssy = 0.0
    for start in range(0, tp.rows, r):
        rows = slice(tp.row_start + start, tp.row_start + start + r)
        local = valid[(valid >= start) & (valid < start + r)] - start
        raw = checksums.read(
            store.array(key, "features"), rows, f"{store.path}: {key} tar {tar_index}: targets/{key}/features"
        )
        q, e, s = encode_rows(phis_f, ck.features, raw, local)
        g["features"][rows] = q
        sse, ssy = sse + e, ssy + s
        if phis_s is not None:
            raw_s = checksums.read(
                store.array(key, "summary"), rows, f"{store.path}: {key} tar {tar_index}: targets/{key}/summary"
            )
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
    ``fit-phis --max-tars`` never exist as raw fp16 on disk. Only when that normalizer (the
    group's own, else the current one) was fitted on the teacher output featurize now writes:
    its recorded provenance of the key must match the key's (after `featurize --overwrite` with
    another teacher, e.g. another ``output_scale``, int8 in the old space would be garbage; those
    tars are written raw fp16, to be refitted and compacted).
    """
    if not _has_phis(store, key, "features"):
        return None
    ck = compact_key(store, key)
    if ck is None:  # (a group exists only for the provenance the key has: featurize --overwrite removes it)
        if not fitted_on_key(store, key):
            return None  # fitted on other outputs (or by a version that did not record them): raw is safe
        ck = prepare_compact(store, key)
    check_normalizer(store, ck)
    return ck


def fitted_on_key(store: FeatureStore, key: str) -> bool | None:
    """Whether the current normalizer of ``key``'s teacher was fitted on the teacher output ``key``
    holds now (its recorded :func:`provenance_fingerprint`); None when it recorded none (fitted
    before provenance was recorded)."""
    recorded = (normalizer_info(store, teacher_of(store, key), "features") or {}).get("provenance")
    return None if recorded is None else recorded.get(key) == provenance_fingerprint(store, key)


def write_direct_window(
    store: FeatureStore,
    ck: CompactKey,
    row_start: int,
    features: np.ndarray,
    summary: np.ndarray | None,
    valid: list[int],
    phis: PhiS,
) -> tuple[float, float]:
    """Worker side: one whole shard of rows written compact (features, in ``phis`` =
    ``compact_phis(store, ck)``) and raw (summary, unless the codec compacts it too); returns
    Σ(y-ŷ)², Σy² of the valid rows. ``features [R, h, w, C]`` fp16."""
    g = store.root["targets"][ck.key][GROUP]
    r = store.plan.shard_rows
    q, sse, ssy = encode_rows(phis, ck.features, features, np.asarray(valid, np.int64))
    g["features"][row_start : row_start + r] = q
    if summary is not None:
        if ck.summary is not None:
            p = compact_phis(store, ck, "summary")
            g["summary"][row_start : row_start + r] = encode_rows(p, ck.summary, summary, np.asarray(valid, np.int64))[
                0
            ]
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
    g[GROUP].update_attributes({"raw_dropped": True})  # first: from now on readers must not trust raw chunks
    for name in ("features", "summary") if ck_has_summary(g) else ("features",):
        store.location.remove_prefix(f"targets/{key}/{name}/c")
