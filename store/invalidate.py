"""`radio store invalidate`: mark (tar, key) pairs incomplete so a plain `radio featurize` redoes them.

What `radio store verify` prints for damaged data (a chunk whose crc32c does not match, a
damaged manifest page, valid rows that read as zeros). Only completion markers change: the key's
``complete`` first (readers stop trusting the tar at once), then its compact group's ``complete``
and ``direct``, so featurize writes the tar again (raw, or compact directly when the key has a
fitted normalizer, DESIGN.md §3) and rewrites its moments and manifest before marking it complete.
"""

from __future__ import annotations

from typing import Any

from . import compact as compact_mod
from .layout import FeatureStore, StoreError


def invalidate(store: FeatureStore, key: str, tars: list[int]) -> None:
    """Mark ``tars`` of ``key`` incomplete (raw and compact); their bytes stay until featurize rewrites them."""
    store.target(key)  # unknown key → StoreError listing the store's keys
    n = len(store.plan.tars)
    outside = [t for t in tars if not 0 <= t < n]
    if outside:
        raise StoreError(f"{store.path}: no tar {outside[0]} (the plan has tars 0..{n - 1})")
    marker = store.array(key, "complete")
    targets: Any = store.root["targets"]  # a zarr Group (zarr's stubs type a member as Array | Group)
    g = targets[key]
    compact = g[compact_mod.GROUP] if compact_mod.GROUP in g and "complete" in g[compact_mod.GROUP] else None
    for t in sorted(set(tars)):
        # Whole-chunk writes (chunks of one marker): a damaged marker chunk is replaced, never read.
        marker[t] = 0
        if compact is not None:
            compact["complete"][t] = 0
            compact["direct"][t] = 0
