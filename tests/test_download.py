import gzip
import os
import threading
import time
from pathlib import Path

import pytest
from google.cloud import storage

from codeparrot.download import DownloadConfig, download, file_crc32c, safe_local_path
from codeparrot.errors import DataError
from codeparrot.export import ExportResult, ShardObject
from codeparrot.gcp import storage_client


def upload_shards(gcp, bucket: str, prefix: str, n: int, size: int = 64 * 1024) -> dict[str, bytes]:
    client = storage_client(gcp)
    b = client.lookup_bucket(bucket) or client.create_bucket(bucket)
    payloads = {}
    for i in range(n):
        data = gzip.compress(os.urandom(size), mtime=0)
        name = f"{prefix}/file-{i:012d}.json.gz"
        b.blob(name).upload_from_string(data)
        payloads[name] = data
    return payloads


def local_bytes(result) -> dict[str, bytes]:
    return {Path(f.path).name: Path(f.path).read_bytes() for f in result.files}


def test_downloads_verify_and_a_rerun_resumes_only_what_is_missing_or_corrupt(gcp, tmp_path):
    payloads = upload_shards(gcp, "dl-test", "resume", 5)
    cfg = DownloadConfig(cache_dir=tmp_path, workers=3)
    first = download("gs://dl-test/resume", cfg, gcp, progress=False)
    assert first.downloaded == 5 and first.skipped == 0
    assert local_bytes(first) == {n.rsplit("/", 1)[1]: d for n, d in payloads.items()}

    again = download("gs://dl-test/resume/", cfg, gcp, progress=False)
    assert again.downloaded == 0 and again.skipped == 5 and again.identity() == first.identity()

    files = [Path(f.path) for f in first.files]
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:100])  # truncated by an earlier crash
    files[2].write_bytes(b"x" + files[2].read_bytes()[1:])  # same size, corrupt
    healed = download("gs://dl-test/resume", cfg, gcp, progress=False)
    assert healed.downloaded == 3 and healed.skipped == 2
    assert local_bytes(healed) == local_bytes(first)
    assert not [p for p in Path(first.local_dir).iterdir() if ".part-" in p.name]


def test_a_transfer_that_stays_corrupt_fails_naming_the_object(gcp, tmp_path, monkeypatch):
    upload_shards(gcp, "dl-test", "corrupt", 1)
    real = storage.Blob.download_to_file
    calls = []

    def truncated(self, fh, *args, **kwargs):
        calls.append(self.name)
        real(self, fh, *args, **kwargs)
        fh.truncate(fh.tell() // 2)

    monkeypatch.setattr(storage.Blob, "download_to_file", truncated)
    with pytest.raises(DataError, match=r"gs://dl-test/corrupt/file-000000000000\.json\.gz is corrupt or truncated after 2"):
        download("gs://dl-test/corrupt", DownloadConfig(cache_dir=tmp_path, attempts=2), gcp, progress=False)
    assert len(calls) == 2
    folder = tmp_path / "dl-test" / "corrupt"
    assert list(folder.iterdir()) == []  # neither the bad file nor a temp part is left


@pytest.mark.parametrize("name", ["../x.json.gz", "a/../../x.json.gz", "/etc/x.json.gz", "a\\..\\x", "", "a\0b"])
def test_object_names_cannot_escape_the_cache(tmp_path, name):
    with pytest.raises(DataError, match="refusing"):
        safe_local_path(tmp_path, name)
    assert safe_local_path(tmp_path, "a/b.json.gz") == (tmp_path / "a" / "b.json.gz").resolve()


def test_a_manifest_with_a_traversal_name_writes_nothing(gcp, tmp_path):
    upload_shards(gcp, "dl-test", "evil", 1)
    evil = ExportResult(
        bucket="dl-test", prefix="evil", snapshot_id="s", query_hash="q", rows=1, sql="", manifest_sha256="m",
        shards=[
            ShardObject(name="evil/file-000000000000.json.gz", size=1, generation=1),
            ShardObject(name="evil/../../../outside.json.gz", size=1, generation=1),
        ],
    )  # fmt: skip
    with pytest.raises(DataError, match="escape"):
        download(evil, DownloadConfig(cache_dir=tmp_path / "cache"), gcp, progress=False)
    assert not list(tmp_path.rglob("*.json.gz"))


def test_killing_the_gcs_emulator_mid_download_ends_with_identical_files(services, gcp, tmp_path, monkeypatch):
    payloads = upload_shards(gcp, "dl-test", "kill", 12, size=256 * 1024)
    real = storage.Blob.download_to_file

    def slow(self, *args, **kwargs):
        time.sleep(0.25)  # widen the window so the emulator dies between and during transfers
        return real(self, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "download_to_file", slow)
    folder = tmp_path / "dl-test" / "kill"
    restarted = threading.Event()
    landed_at_kill = []

    def kill_when_first_file_lands():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(folder.glob("file-*.json.gz")):
            time.sleep(0.02)
        landed_at_kill.append(len(list(folder.glob("file-*.json.gz"))))
        services.gcs.stop()  # SIGTERM to the emulator's process group
        time.sleep(1.5)
        services.restart_gcs()
        restarted.set()

    killer = threading.Thread(target=kill_when_first_file_lands)
    killer.start()
    result = download("gs://dl-test/kill", DownloadConfig(cache_dir=tmp_path, workers=2), gcp, progress=False)
    killer.join()
    assert restarted.is_set() and 1 <= landed_at_kill[0] < 12  # the emulator died mid-download
    assert local_bytes(result) == {n.rsplit("/", 1)[1]: d for n, d in payloads.items()}
    assert all(file_crc32c(Path(f.path)) == f.crc32c for f in result.files)


def test_a_full_disk_names_the_file_and_the_cache_setting(gcp, tmp_path, monkeypatch):
    import errno

    from codeparrot import download as dl
    from codeparrot.errors import DiskFull

    upload_shards(gcp, "dl-test", "full", 1)

    def no_space(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.os, "fsync", no_space)
    target = tmp_path / "dl-test" / "full" / "file-000000000000.json.gz"
    with pytest.raises(DiskFull, match=rf"^no space left on device writing {target}: free space or point --cache-dir \(or CODEPARROT_HOME\) elsewhere$"):
        download("gs://dl-test/full", DownloadConfig(cache_dir=tmp_path), gcp, progress=False)
    assert not [p for p in target.parent.iterdir() if ".part-" in p.name]
