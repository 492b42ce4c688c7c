from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from codeparrot.train import checkpoint as ckpt


def _write(store: ckpt.CheckpointStore, step: int, payload: str = "x") -> None:
    folder = store.staging(step)
    (folder / "model.pt").write_text(f"{payload}-{step}")
    (folder / ckpt.rng_file(0)).write_text("rng")
    store.upload(step, ["model.pt", ckpt.rng_file(0)])
    store.commit(step, {"step": step})


def test_local_commit_renames_then_writes_the_marker(tmp_path) -> None:
    store = ckpt.LocalStore(tmp_path / "ck")
    _write(store, 30)
    assert store.committed_steps() == [30]
    final = tmp_path / "ck" / "step-00000030"
    assert (final / ckpt.MARKER).is_file() and (final / "model.pt").read_text() == "x-30"
    assert not (tmp_path / "ck" / "step-00000030.tmp").exists()
    assert ckpt.read_meta(final) == {"step": 30}


def test_half_written_checkpoints_are_ignored_and_discarded(tmp_path) -> None:
    store = ckpt.LocalStore(tmp_path / "ck")
    _write(store, 10)
    staged = store.staging(20)  # killed while writing files
    (staged / "model.pt").write_text("partial")
    renamed = tmp_path / "ck" / "step-00000030"  # killed between rename and marker
    renamed.mkdir()
    (renamed / "model.pt").write_text("partial")
    assert store.committed_steps() == [10]
    assert store.latest() == 10
    removed = store.discard_partial()
    assert len(removed) == 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000010"]


def test_prune_keeps_the_newest(tmp_path) -> None:
    store = ckpt.LocalStore(tmp_path / "ck")
    for step in (10, 20, 30, 40):
        _write(store, step)
    assert store.prune(2) == [10, 20]
    assert store.committed_steps() == [30, 40]


def test_recommitting_a_step_replaces_an_uncommitted_folder(tmp_path) -> None:
    store = ckpt.LocalStore(tmp_path / "ck")
    stale = tmp_path / "ck" / "step-00000010"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("old")
    _write(store, 10, payload="new")
    assert not (stale / "junk").exists() and (stale / "model.pt").read_text() == "new-10"


def test_rng_states_round_trip_through_torch_save(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ckpt.capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_gcs_store_commits_marker_last_and_once(gcs_bucket, tmp_path) -> None:
    store = ckpt.GCSStore("gs://ckpt-bucket/runs/a", scratch=tmp_path / "scratch", client=gcs_bucket)
    folder = store.staging(5)
    (folder / "model.pt").write_text("weights")
    store.upload(5, ["model.pt"])
    assert store.committed_steps() == []  # files without a marker are not a checkpoint
    store.commit(5, {"step": 5})
    assert store.committed_steps() == [5]
    marker = gcs_bucket.bucket("ckpt-bucket").blob("runs/a/step-00000005/COMMITTED")
    marker.reload()
    generation = marker.generation
    store.commit(5, {"step": 5, "again": True})  # if_generation_match=0: the first commit stays
    marker.reload()
    assert marker.generation == generation
    local = store.fetch(5)
    assert (local / "model.pt").read_text() == "weights" and (local / ckpt.MARKER).is_file()


def test_gcs_store_discards_partial_and_prunes(gcs_bucket, tmp_path) -> None:
    store = ckpt.GCSStore("gs://ckpt-bucket/runs/b", scratch=tmp_path / "scratch", client=gcs_bucket)
    for step in (1, 2, 3):
        _write(store, step)
    folder = store.staging(4)
    (folder / "model.pt").write_text("half")
    store.upload(4, ["model.pt"])  # preempted before the marker
    assert store.latest() == 3
    assert store.discard_partial() == ["gs://ckpt-bucket/runs/b/step-00000004"]
    assert store.prune(2) == [1]
    names = sorted(b.name for b in gcs_bucket.list_blobs("ckpt-bucket", prefix="runs/b/"))
    assert names == [
        f"runs/b/step-0000000{s}/{f}" for s in (2, 3) for f in (ckpt.MARKER, "model.pt", ckpt.rng_file(0))
    ]


def test_open_store_picks_by_scheme(tmp_path) -> None:
    assert isinstance(ckpt.open_store(tmp_path / "x", scratch=tmp_path), ckpt.LocalStore)
    store = ckpt.open_store("gs://bucket/p", scratch=tmp_path / "s")
    assert isinstance(store, ckpt.GCSStore) and store.describe(3) == "gs://bucket/p/step-00000003"
    shutil.rmtree(tmp_path / "s")
    assert not Path(tmp_path / "s").exists()
