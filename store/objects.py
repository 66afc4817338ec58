"""Where a store lives: a local directory or an object-store URL (``s3://``, ``gs://``, ... via fsspec).

Everything in ``store/`` goes through :class:`Location`, so the store's invariants are written
once, in the semantics both kinds of storage share:

- a write of one object (a file, a Zarr chunk or shard) is atomic: on object stores a single PUT
  is, locally a temporary file and ``os.replace`` make it so. Nothing else relies on rename;
- there are no directories to create: a prefix exists when an object under it does;
- removing a prefix removes the objects under it (and locally the directory);
- "absent" and "could not ask" are different answers: a missing object is ``False`` / left out,
  any other failure of a request (a 503, a refused connection) is retried with backoff
  (:data:`RETRY_DELAYS`) and then raised as one :class:`StoreError` line naming the URL. A store
  that looked absent because one HEAD failed would be planned again over its own data.

``file://`` URLs and plain paths are local. Credentials and endpoints of URLs come from the
usual places: ``AWS_*`` environment variables (``AWS_ENDPOINT_URL`` for a non-AWS S3) or
fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/*.json``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import zarr
import zarr.abc.store
import zarr.storage

from .errors import StoreError

T = TypeVar("T")

# Seconds slept before each retry of a request that failed for another reason than "absent".
RETRY_DELAYS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)

# Temporary names a writer leaves when it is killed mid-write: zarr's LocalStore writes
# ``NAME.<32 hex>.partial`` and renames it, :meth:`Location.write_bytes` ``.NAME.tmpPID``.
TEMP_NAME = re.compile(r"(\.[0-9a-f]{32}\.partial|^\..+\.tmp\d+)$")


class StoreReadOnly(StoreError):
    """A write the store refused: no permission, or a read-only file system."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "no message"
    return f"{type(e).__name__}: {text[:300]}"


def _transport(e: BaseException) -> bool:
    """A failed request (s3fs turns the server's errors into OSError), not a bad answer."""
    module = type(e).__module__.split(".")[0]
    return isinstance(e, (OSError, TimeoutError)) or module in ("botocore", "aiobotocore", "aiohttp", "urllib3")


