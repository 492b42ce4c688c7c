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


# ---------------------------------------------------------------------------- integrity and fallback


def _write_verified(store: ckpt.CheckpointStore, step: int) -> None:
    """A checkpoint as the trainer writes it: torch files, and a marker with each file's size and sha256."""
    folder = store.staging(step)
    names = [*ckpt.ESSENTIAL_FILES, ckpt.rng_file(0)]
    for name in names:
        if name.endswith(".json"):
            (folder / name).write_text(f'{{"step": {step}}}')
        else:
            torch.save({"step": step, "w": torch.arange(2000, dtype=torch.float32)}, folder / name)
    digests = {name: ckpt.file_digest(folder / name) for name in names}
    store.upload(step, names)
    store.commit(step, {"step": step, "files": digests})


def test_marker_records_sizes_and_checksums_that_verify_catches(tmp_path) -> None:
    store = ckpt.LocalStore(tmp_path / "ck")
    _write_verified(store, 10)
    folder = tmp_path / "ck" / "step-00000010"
    assert ckpt.verify(folder) is None
    files = ckpt.read_meta(folder)["files"]
    assert files["model.pt"]["size"] == (folder / "model.pt").stat().st_size and len(files["model.pt"]["sha256"]) == 64

    with open(folder / "optimizer.pt", "r+b") as fh:  # same size, one byte flipped
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert "optimizer.pt does not match its checksum" in ckpt.verify(folder)
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:1000])
    assert ckpt.verify(folder).startswith("model.pt is 1000 bytes, its marker says")
    (folder / "state.json").unlink()
    assert ckpt.verify(folder) == "model.pt is 1000 bytes, its marker says " + str(files["model.pt"]["size"])


def test_legacy_markers_without_checksums_are_checked_by_file_structure(tmp_path) -> None:
    folder = tmp_path / "step-00000010"
    folder.mkdir()
    for name in ckpt.ESSENTIAL_FILES:
        if name.endswith(".pt"):
            torch.save({"w": torch.ones(500)}, folder / name)
        else:
            (folder / name).write_text("{}")
    (folder / ckpt.MARKER).write_text('{"step": 10, "files": ["model.pt", "optimizer.pt", "state.json"]}')
    assert ckpt.verify(folder) is None
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:1000])
    assert "model.pt is damaged" in ckpt.verify(folder)


def test_resume_point_falls_back_past_a_damaged_newest_and_moves_it_aside(tmp_path) -> None:
    store = ckpt.LocalStore(tmp_path / "ck")
    for step in (10, 20, 30):
        _write_verified(store, step)
    model = tmp_path / "ck" / "step-00000030" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])  # truncate -s 1000
    point = ckpt.resume_point(store)
    assert point.step == 20 and point.folder == tmp_path / "ck" / "step-00000020"
    assert store.committed_steps() == [10, 20] and store.latest() == 20
    [aside] = point.skipped
    assert Path(aside).name.startswith("step-00000030.corrupt-") and (Path(aside) / "model.pt").stat().st_size == 1000
    _write_verified(store, 30)  # the run writes step 30 again; the damaged copy stays aside
    assert store.committed_steps() == [10, 20, 30] and Path(aside).is_dir()


def test_no_valid_checkpoint_refuses_to_start_over_and_deletes_nothing(tmp_path) -> None:
    import pytest

    store = ckpt.LocalStore(tmp_path / "ck")
    for step in (10, 20):
        _write_verified(store, step)
    for step in (10, 20):
        (tmp_path / "ck" / ckpt.step_name(step) / ckpt.MARKER).unlink()  # every marker deleted
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "ck").rglob("*"))
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000010: no COMMITTED marker.*nothing was deleted.*--restart"):
        ckpt.resume_point(store)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "ck").rglob("*")) == before

    _write_verified(store, 30)
    (tmp_path / "ck" / "step-00000030" / "model.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000030: model.pt is 0 bytes"):
        ckpt.resume_point(store)

    point = ckpt.resume_point(store, restart=True)
    assert point.step is None and len(point.skipped) == 3
    assert store.committed_steps() == [] and store.unmarked_complete() == []
    assert sorted(p.name.split(".corrupt-")[0] for p in (tmp_path / "ck").iterdir()) == [
        "step-00000010", "step-00000020", "step-00000030",
    ]  # fmt: skip


def test_gcs_fallback_moves_the_damaged_checkpoint_aside_and_a_new_commit_of_that_step_counts(gcs_bucket, tmp_path) -> None:
    store = ckpt.GCSStore("gs://ckpt-bucket/runs/verify", scratch=tmp_path / "scratch", client=gcs_bucket)
    for step in (1, 2):
        _write_verified(store, step)
    bucket = gcs_bucket.bucket("ckpt-bucket")
    blob = bucket.blob("runs/verify/step-00000002/model.pt")
    blob.upload_from_string(blob.download_as_bytes()[:1000])
    point = ckpt.resume_point(store)
    assert point.step == 1 and store.committed_steps() == [1]
    assert point.skipped[0].startswith("gs://ckpt-bucket/runs/verify/step-00000002.corrupt-")
    _write_verified(store, 2)  # committed again after the damaged one was moved: the marker is new
    assert store.committed_steps() == [1, 2]
    assert ckpt.verify(store.fetch(2)) is None  # not the damaged copy cached in scratch before


def test_a_full_disk_while_saving_names_the_folder(tmp_path) -> None:
    import pytest

    target = tmp_path / "ck"
    target.mkdir()
    (target / "model.pt").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(ckpt.DiskFull, match=rf"no space left on the device writing model.pt to {target}.*--checkpoint-dir"):
        ckpt.save_file(torch.save, {"w": torch.ones(100_000)}, target / "model.pt")


def test_restart_never_discards_a_valid_checkpoint(tmp_path) -> None:
    # A preempted run retried with restart (the flow passes it on every retry) must still resume.
    store = ckpt.LocalStore(tmp_path / "ck")
    for step in (10, 20):
        _write_verified(store, step)
    assert ckpt.resume_point(store, restart=True).step == 20
    assert store.committed_steps() == [10, 20]
