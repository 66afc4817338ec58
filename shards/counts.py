"""How many samples a tar holds, for planning rows, without reading it when img2dataset says so.

img2dataset writes ``NNNNNNNN_stats.json`` (``successes``: samples written to the tar) and
``NNNNNNNN.parquet`` (one row per attempted sample, ``status == "success"`` for those written)
beside each tar. On object storage, counting from the tar's headers streams the whole tar, so
those counts are used when present and consistent with the tar's size: every sample takes at
least one 512-byte member header, and a tar ends in two zero blocks. Otherwise the header scan.
A count that is too high only pads rows; a tar holding more samples than planned fails loudly
in the CPU stage, never overwrites another tar's rows.
"""

from __future__ import annotations

import json

from radio.shards.tar import count_samples, open_binary

BLOCK = 512


def consistent(samples: int, tar_bytes: int) -> bool:
    """Whether ``samples`` can fit in a tar of ``tar_bytes`` (and a non-empty tar has some)."""
    return samples >= 0 and samples * BLOCK + 2 * BLOCK <= tar_bytes and (samples > 0 or tar_bytes <= 20 * BLOCK)


def sidecar_count(tar: str) -> int | None:
    """Samples per ``_stats.json`` (``successes``) or the parquet (``status == "success"``); None if neither."""
    stem = tar.removesuffix(".tar")
    try:
        with open_binary(f"{stem}_stats.json") as f:
            n = json.load(f).get("successes")
        if isinstance(n, int):
            return n
    except (OSError, ValueError):
        pass
    try:
        import pyarrow.parquet as pq

        with open_binary(f"{stem}.parquet") as f:
            table = pq.read_table(f, columns=["status"])
        return sum(s == "success" for s in table.column("status").to_pylist())
    except (OSError, ValueError, KeyError, ImportError):
        return None
    except Exception:  # noqa: BLE001 - a malformed sidecar (arrow errors): fall back to the headers
        return None


def planned_samples(tar: str, tar_bytes: int) -> tuple[int, str | None]:
    """(samples, error): from the sidecars when consistent with ``tar_bytes``, else :func:`count_samples`."""
    n = sidecar_count(tar)
    if n is not None and consistent(n, tar_bytes):
        return n, None
    return count_samples(tar)


__all__ = ["consistent", "planned_samples", "sidecar_count"]
