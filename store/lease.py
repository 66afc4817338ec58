"""Leases: who is using a store, so that writers never delete or rewrite what a run is reading.

A lease is one JSON object under ``leases/`` of the store, one per holder, written whole (one
PUT; locally a temporary file and a rename) and renewed by a background thread::

    leases/writer-HOST-PID-TOKEN.json   {"kind": "writer", "holder": "featurize", "host", "pid",
                                         "since", "expires", "token", "destructive": false}
    leases/reader-HOST-PID-TOKEN.json   the same for a reader (a training run)

- a **writer** (featurize, fit-phis, store compact) is exclusive: it refuses while another live
  writer holds the store (``wait``: it polls until that one is gone);
- a **destructive** writer (featurize --overwrite, compact --drop-raw / --overwrite, fit-phis,
  which replaces normalizers) also refuses while any live reader lease exists;
- a **reader** (distill) is shared; it refuses only while a destructive writer runs.

A lease is stale, and ignored, once its ``expires`` has passed (a killed holder on another host
blocks for at most :data:`TTL` seconds) or at once when its holder ran on this host and its pid
is dead. Two writers starting together both write their object, then list again: the one that
sees the other give way (see :meth:`Lease._raced`); exactly one keeps the store.

Leases are taken at the command / job entry points only (:func:`take`), never by Ray workers
or library code. They are advisory: a tool that ignores them is not stopped.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from .objects import Location, StoreError, StoreReadOnly

PREFIX = "leases"
TTL = 120.0  # seconds a lease lives without renewal; renewed every TTL / 4
POLL = 5.0  # seconds between two looks at the leases while waiting for a writer
SETTLE = 1.0  # seconds a writer that raced a younger one waits for it to give way


class LeaseHeld(StoreError):
    """The store is held by another run (a writer, or a reader that a destructive writer must not disturb)."""


@dataclass(frozen=True)
class LeaseInfo:
    """One lease object's contents."""

    kind: str  # "writer" or "reader"
    holder: str  # the command: featurize, fit-phis, store compact, distill
    host: str
    pid: int
    since: float  # unix seconds
    expires: float
    token: str
    destructive: bool = False

    @property
    def name(self) -> str:
        return f"{PREFIX}/{self.kind}-{self.host}-{self.pid}-{self.token}.json"

    def live(self, now: float | None = None) -> bool:
        """Not expired, and (on this host) its process still runs."""
        if (now or time.time()) >= self.expires:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)

    def describe(self) -> str:
        what = f"{self.holder} ({self.kind}{', destructive' if self.destructive else ''})"
        return (
            f"{what} on host {self.host}, pid {self.pid}, since {_utc(self.since)}, lease expires {_utc(self.expires)}"
        )


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a killed holder's lease, or temporary file, is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def leases(location: Location) -> list[LeaseInfo]:
    """Every lease object of the store, live or not (a damaged one is skipped: it holds nothing)."""
    names = [f"{PREFIX}/{n}" for n in location.entries(PREFIX) if n.endswith(".json")]
    out = []
    for data in location.read_many(names).values():
        try:
            out.append(LeaseInfo(**json.loads(data)))
        except (TypeError, ValueError):
            continue
    return out


