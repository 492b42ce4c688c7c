"""Download stage: export shards from GCS into a local cache, in parallel, verified, atomic, resumable.

Each object is streamed to a temporary name, checked against the object's crc32c (or md5), and renamed
into place; a rerun skips files already present with the right checksum, so an interrupted download
resumes where it stopped. A corrupt or truncated file is fetched again, then fails with an error naming
the object. Object names are mapped under the cache folder and refused if they would escape it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import click
import google_crc32c
from pydantic import BaseModel, Field
from tqdm import tqdm

from codeparrot.config import StageConfig
from codeparrot.env import home
from codeparrot.errors import DataError, writing
from codeparrot.export import MANIFEST_NAME, ExportResult, ShardObject
from codeparrot.gcp import GCPConfig, parse_gs_uri, service_errors, storage_client

log = logging.getLogger(__name__)

DOWNLOAD_VERSION = "1"
MARKER = "_SUCCESS.json"
_CHUNK = 1 << 20
CACHE_SETTING = "--cache-dir (or CODEPARROT_HOME)"


class DownloadConfig(StageConfig):
    """Where shards are cached and how hard to try."""

    # Empty by default, resolved where the download runs: a default baked from the deploying machine's home
    # would send every worker to a folder that is not theirs.
    cache_dir: Path | None = Field(None, description="Local cache root; empty: CODEPARROT_HOME/downloads on the worker.")
    workers: int = Field(8, ge=1, le=64, description="Parallel downloads (I/O bound: more than cores is fine).")
    attempts: int = Field(3, ge=1, le=10, description="Fetches of one object before a checksum failure is final.")

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"cache_dir", "workers", "attempts"})


class LocalShard(BaseModel):
    path: str
    size: int
    crc32c: str


class DownloadResult(BaseModel):
    """The local copy of an export: folder, files, and what this run fetched."""

    source: str
    local_dir: str
    files: list[LocalShard]
    downloaded: int
    skipped: int
    bytes_downloaded: int

    def identity(self) -> str:
        return hashlib.sha256("".join(f"{f.path}:{f.crc32c}" for f in self.files).encode()).hexdigest()


def safe_local_path(root: Path, relative: str) -> Path:
    """`root/relative` for an object name, refusing names that would leave `root`."""
    rel = PurePosixPath(relative)
    if (
        not relative
        or rel.is_absolute()
        or "\\" in relative
        or "\0" in relative
        or any(part in ("..", ".") for part in rel.parts)
    ):
        raise DataError(f"object name {relative!r} would escape the cache folder {root}; refusing to write it")
    target = (root / Path(*rel.parts)).resolve()
    if root.resolve() not in target.parents:
        raise DataError(f"object name {relative!r} resolves outside {root}; refusing to write it")
    return target


def _digest(path: Path, hasher: Any) -> str:
    """Base64 of a checksum over the file's bytes, as GCS reports crc32c and md5."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            hasher.update(block)
    return base64.b64encode(hasher.digest()).decode()


def file_crc32c(path: Path) -> str:
    return _digest(path, google_crc32c.Checksum())


def file_md5(path: Path) -> str:
    return _digest(path, hashlib.md5())  # GCS's object checksum, not security


def matches(path: Path, obj: ShardObject) -> bool:
    """Whether a local file is the object: same size and checksum (crc32c, else md5)."""
    if not path.exists() or path.stat().st_size != obj.size:
        return False
    if obj.crc32c:
        return file_crc32c(path) == obj.crc32c
    if obj.md5:
        return file_md5(path) == obj.md5
    log.warning("gs object %s has no checksum; trusting its size only", obj.name)
    return True


def list_objects(gcs: Any, bucket: str, prefix: str, gcp: GCPConfig) -> list[ShardObject]:
    prefix = prefix.rstrip("/") + "/"
    return sorted(
        (
            ShardObject(name=b.name, size=b.size, generation=b.generation, crc32c=b.crc32c, md5=b.md5_hash)
            for b in gcs.list_blobs(bucket, prefix=prefix, timeout=gcp.timeout_s)
            if b.name.endswith(".json.gz") and not b.name.endswith(MANIFEST_NAME)
        ),
        key=lambda o: o.name,
    )


