"""The Store interface, the same behaviour on a local disk and on the GCS emulator; the stand-in Hub on both."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from codeparrot.errors import DataError
from codeparrot.hub import StandIn, folder_hash
from codeparrot.storage import ABSENT, Conflict, GCSStore, LocalStore, open_store


def test_write_read_list_and_delete(store, tmp_path) -> None:
    assert store.read("a/b.txt") is None and store.list() == []
    generation = store.write("a/b.txt", b"hello")
    assert store.read("a/b.txt") == (b"hello", generation)
    source = tmp_path / "up.bin"
    source.write_bytes(b"x" * 1000)
    store.upload("a/c/d.bin", source)
    assert [(o.key, o.size) for o in store.list()] == [("a/b.txt", 5), ("a/c/d.bin", 1000)]
    assert [o.key for o in store.list("a/c")] == ["a/c/d.bin"]
    assert [o.key for o in store.child("a").list()] == ["b.txt", "c/d.bin"]
    store.download("a/c/d.bin", tmp_path / "down" / "d.bin")
    assert (tmp_path / "down" / "d.bin").read_bytes() == b"x" * 1000
    store.delete("a/b.txt")
    store.delete("a/b.txt")  # deleting what is gone is fine
    assert not store.exists("a/b.txt") and [o.key for o in store.list()] == ["a/c/d.bin"]


def test_compare_and_swap_on_the_generation(store) -> None:
    first = store.write("ref", b"1", if_generation=ABSENT)
    with pytest.raises(Conflict):
        store.write("ref", b"again", if_generation=ABSENT)  # exists already
    second = store.write("ref", b"2", if_generation=first)
    assert second != first
    with pytest.raises(Conflict, match="changed since it was read"):
        store.write("ref", b"stale", if_generation=first)  # someone moved it in between
    assert store.read("ref") == (b"2", second)


def test_keys_cannot_leave_the_store(store) -> None:
    for key in ("../x", "a/../../x", "/abs", "a//b", "./a"):
        with pytest.raises(DataError, match="not a plain relative name"):
            store.write(key, b"")


def test_open_store_picks_the_backend(tmp_path) -> None:
    assert isinstance(open_store("gs://bucket/prefix"), GCSStore)
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(f"file://{tmp_path}").local_path() == tmp_path
    assert open_store("gs://bucket/prefix").child("k").uri == "gs://bucket/prefix/k"


def test_concurrent_pushes_to_one_stand_in_repo_lose_nothing(store, tmp_path) -> None:
    """Eight pushes at once, half of them the same content: every revision whole, one head, full history."""
    folders = []
    for i in range(8):
        folder = tmp_path / f"rev{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "part.bin").write_bytes(bytes([i % 4]) * 5000)
        (folder / "README.md").write_text(f"revision {i % 4}")
        folders.append(folder)
    hub = StandIn(store)
    results, errors = [], []

    def push(folder: Path) -> None:
        try:
            results.append(hub.push(folder, "dataset", "me/data"))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    revisions = {r.revision for r in results}
    assert len(revisions) == 4 and set(hub.revisions("dataset", "me/data")) == revisions
    for folder in folders:
        assert folder_hash(folder)[:12] in revisions
    head_data, _ = store.read("datasets/me/data/refs/main")
    head = json.loads(head_data)
    assert head["revision"] in revisions
    moves = [head["revision"], *(e["revision"] for e in head["history"])]
    assert set(moves) == revisions, "every head move is in the history"