class Lease:
    """A lease on the store at ``path``, held inside ``with`` (renewed in a background thread)."""

    def __init__(
        self,
        path: str | Path | Location,
        kind: str,
        holder: str,
        *,
        destructive: bool = False,
        wait: bool = False,
        ttl: float = TTL,
    ):
        if kind not in ("reader", "writer"):
            raise ValueError(f"lease kind {kind!r}")
        self.location = path if isinstance(path, Location) else Location(path)
        self.kind, self.holder, self.destructive, self.wait, self.ttl = kind, holder, destructive, wait, ttl
        self.info: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking and giving back -------------------------------------------------------------

    def acquire(self) -> Lease:
        """Write this lease after checking nobody holds the store against it; raises :class:`LeaseHeld`
        (with ``wait``, a writer waits for another writer to finish instead)."""
        while True:
            found = leases(self.location)
            self._remove_stale(found)
            blocker = self._blocker(found)
            if blocker is None:
                now = time.time()
                self.info = LeaseInfo(
                    self.kind,
                    self.holder,
                    socket.gethostname(),
                    os.getpid(),
                    now,
                    now + self.ttl,
                    uuid.uuid4().hex[:12],
                    self.destructive,
                )
                try:
                    self._write()
                except StoreReadOnly:
                    if self.kind == "writer":
                        raise
                    self.info = None  # a reader of a read-only store (a shared copy): no writer can change it
                    return self
                blocker = self._raced()
                if blocker is None:
                    break
                self._remove()  # the other one keeps the store
                self.info = None
            if not (self.wait and blocker.kind == "writer"):
                raise LeaseHeld(self._refusal(blocker))
            time.sleep(min(POLL, max(0.05, blocker.expires - time.time())))
        self._thread = threading.Thread(target=self._renew_loop, name=f"radio-lease-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.info is not None:
            try:
                self._remove()
            except (OSError, StoreError):
                pass  # left behind, it expires after TTL (and is stale at once on this host)
            self.info = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # ---- internals --------------------------------------------------------------------------

    def _raced(self) -> LeaseInfo | None:
        """After writing our lease: one that conflicts with it and was written meanwhile, or None.

        An older one wins at once. A younger one gives way when it sees ours; if it is still
        there after :data:`SETTLE` seconds, it listed before we wrote and went ahead: we give way.
        """
        assert self.info is not None
        mine = (self.info.since, self.info.token)
        others = [x for x in leases(self.location) if x.token != self.info.token]
        blocker = self._blocker(others)
        if blocker is None or (blocker.since, blocker.token) < mine:
            return blocker
        time.sleep(SETTLE)
        return self._blocker([x for x in leases(self.location) if x.token != self.info.token])

    def _remove_stale(self, found: list[LeaseInfo]) -> None:
        """Writers tidy the lease objects of expired or dead holders (they hold nothing)."""
        if self.kind != "writer":
            return
        for x in found:
            if not x.live():
                try:
                    Lease._remove_name(self.location, x.name)
                except (OSError, StoreError):
                    pass

    def _blocker(self, found: list[LeaseInfo]) -> LeaseInfo | None:
        """The oldest live lease that stops this one, or None."""
        now = time.time()
        for other in sorted((x for x in found if x.live(now)), key=lambda x: (x.since, x.token)):
            if self.kind == "writer" and other.kind == "writer":
                return other
            if self.kind == "writer" and self.destructive and other.kind == "reader":
                return other
            if self.kind == "reader" and other.kind == "writer" and other.destructive:
                return other
        return None

    def _refusal(self, other: LeaseInfo) -> str:
        where = self.location.url
        if other.kind == "reader":
            return (
                f"{where}: in use by {other.describe()}; {self.holder} would delete or rewrite what it reads: "
                "stop that run or wait for it to finish"
            )
        if self.kind == "reader":
            return f"{where}: {other.describe()} is deleting or rewriting the store; wait for it to finish"
        hint = "; pass --wait to wait for it" if self.holder == "featurize" else "; wait for it to finish"
        return f"{where}: held by {other.describe()}{hint}"

    def _write(self) -> None:
        assert self.info is not None
        self.location.write_bytes(self.info.name, json.dumps(asdict(self.info)).encode())

    def _remove(self) -> None:
        assert self.info is not None
        Lease._remove_name(self.location, self.info.name)

    @staticmethod
    def _remove_name(location: Location, name: str) -> None:
        if location.local is not None:
            location.local_path(name).unlink(missing_ok=True)
        else:
            location.remove_prefix(name)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            assert self.info is not None
            now = time.time()
            self.info = LeaseInfo(**(asdict(self.info) | {"expires": now + self.ttl}))
            try:
                self._write()
            except (OSError, StoreError):
                pass  # the next renewal tries again; the lease lives TTL, not TTL / 4


def take(path: str | Path, kind: str, holder: str, *, destructive: bool = False, wait: bool = False) -> Lease:
    """A :class:`Lease` to hold with ``with``: the entry points' one call. A reader on a store it
    cannot write (a read-only copy or bucket) holds nothing: no writer can change that store either."""
    lease = Lease(path, kind, holder, destructive=destructive, wait=wait)
    if kind == "reader" and (not lease.location.writable() or not lease.location.exists("zarr.json")):
        return _NoLease(lease.location)  # (not a store: the reader's own open says so, in one line)
    return lease


class _NoLease(Lease):
    def __init__(self, location: Location):
        super().__init__(location, "reader", "-")

    def acquire(self) -> Lease:
        return self

    def release(self) -> None:
        pass


__all__ = ["TTL", "Lease", "LeaseHeld", "LeaseInfo", "leases", "pid_alive", "take"]
