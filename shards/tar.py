"""The shard reader: DataComp / img2dataset webdataset tars, as both phases read them.

A tar holds samples as contiguous members ``KEY.jpg``, ``KEY.txt``, ``KEY.json``. This module
streams them in member order and records, for every sample, where its image bytes live
(``offset``, ``size`` inside the tar), so the trainer can fetch any row's image again by
random access (:class:`TarFiles`, :func:`read_member`) and decode exactly the bytes featurize
decoded.

Nothing stops a shard: a bad image is a sample with a ``reason``; a tar that ends early yields
the samples before the break and sets :attr:`ShardReader.truncated`. Member names are only ever
used as dictionary keys, never as filesystem paths.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from radio.errors import RadioError

from .images import IMAGE_SUFFIXES, ImageLimits, decode_image


class ShardError(RadioError):
    """A shard list or tar that cannot be used at all."""


@dataclass(frozen=True)
class MemberRef:
    """Where a member's bytes live inside its tar (uncompressed tars only)."""

    name: str
    offset: int
    size: int


@dataclass
class RawSample:
    """One sample's members as read from the tar, before decoding."""

    key: str
    ordinal: int  # position of the sample in the tar, 0-based
    members: dict[str, bytes] = field(default_factory=dict)  # suffix -> bytes
    refs: dict[str, MemberRef] = field(default_factory=dict)  # suffix -> location
    complete: bool = True  # False when the tar ended inside this sample

    @property
    def image_suffix(self) -> str | None:
        return next((s for s in IMAGE_SUFFIXES if s in self.refs), None)


@dataclass(frozen=True)
class Sample:
    """A decoded sample. ``pixels`` is ``[H, W, 3] uint8`` RGB, or None with a ``reason``."""

    key: str
    ordinal: int
    uid: str
    caption: str
    meta: dict[str, Any]
    image: MemberRef | None
    pixels: np.ndarray | None
    reason: str | None

    @property
    def valid(self) -> bool:
        return self.reason is None


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def open_binary(path: str) -> IO[bytes]:
    """Open a local path or an fsspec URL for binary reading."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path.removeprefix("file://"), "rb")


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(pattern: str) -> list[str]:
    """webdataset-style ranges: ``shards/{00000000..00000003}.tar`` → four names."""
    m = _BRACES.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out: list[str] = []
    for i in range(int(lo), int(hi) + 1):
        out += _expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end() :])
    return out


def expand_shards(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Tar paths from paths, folders (their ``*.tar``), globs, brace ranges or fsspec URLs, in a
    stable sorted order.

    Raises :class:`ShardError` naming a pattern that matches nothing.
    """
    found: list[str] = []
    for pattern in patterns:
        for p in _expand_braces(pattern):
            if is_url(p):
                import fsspec

                fs, _, paths = fsspec.get_fs_token_paths(p)
                if any(c in p for c in "*?["):
                    matches = sorted(fs.unstrip_protocol(x) for x in paths)
                elif not p.endswith(".tar") and _url_is_dir(fs, paths[0]):  # a folder of tars
                    matches = sorted(fs.unstrip_protocol(x) for x in fs.glob(paths[0].rstrip("/") + "/*.tar"))
                else:
                    matches = [p]
            elif any(c in p for c in "*?["):
                matches = sorted(glob.glob(p))
            elif os.path.isdir(p.removeprefix("file://")):  # a folder: its *.tar, as img2dataset writes it
                matches = sorted(glob.glob(os.path.join(glob.escape(p.removeprefix("file://")), "*.tar")))
                if not matches:
                    raise ShardError(f"data.shards: folder {p!r} holds no *.tar")
            else:
                matches = [p] if _exists(p) else []
            if not matches:
                raise ShardError(f"data.shards: {p!r} matches no file")
            found += [m for m in matches if m.endswith(".tar")] or matches
    # Keep first occurrence: a tar named twice would be featurized twice.
    return list(dict.fromkeys(found))