def _fetch(gcs: Any, bucket: str, obj: ShardObject, target: Path, cfg: DownloadConfig, gcp: GCPConfig) -> int:
    """Download one object to `target` via a temp file; returns bytes written. Retries bad checksums."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    blob = gcs.bucket(bucket).blob(obj.name, generation=obj.generation)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}-{threading.get_ident()}")
    last = ""
    for attempt in range(1, cfg.attempts + 1):
        try:
            with writing(target, CACHE_SETTING), open(tmp, "wb") as fh:
                # raw: the shard's gzip bytes as stored (no transcoding), so checksums compare.
                blob.download_to_file(
                    fh, raw_download=True, checksum=None, timeout=gcp.timeout_s,
                    retry=DEFAULT_RETRY.with_deadline(gcp.retry_deadline_s),
                )  # fmt: skip
                fh.flush()
                os.fsync(fh.fileno())
            if matches(tmp, obj):
                os.replace(tmp, target)
                return obj.size
            got = tmp.stat().st_size
            last = f"got {got} bytes with crc32c {file_crc32c(tmp)}, expected {obj.size} bytes with {obj.crc32c}"
            log.warning("gs://%s/%s failed verification (attempt %d/%d): %s", bucket, obj.name, attempt, cfg.attempts, last)
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"gs://{bucket}/{obj.name} is corrupt or truncated after {cfg.attempts} downloads: {last}")


def download(
    source: ExportResult | str,
    cfg: DownloadConfig,
    gcp: GCPConfig,
    *,
    progress: bool = True,
) -> DownloadResult:
    """Mirror every shard under an export (or a `gs://bucket/prefix` URI) into the cache."""
    if isinstance(source, ExportResult):
        bucket, prefix = source.bucket, source.prefix
        objects: list[ShardObject] | None = source.shards
    else:
        bucket, prefix = parse_gs_uri(source)
        prefix = prefix.rstrip("/")
        objects = None
    gcs = storage_client(gcp)
    with service_errors("Cloud Storage", gcp.storage_endpoint):
        if objects is None:
            objects = list_objects(gcs, bucket, prefix, gcp)
    if not objects:
        raise DataError(f"no *.json.gz shards under gs://{bucket}/{prefix}/: is the export complete?")
    root = local_dir(cfg, bucket, prefix)
    root.mkdir(parents=True, exist_ok=True)
    # Validate every name before writing anything.
    plan = [(obj, safe_local_path(root, obj.name.removeprefix(prefix + "/"))) for obj in objects]

    todo = [(obj, path) for obj, path in plan if not matches(path, obj)]
    skipped = len(plan) - len(todo)
    if skipped:
        log.info("%d of %d shards already in %s", skipped, len(plan), root)
    done_bytes = 0
    bar = tqdm(total=sum(o.size for o, _ in todo), unit="B", unit_scale=True, desc="download", disable=not progress or None)
    with bar, service_errors("Cloud Storage", gcp.storage_endpoint), ThreadPoolExecutor(cfg.workers) as pool:
        futures = {pool.submit(_fetch, gcs, bucket, obj, path, cfg, gcp): obj for obj, path in todo}
        try:
            for fut in as_completed(futures):
                n = fut.result()
                done_bytes += n
                bar.update(n)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    files = [LocalShard(path=str(path), size=obj.size, crc32c=obj.crc32c or "") for obj, path in plan]
    _remove_partials(root)
    log.info("downloaded %d shards (%.1f MiB) into %s, %d already present", len(todo), done_bytes / 2**20, root, skipped)
    result = DownloadResult(
        source=f"gs://{bucket}/{prefix}/",
        local_dir=str(root),
        files=files,
        downloaded=len(todo),
        skipped=skipped,
        bytes_downloaded=done_bytes,
    )
    tmp = root / f".{MARKER}.tmp"
    listing = {Path(f.path).name: f.size for f in files}
    with writing(tmp, CACHE_SETTING):
        tmp.write_text(json.dumps({"source": result.source, "identity": result.identity(), "files": listing}))
    os.replace(tmp, root / MARKER)
    return result


def local_dir(cfg: DownloadConfig, bucket: str, prefix: str) -> Path:
    """The cache folder of one export: `<cache_dir>/<bucket>/<prefix>`."""
    return (cfg.cache_dir or home() / "downloads") / bucket / Path(*PurePosixPath(prefix.rstrip("/")).parts)


def completed(folder: Path) -> str | None:
    """The identity recorded by a finished download in `folder` if its files are all there, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        intact = all((folder / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, KeyError):
        return None
    return marker["identity"] if intact else None


def _remove_partials(root: Path) -> None:
    """Drop temp parts left by interrupted runs."""
    for p in root.iterdir():
        if p.name.startswith(".") and ".part-" in p.name:
            with contextlib.suppress(OSError):
                p.unlink()


@click.command("download")
@click.argument("source", required=False)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Local cache root.")
@click.option("--workers", type=int, default=8, show_default=True)
def download_command(source: str | None, cache_dir: Path | None, workers: int) -> None:
    """Download shards from SOURCE (gs://bucket/prefix; default: run/reuse the default export)."""
    from codeparrot.export import ExportConfig, run_export
    from codeparrot.services import ensure_services

    cfg = DownloadConfig(workers=workers, **({"cache_dir": cache_dir} if cache_dir else {}))
    with ensure_services():
        gcp = GCPConfig.from_env()
        src: ExportResult | str = source if source else run_export(ExportConfig(), gcp)
        result = download(src, cfg, gcp)
    click.echo(f"{len(result.files)} shards in {result.local_dir} ({result.downloaded} downloaded, {result.skipped} already there)")
