"""Exclusive, stale-safe locks on a run folder: one process at a time writes a run's checkpoints and metrics.

Two kinds, one interface (`acquire`, `check`, `release`, or a `with` block):

- `FileLock`: `fcntl.flock` on a file in a local (or NFS) folder. The kernel drops it when the holder
  dies, however it dies, so a stale lock cannot exist. The file holds who took it (host, pid, since),
  for the message a second process gets.
- `LeaseLock`: an object in a `Store` (a `gs://` prefix shared by machines) created only if absent
  (`if_generation_match=0`) and renewed by a heartbeat thread with a generation-matched write. A holder
  that dies stops renewing, and once its lease has run out the next process takes the object over with a
  write matched on the stale generation, so two processes cannot both win. A holder that finds its
  object replaced (it was paused past its lease) has lost the lock; `check()` then raises, and the
  trainer calls it before every checkpoint commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codeparrot.errors import CodeParrotError, ServiceError
from codeparrot.storage import ABSENT, Conflict, Store

log = logging.getLogger(__name__)

# A lease outlives a few missed heartbeats (GCS writes take ~0.1 s, a loaded VM may stall seconds), and is
# short enough that a replacement spot VM, which takes minutes to boot, never waits for it.
LEASE_SECONDS = 60.0
HEARTBEAT_SECONDS = 15.0


class LockHeld(CodeParrotError):
    """Another process holds the lock; the message names it and what to do."""


class LockLost(CodeParrotError):
    """This process's lease ran out and another process took the run over; stop without writing more."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float
    expires: float | None = None

    @classmethod
    def me(cls, expires: float | None = None) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.time(), expires)

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            return cls(str(fields["host"]), int(fields["pid"]), float(fields["since"]), fields.get("expires"))
        except (ValueError, KeyError, TypeError):
            return None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host} (since {since})"

    def dead_here(self) -> bool:
        """Whether this holder was a process of this host that no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class RunLock(ABC):
    """An exclusive lock on `what` (a run folder, a checkpoint prefix) held for a block."""

    what: str

    @abstractmethod
    def acquire(self) -> None:
        """Take the lock now or raise LockHeld naming the holder; never waits."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""

    def check(self) -> None:  # noqa: B027 - a lock the kernel holds cannot be lost: nothing to check
        """Raise LockLost if the lock is no longer this process's."""

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _held(self, holder: Holder | None, extra: str = "") -> LockHeld:
        who = holder.describe() if holder else "another process"
        return LockHeld(
            f"{self.what} is in use by {who}{extra}: two runs on one folder would mix their checkpoints and "
            "metrics; wait for that run to end (or stop it), or pass another output folder"
        )


class FileLock(RunLock):
    """`flock` on `path`, released by the kernel if this process dies."""

    def __init__(self, path: str | os.PathLike[str], what: str | None = None) -> None:
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise self._held(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # the file stays: unlinking a lock file lets two processes lock two inodes
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class LeaseLock(RunLock):
    """An object `key` in `store`, created if absent, renewed every `heartbeat_s`, stale after `lease_s`."""

    def __init__(
        self,
        store: Store,
        key: str = "LOCK",
        *,
        lease_s: float = LEASE_SECONDS,
        heartbeat_s: float = HEARTBEAT_SECONDS,
        what: str | None = None,
    ) -> None:
        if heartbeat_s >= lease_s:
            raise ValueError(f"heartbeat_s {heartbeat_s} must be below lease_s {lease_s}, or the lease lapses between beats")
        self.store, self.key = store, key
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.what = what or store.uri
        self._generation: str | None = None
        self._since = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def _payload(self) -> bytes:
        holder = Holder.me(expires=time.time() + self.lease_s)
        return Holder(holder.host, holder.pid, self._since, holder.expires).encode()

    def acquire(self) -> None:
        self._since = time.time()
        for _ in range(3):  # the object may vanish or change between our write and our read
            try:
                self._generation = self.store.write(self.key, self._payload(), if_generation=ABSENT)
                break
            except Conflict:
                pass
            current = self.store.read(self.key)
            if current is None:
                continue
            data, generation = current
            holder = Holder.parse(data)
            stale = holder is None or (holder.expires or 0) < time.time() or holder.dead_here()
            if not stale:
                assert holder is not None
                left = max(0.0, (holder.expires or 0) - time.time())
                raise self._held(holder, f", its lease runs {left:.0f} s more unless renewed")
            try:
                self._generation = self.store.write(self.key, self._payload(), if_generation=generation)
            except Conflict:
                continue  # someone else took the stale lock first: look again
            log.warning("took over the stale lock of %s (%s)", self.what, holder.describe() if holder else "unreadable")
            break
        else:
            raise self._held(None)
        self._lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        deadline = time.time() + self.lease_s
        while not self._stop.wait(self.heartbeat_s):
            with self._guard:
                if self._generation is None:
                    return
                try:
                    self._generation = self.store.write(self.key, self._payload(), if_generation=self._generation)
                    deadline = time.time() + self.lease_s
                except Conflict:
                    self._lost = "another process took it over after this one missed its lease"
                    return
                except ServiceError as exc:
                    log.warning("could not renew the lock of %s: %s", self.what, exc)
                    if time.time() > deadline:
                        self._lost = f"its lease ran out while renewing failed ({exc})"
                        return

    def check(self) -> None:
        if self._lost:
            raise LockLost(
                f"lost the lock of {self.what}: {self._lost}; this process stops without writing more (the "
                "other run continues)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
            self._thread = None
        with self._guard:
            generation, self._generation = self._generation, None
        if generation is None or self._lost:
            return
        try:
            current = self.store.read(self.key)
            if current is not None and current[1] == generation:
                self.store.delete(self.key)
        except ServiceError as exc:  # the lease runs out by itself
            log.warning("could not release the lock of %s (it expires in %.0f s): %s", self.what, self.lease_s, exc)


def lock_for(location: str | os.PathLike[str], **lease: Any) -> RunLock:
    """A LeaseLock on `gs://` prefixes, a FileLock (`.lock`) in local folders."""
    text = os.fspath(location)
    if text.startswith("gs://"):
        from codeparrot.storage import open_store

        return LeaseLock(open_store(text), what=text, **lease)
    from codeparrot.storage import file_uri_path

    folder = Path(file_uri_path(text))
    return FileLock(folder / ".lock", what=str(folder))
