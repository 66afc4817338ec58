"""The trainer's columnar manifest: row → (tar, offset, size, crop, valid) as flat numpy columns.

The store's parquet manifest (one file per tar) is read column by column into dense arrays
indexed by row id — no Python object per row. The trainer saves them once per run under the run
folder as one ``.npy`` of packed row records (a derived cache, rebuilt by every ``radio distill``
invocation, never part of the store), and every DataLoader worker memory-maps it: the workers share the
page cache instead of each holding a copy. At 10M rows the columns take 29 bytes a row
(~290 MB on disk); a worker's resident share is only the pages of the rows it serves.

A row's tar is found from the plan's row ranges (``searchsorted``), not stored per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import FeatureStore, Plan

# column → dtype of the saved arrays (crops fit int32 after the store's image-size limits)
COLUMNS: dict[str, np.dtype] = {
    "offset": np.dtype(np.int64),
    "size": np.dtype(np.int32),
    "crop_x": np.dtype(np.int32),
    "crop_y": np.dtype(np.int32),
    "crop_w": np.dtype(np.int32),
    "crop_h": np.dtype(np.int32),
    "valid": np.dtype(bool),
}
# A saved manifest is row-major, one packed 29-byte record per row: a lookup of row r touches one
# page for all its fields (column files would touch one page per column, and the kernel maps
# ~64 KB of page cache around each touched page).
RECORD = np.dtype([(name, dtype) for name, dtype in COLUMNS.items()])


@dataclass
class Manifest:
    """Dense per-row columns (``[N]`` each, N = the plan's total rows; rows no manifest names are
    invalid), the tars' paths and their first rows (``[T]``, for row → tar)."""

    columns: dict[str, np.ndarray]
    tar_paths: list[str]
    tar_starts: np.ndarray  # [T] int64, ascending

    @classmethod
    def build(cls, store: FeatureStore) -> Manifest:
        """Read every tar's parquet manifest, only the columns the trainer uses."""
        plan = store.plan
        n = plan.total_rows
        cols = {name: np.zeros(n, dtype) for name, dtype in COLUMNS.items()}
        names = ["row", *COLUMNS]
        for table in store.manifest_tables(names).values():  # a complete tar without its manifest: StoreError
            rows = table.column("row").to_numpy()
            for name in COLUMNS:
                cols[name][rows] = (
                    table.column(name).fill_null(COLUMNS[name].type(0)).to_numpy(zero_copy_only=False)
                )  # invalid rows: no crop
        return cls(cols, *_tars(plan))

    @classmethod
    def from_arrays(cls, plan: Plan, columns: dict[str, np.ndarray]) -> Manifest:
        """Wrap ready columns (tests and benchmarks build synthetic manifests this way)."""
        return cls({k: np.asarray(columns[k], dtype=d) for k, d in COLUMNS.items()}, *_tars(plan))

    def save(self, folder: str | Path) -> Path:
        """Write ``rows.npy`` (one :data:`RECORD` per row), ``tar_starts.npy`` and ``tars.txt``
        (atomically: every DDP rank may write the same bytes)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        records = np.empty(len(self), RECORD)
        for name in COLUMNS:
            records[name] = self.columns[name]
        arrays = {"rows": records, "tar_starts": self.tar_starts}
        for name, arr in arrays.items():
            tmp = folder / f".{name}.npy.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, folder / f"{name}.npy")
        tmp = folder / f".tars.txt.tmp{os.getpid()}"
        tmp.write_text("".join(p + "\n" for p in self.tar_paths))
        os.replace(tmp, folder / "tars.txt")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Memory-map a saved manifest (read-only, shared pages; nothing is read until used)."""
        folder = Path(folder)
        records = np.load(folder / "rows.npy", mmap_mode="r")
        cols = {name: records[name] for name in COLUMNS}  # strided views of the one mapping
        return cls(cols, (folder / "tars.txt").read_text().splitlines(), np.load(folder / "tar_starts.npy"))

    def __len__(self) -> int:
        return len(self.columns["offset"])

    def tar_of(self, rows: np.ndarray) -> np.ndarray:
        """``[B]`` tar indices of ``[B]`` row ids."""
        return np.searchsorted(self.tar_starts, rows, side="right") - 1


def _tars(plan: Plan) -> tuple[list[str], np.ndarray]:
    return [t.path for t in plan.tars], np.array([t.row_start for t in plan.tars], dtype=np.int64)