def _unreachable(e: BaseException) -> bool:
    names = {t.__name__ for t in type(e).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"})


def retried(what: str, call: Callable[[], T]) -> T:
    """``call()``, retried after :data:`RETRY_DELAYS` when it fails for another reason than a
    missing object (``FileNotFoundError``, re-raised at once) or a refused permission; then one
    :class:`StoreError` line: ``WHAT: could not ask the object store (ERROR) after N tries``."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return call()
        except (FileNotFoundError, StoreError):
            raise
        except PermissionError as e:
            raise StoreReadOnly(f"{what}: permission denied ({_one_line(e)})") from None
        except Exception as e:  # noqa: BLE001 - botocore/aiohttp errors share no base class
            if not _transport(e):
                raise  # bad content (a damaged zarr.json, ...): not a request to repeat
            # An endpoint that cannot be reached was already retried by the client (botocore's
            # retries, ~7 s): one line now rather than half a minute of the same.
            if attempt == len(RETRY_DELAYS) or _unreachable(e):
                tries = f"{attempt + 1} tries" if attempt else "1 try"
                raise StoreError(f"{what}: could not ask the object store ({_one_line(e)}) after {tries}") from None
            time.sleep(RETRY_DELAYS[attempt])
    raise AssertionError("unreachable")


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

    def require_writable(self, command: str) -> None:
        """Refuse, with one line, a command that writes into a local store it may not write."""
        if self.local is not None and self.local.exists() and not self.writable():
            raise StoreError(f"{self.url}: the store is read-only (no write permission); {command} writes into it")

    def writable(self) -> bool:
        """Locally, whether the directory may be written; object stores are opened writable
        (permissions are checked by the server when a write happens)."""
        return self.local is None or os.access(self.local, os.W_OK)

    # ---- objects ----------------------------------------------------------------------------

    def url_of(self, name: str) -> str:
        """The URL (or path) of object ``name``, for messages."""
        return f"{self.url.rstrip('/')}/{name}" if name else self.url

    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists: ``False`` only when the store says it is absent (fsspec's
        ``isfile`` also says False when the request failed); other failures raise (see :func:`retried`)."""
        if self.local is not None:
            return self.local_path(name).is_file()
        key = self._key(name)

        def ask() -> bool:
            try:
                # refresh: a cached listing of the folder would answer for objects written since.
                return self.fs.info(key, refresh=True).get("type") == "file"
            except FileNotFoundError:
                return False

        return retried(self.url_of(name), ask)

    def read_bytes(self, name: str) -> bytes:
        """Object ``name``; ``FileNotFoundError`` when absent, a failed request retried, then :class:`StoreError`."""
        if self.local is not None:
            return self.local_path(name).read_bytes()
        return retried(self.url_of(name), lambda: self.fs.cat_file(self._key(name)))

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """The objects of ``names`` that exist, by name; on an object store the GETs run
        concurrently (a store's manifest is one object per tar: thousands of them). Only an
        absent object is left out: a GET that failed otherwise is retried alone, then raised."""
        if self.local is not None:
            return {n: self.local_path(n).read_bytes() for n in names if self.local_path(n).is_file()}
        if not names:
            return {}  # fsspec's cat of no paths raises FileNotFoundError
        keys = {self._key(n): n for n in names}
        found = retried(self.url_of(names[0]), lambda: self.fs.cat(list(keys), on_error="return"))
        out: dict[str, bytes] = {}
        for key, name in keys.items():
            value = found.get(key, FileNotFoundError(key))
            if isinstance(value, BaseException):
                if isinstance(value, FileNotFoundError):
                    continue
                try:
                    value = self.read_bytes(name)
                except FileNotFoundError:
                    continue
            out[name] = value
        return out

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write one object atomically (one PUT; locally a temporary file and a rename)."""
        if self.local is not None:
            path = self.local_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
                tmp.unlink(missing_ok=True)
                raise StoreReadOnly(f"{path}: cannot write ({e.strerror}); is the store read-only?") from None
            except OSError as e:
                tmp.unlink(missing_ok=True)  # no half-written temporary file
                if e.errno == errno.EROFS:
                    raise StoreReadOnly(f"{path}: cannot write ({e.strerror}); is the store read-only?") from None
                raise named(e, path) from None  # a full disk and the like: the error names the file
        else:
            try:
                self.fs.pipe_file(self._key(name), data)
            except PermissionError as e:
                raise StoreReadOnly(f"{self.url_of(name)}: cannot write ({_one_line(e)})") from None

    def remove_prefix(self, name: str) -> None:
        """Remove every object under ``name/`` (nothing if there is none); a removal that fails
        (a read-only store) is one :class:`StoreError` line, not a store left half removed silently."""
        if self.local is not None:
            path = self.local_path(name)
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StoreError(
                    f"{path}: cannot remove ({e.strerror or _one_line(e)}); is the store read-only?"
                ) from None
            return
        key = self._key(name)

        def rm() -> None:
            try:
                self.fs.rm(key, recursive=True)
            except FileNotFoundError:
                pass

        retried(self.url_of(name), rm)
        self.fs.invalidate_cache()

    def bucket_exists(self) -> bool:
        """Object stores: whether the URL's bucket exists (a failed request raises, see :func:`retried`)."""
        bucket = self.root.split("/", 1)[0]

        def ask() -> bool:
            try:
                self.fs.info(bucket, refresh=True)
                return True
            except FileNotFoundError:
                return False

        return retried(f"{self.url}: bucket {bucket}", ask)

    def entries(self, name: str = "") -> list[str]:
        """Names directly under ``name`` (files and sub-folders or prefixes; ``[]`` when there is
        nothing there); ``[name]`` itself when it is a file / an object, not a folder."""
        if self.local is not None:
            path = self.local_path(name)
            if path.is_dir():
                return sorted(p.name for p in path.iterdir())
            return [path.name] if path.exists() or path.is_symlink() else []
        key = self._key(name)

        def ls() -> list[str]:
            try:
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(key, detail=False, refresh=True))
            except FileNotFoundError:
                return []
            finally:
                self.fs.invalidate_cache(key)  # keep no listing that later writes would make stale

        return retried(self.url_of(name), ls)

    def remove_temporaries(self) -> list[str]:
        """Remove the temporary files killed writers left in a local store (zarr's ``*.HEX.partial``,
        ``.NAME.tmpPID``); only names of those patterns, only under the store. Object stores have
        none (a PUT is whole or absent). Returns the removed paths, relative to the store."""
        if self.local is None or not self.local.is_dir():
            return []
        removed = []
        for dirpath, _, files in os.walk(self.local):
            for f in files:
                if TEMP_NAME.search(f):
                    path = Path(dirpath) / f
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    removed.append(str(path.relative_to(self.local)))
        return sorted(removed)

    def sizes(self, name: str) -> int:
        """Total bytes of the objects under ``name/``."""
        if self.local is not None:
            base = self.local_path(name)
            return sum(f.stat().st_size for f in base.rglob("*") if f.is_file()) if base.exists() else 0
        key = self._key(name)
        return int(self.fs.du(key)) if self.fs.exists(key) else 0