def _exists(path: str) -> bool:
    return os.path.isfile(path.removeprefix("file://"))


def _url_is_dir(fs, path: str) -> bool:
    try:
        return bool(fs.isdir(path))
    except Exception:  # a store that cannot answer (permissions, no listing): take it as a file
        return False


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/000000000001.jpg`` → (``dir/000000000001``, ``jpg``): key up to the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, suffix.lower() if dot else ""


def _is_sample_member(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """(key, suffix) of a member that belongs to a sample, else None (dirs, ``__meta__``, no suffix)."""
    if not info.isfile():
        return None
    key, suffix = split_member_name(info.name)
    if not suffix or key.rpartition("/")[2].startswith("__"):
        return None
    return key, suffix


def count_samples(path: str) -> tuple[int, str | None]:
    """Samples in a tar, from its headers alone (no image data read), and an error if it ends early.

    Groups members exactly as :class:`ShardReader` does, so the count is never below what the
    reader yields; featurize plans row ranges from it before any worker starts.
    """
    n, last, error = 0, None, None
    with open_binary(path) as f:
        try:
            # Seeking mode skips over member data on local files; URLs stream.
            with tarfile.open(fileobj=f, mode="r:" if f.seekable() else "r|") as tf:
                for info in tf:
                    member = _is_sample_member(info)
                    if member and member[0] != last:
                        n, last = n + 1, member[0]
        except (tarfile.TarError, EOFError, OSError) as e:
            error = f"{type(e).__name__}: {e}"
    return n, error


class ShardReader:
    """Stream the samples of one tar in member order.

    After iteration, :attr:`truncated` says whether the tar ended early and :attr:`error`
    holds the reader's message for it.
    """

    def __init__(self, path: str, limits: ImageLimits = ImageLimits()):
        self.path = path
        self.limits = limits
        self.truncated = False
        self.error: str | None = None

    def raw_samples(self) -> Iterator[RawSample]:
        """Samples with their member bytes, undecoded."""
        self.truncated, self.error = False, None
        current: RawSample | None = None
        ordinal = 0
        with open_binary(self.path) as f:
            try:
                # Stream mode ("r|"): one pass, works on non-seekable fsspec streams too.
                with tarfile.open(fileobj=f, mode="r|") as tf:
                    for info in tf:
                        member = _is_sample_member(info)
                        if member is None:
                            continue
                        key, suffix = member
                        if current is None or key != current.key:
                            if current is not None:
                                yield current
                                ordinal += 1
                            current = RawSample(key=key, ordinal=ordinal)
                        if suffix in current.refs:
                            continue  # duplicate suffix within a sample: keep the first
                        current.refs[suffix] = MemberRef(info.name, info.offset_data, info.size)
                        current.complete = False  # until its bytes are fully read
                        data = tf.extractfile(info).read()
                        if len(data) != info.size:
                            raise tarfile.ReadError("unexpected end of data")
                        current.members[suffix] = data
                        current.complete = True
                self._check_end(f)
            except (tarfile.TarError, EOFError, OSError) as e:
                self.truncated = True
                self.error = f"{type(e).__name__}: {e}"
        if current is not None:
            yield current

    def _check_end(self, f: IO[bytes]) -> None:
        # tarfile stops quietly at EOF even when the end-of-archive blocks are missing, which is
        # what a tar cut at a member boundary looks like. A well-formed tar ends in zero blocks.
        if f.seekable():
            end = f.seek(0, 2)
            f.seek(max(0, end - 1024))
            tail = f.read(1024)
            if len(tail) < 1024 or tail.strip(b"\0"):
                raise tarfile.ReadError("missing end-of-archive blocks")

    def __iter__(self) -> Iterator[Sample]:
        for raw in self.raw_samples():
            yield decode_sample(raw, self.limits)


def decode_sample(raw: RawSample, limits: ImageLimits = ImageLimits()) -> Sample:
    """Decode a raw sample's image and metadata; failures become the sample's ``reason``."""
    meta: dict[str, Any] = {}
    if "json" in raw.members:
        try:
            loaded = json.loads(raw.members["json"])
            meta = loaded if isinstance(loaded, dict) else {}
        except (ValueError, UnicodeDecodeError):
            meta = {}
    caption = raw.members.get("txt", b"").decode("utf-8", errors="replace")
    suffix = raw.image_suffix
    ref = raw.refs.get(suffix) if suffix else None
    if suffix is not None and suffix not in raw.members:
        pixels, reason = None, "truncated_tar"
    else:
        decoded = decode_image(raw.members.get(suffix) if suffix else None, limits)
        pixels, reason = decoded.pixels, decoded.reason
    return Sample(
        key=raw.key,
        ordinal=raw.ordinal,
        uid=str(meta.get("uid", "")),
        caption=caption or str(meta.get("caption", "")),
        meta=meta,
        image=ref,
        pixels=pixels,
        reason=reason,
    )


class TarFiles:
    """Random access to members of many tars: the one tar reader for a row's image bytes.

    Open handles are cached (at most ``max_open``, least recently used closed first), so a
    member is one positioned read instead of an open + seek + read + close. Local files are read
    with ``os.pread`` (no shared file position, safe across threads). A URL's file object does no
    read-ahead caching, so ``read(offset, size)`` is exactly one ranged GET of the member's bytes;
    opening a remote file costs a HEAD request, which the cache pays once per tar and process.
    Handles never cross a process boundary: pickling drops them (spawned DataLoader workers), and
    a forked child forgets the ones it inherited (sockets and event loops must not be shared).
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._pid = os.getpid()
        self._handles: OrderedDict[str, int | IO[bytes]] = OrderedDict()

    def read(self, path: str, offset: int, size: int) -> bytes:
        """The ``size`` bytes at ``offset`` of ``path``; :class:`ShardError` when the tar is cut short there."""
        handle = self._handle(path)
        if isinstance(handle, int):
            data = os.pread(handle, size, offset)
        else:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise ShardError(f"{path}: member at offset {offset} is cut short ({len(data)} of {size} bytes)")
        return data

    def _handle(self, path: str) -> int | IO[bytes]:
        if self._pid != os.getpid():  # inherited from the parent: not ours to use (or close)
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(path)
        if handle is not None:
            self._handles.move_to_end(path)
            return handle
        if is_url(path):
            import fsspec

            fs, p = fsspec.core.url_to_fs(path)
            handle = fs.open(p, "rb", cache_type="none")  # no read-ahead: one ranged GET per read
        else:
            handle = os.open(path.removeprefix("file://"), os.O_RDONLY)
        self._handles[path] = handle
        if len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            _close(old)
        return handle

    def close(self) -> None:
        while self._handles:
            _close(self._handles.popitem()[1])

    def __getstate__(self) -> dict:  # handles never cross a fork/spawn boundary
        return {"max_open": self.max_open, "_pid": 0, "_handles": OrderedDict()}


def _close(handle: int | IO[bytes]) -> None:
    if isinstance(handle, int):
        os.close(handle)
    else:
        handle.close()


_TARS = TarFiles()


def read_member(path: str, offset: int, size: int) -> bytes:
    """The bytes of one member, by its recorded location: one positioned read through this
    process's :class:`TarFiles` (local file or object-store URL)."""
    return _TARS.read(path, offset, size)


def read_image(path: str, offset: int, size: int, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode a row's image again by its recorded location: ``[H, W, 3] uint8``."""
    decoded = decode_image(read_member(path, offset, size), limits)
    if decoded.pixels is None:
        raise ShardError(f"{path}: image at offset {offset} is {decoded.reason}")
    return decoded.pixels
