"""Run locks: a second holder fails at once naming the first; a dead holder never blocks; a lost lease is noticed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from codeparrot.locks import FileLock, Holder, LeaseLock, LockHeld, LockLost, lock_for

HOLD = """
import sys, time
from codeparrot.locks import lock_for
with lock_for(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(location: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, location], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_fails_at_once_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path) -> None:
    run = tmp_path / "run"
    proc = _holder_process(str(run))
    try:
        t0 = time.monotonic()
        with pytest.raises(LockHeld, match=rf"{run} is in use by pid {proc.pid} on host {socket.gethostname()} \(since "):
            lock_for(run).acquire()
        assert time.monotonic() - t0 < 1  # never waits
    finally:
        proc.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        proc.wait()
    with lock_for(run) as lock:
        assert isinstance(lock, FileLock)
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert (run / ".lock").read_text() == ""  # released: no holder named any more


def test_a_lease_excludes_a_second_holder_and_is_released(store) -> None:
    first = LeaseLock(store, lease_s=30, heartbeat_s=5, what="gs://b/run")
    first.acquire()
    try:
        with pytest.raises(LockHeld, match=rf"gs://b/run is in use by pid {os.getpid()} .*lease runs \d+ s more"):
            LeaseLock(store, lease_s=30, heartbeat_s=5, what="gs://b/run").acquire()
    finally:
        first.release()
    assert not store.exists("LOCK")
    with LeaseLock(store, lease_s=30, heartbeat_s=5):
        assert store.exists("LOCK")


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it_lost(store) -> None:
    old = LeaseLock(store, lease_s=1.0, heartbeat_s=0.2)
    old.acquire()
    old._stop.set()  # the holder stalls: no more heartbeats (a paused VM)
    old._thread.join()
    payload = json.loads(store.read("LOCK")[0])
    assert payload["expires"] <= time.time() + 1.0
    time.sleep(1.2)
    new = LeaseLock(store, lease_s=30, heartbeat_s=5)
    new.acquire()  # stale: taken over with a generation-matched write
    try:
        # The holder wakes up: its next renewal is matched on a generation that is gone, so it learns it lost.
        old._stop.clear()
        old._thread = threading.Thread(target=old._beat)
        old._thread.start()
        old._thread.join(timeout=5)
        with pytest.raises(LockLost, match="another process took it over"):
            old.check()
        new.check()
        old.release()  # must not delete the new holder's lock
        assert Holder.parse(store.read("LOCK")[0]).since == new._since
    finally:
        new.release()


def test_heartbeats_keep_a_short_lease_alive(store) -> None:
    lock = LeaseLock(store, lease_s=1.0, heartbeat_s=0.2)
    with lock:
        time.sleep(1.5)
        with pytest.raises(LockHeld):
            LeaseLock(store, lease_s=1.0, heartbeat_s=0.2).acquire()
        lock.check()


def test_a_dead_holder_on_this_host_is_stale_at_once(store) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    store.write("LOCK", Holder(socket.gethostname(), pid, time.time(), time.time() + 600).encode())
    with LeaseLock(store, lease_s=30, heartbeat_s=5):
        assert Holder.parse(store.read("LOCK")[0]).pid == os.getpid()
