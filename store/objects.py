"""Where a store lives: a local directory or an object-store URL (``s3://``, ``gs://``, ... via fsspec).

Everything in ``store/`` goes through :class:`Location`, so the store's invariants are written
once, in the semantics both kinds of storage share:

- a write of one object (a file, a Zarr chunk or shard) is atomic: on object stores a single PUT
  is, locally a temporary file and ``os.replace`` make it so. Nothing else relies on rename;
- there are no directories to create: a prefix exists when an object under it does;
- removing a prefix removes the objects under it (and locally the directory).

``file://`` URLs and plain paths are local. Credentials and endpoints of URLs come from the
usual places: ``AWS_*`` environment variables (``AWS_ENDPOINT_URL`` for a non-AWS S3) or
fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/*.json``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zarr
import zarr.abc.store
import zarr.storage


def is_url(path: str | Path) -> bool:
    """A remote fsspec URL (``s3://``...); ``file://`` and plain paths are local."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def named(e: OSError, path: str | Path) -> OSError:
    """``e`` naming ``path`` when it names no file (a failed ``write`` does not): a full disk then
    reads "no space left on device: PATH"."""
    if e.filename is not None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path))


class NamingLocalStore(zarr.storage.LocalStore):
    """Zarr's LocalStore whose failed writes name the file (zarr removes its own partial file)."""

    async def set(self, key: str, value) -> None:
        try:
            await super().set(key, value)
        except OSError as e:
            raise named(e, self.root / key) from None

    async def set_if_not_exists(self, key: str, value) -> None:
        try:
            await super().set_if_not_exists(key, value)
        except OSError as e:
            raise named(e, self.root / key) from None


class Location:
    """The root of a store: ``Location("s3://bucket/run/store.zarr")`` or a local path.

    Object names are relative, ``/``-separated (``manifest/00000000.parquet``).
    """

    def __init__(self, path: str | Path):
        s = str(path)
        self.url = s
        self.local: Path | None = None if is_url(s) else Path(s.removeprefix("file://"))
        if self.local is None:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(s)
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = None, str(self.local)

    def __str__(self) -> str:
        return self.url

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def local_path(self, name: str = "") -> Path:
        assert self.local is not None
        return self.local / name if name else self.local

    # ---- Zarr -------------------------------------------------------------------------------

    def zarr_store(self, read_only: bool = False) -> zarr.abc.store.Store:
        """A Zarr store at the root: LocalStore, or FsspecStore on the URL's filesystem."""
        if self.local is not None:
            return NamingLocalStore(self.local, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def writable(self) -> bool:
        """Locally, whether the directory may be written; object stores are opened writable
        (permissions are checked by the server when a write happens)."""
        return self.local is None or os.access(self.local, os.W_OK)

    # ---- objects ----------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        if self.local is not None:
            return self.local_path(name).is_file()
        return self.fs.isfile(self._key(name))

    def read_bytes(self, name: str) -> bytes:
        if self.local is not None:
            return self.local_path(name).read_bytes()
        return self.fs.cat_file(self._key(name))

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """The objects of ``names`` that exist, by name; on an object store the GETs run
        concurrently (a store's manifest is one object per tar: thousands of them)."""
        if self.local is not None:
            return {n: self.local_path(n).read_bytes() for n in names if self.local_path(n).is_file()}
        keys = {self._key(n): n for n in names}
        found = self.fs.cat(list(keys), on_error="omit")
        return {keys[k]: v for k, v in found.items() if k in keys}

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write one object atomically (one PUT; locally a temporary file and a rename)."""
        if self.local is not None:
            path = self.local_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as e:  # a full disk: no half-written temporary file, and the error names the file
                tmp.unlink(missing_ok=True)
                raise named(e, path) from None
        else:
            self.fs.pipe_file(self._key(name), data)

    def remove_prefix(self, name: str) -> None:
        """Remove every object under ``name/`` (nothing if there is none)."""
        if self.local is not None:
            shutil.rmtree(self.local_path(name), ignore_errors=True)
            return
        key = self._key(name)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)
        self.fs.invalidate_cache()

    def sizes(self, name: str) -> int:
        """Total bytes of the objects under ``name/``."""
        if self.local is not None:
            base = self.local_path(name)
            return sum(f.stat().st_size for f in base.rglob("*") if f.is_file()) if base.exists() else 0
        key = self._key(name)
        return int(self.fs.du(key)) if self.fs.exists(key) else 0
