"""Export stage: the seed query over `github_repos` into a table, then gzipped JSONL shards in GCS.

The query is the book's (files JOIN contents JOIN licenses, not binary, `.py`, 1 KiB to 1 MiB) with the
extension and size bounds as query parameters and every identifier validated, never pasted from input.
It is materialised with `CREATE OR REPLACE TABLE ... AS SELECT` and exported with `EXPORT DATA`; both
statements run unchanged on BigQuery and on the embedded emulator.

Exports are keyed by the source snapshot and the query: `gs://BUCKET/PREFIX/<snapshot>-<query hash>/`.
A `_MANIFEST.json` (objects, sizes, checksums, generations, row count) is created last with
`if_generation_match=0`; when it exists the export is complete and is not redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any, ClassVar

import click
from pydantic import BaseModel, Field, field_validator, model_validator

from codeparrot.config import StageConfig, short_hash
from codeparrot.errors import ConfigError
from codeparrot.gcp import (
    GCPConfig,
    bigquery_client,
    check_project_id,
    ensure_bucket,
    service_errors,
    storage_client,
)

log = logging.getLogger(__name__)

EXPORT_VERSION = "1"
MANIFEST_NAME = "_MANIFEST.json"
SHARD_PATTERN = "file-*.json.gz"

_DATASET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_EXT_RE = re.compile(r"^\.[A-Za-z0-9_+-]{1,16}$")

QUERY_TEMPLATE = """\
SELECT
    f.repo_name, f.path, c.copies, c.size, c.content, l.license
FROM
    `{source}.files` AS f
JOIN
    `{source}.contents` AS c
ON
    f.id = c.id
JOIN
    `{source}.licenses` AS l
ON
    f.repo_name = l.repo_name
WHERE
    NOT c.binary
    AND f.path LIKE @path_pattern
    AND c.size BETWEEN @min_size AND @max_size"""


class ExportConfig(StageConfig):
    """What to select from `github_repos` and where the shards go."""

    source_project: str = Field("bigquery-public-data", description="Project holding the github_repos dataset.")
    source_dataset: str = Field("github_repos", description="Dataset with files, contents, licenses.")
    dest_dataset: str = Field("codeparrot", description="Dataset (in the job project) for the materialised table.")
    bucket: str = Field("codeparrot-exports", description="GCS bucket for the exported shards.")
    prefix: str = Field("github-python", description="Object prefix under the bucket.")
    extension: str = Field(".py", description="File extension to select.")
    min_size: int = Field(1024, ge=0, description="Smallest file in bytes (the book: 1 KiB).")
    max_size: int = Field(1048575, gt=0, description="Largest file in bytes (the book: < 1 MiB).")
    snapshot_id: str = Field(
        "auto", description="Identity of the source snapshot; 'auto' derives it from the source tables' metadata."
    )
    job_timeout_s: float = Field(3600.0, gt=0, description="Longest a query or export job may run.")

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"job_timeout_s"})

    @field_validator("source_project")
    @classmethod
    def _project(cls, v: str) -> str:
        return check_project_id(v)

    @field_validator("source_dataset", "dest_dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if not _DATASET_RE.match(v):
            raise ValueError(f"{v!r} is not a valid dataset id (letters, digits, underscores)")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET_RE.match(v) or ".." in v:
            raise ValueError(f"{v!r} is not a valid bucket name (lowercase letters, digits, '-', '_', '.')")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not _PREFIX_RE.match(v) or any(part in (".", "..") for part in v.split("/")):
            raise ValueError(f"prefix {v!r} may hold only letters, digits, '.', '_', '-' and '/' separators")
        return v

    @field_validator("extension")
    @classmethod
    def _extension(cls, v: str) -> str:
        if not _EXT_RE.match(v):
            raise ValueError(f"extension {v!r} must look like '.py'")
        return v

    @field_validator("snapshot_id")
    @classmethod
    def _snapshot(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", v):
            raise ValueError(f"snapshot_id {v!r}: use letters, digits, '.', '_', '-' (or 'auto')")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> ExportConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} > max_size {self.max_size}")
        return self


class Query(BaseModel):
    """SQL plus its parameters (name, BigQuery type, value)."""

    sql: str
    params: list[tuple[str, str, Any]]

    def digest(self) -> str:
        return short_hash(self.sql, json.dumps(self.params), EXPORT_VERSION)


class ShardObject(BaseModel):
    name: str
    size: int
    generation: int
    crc32c: str | None = None
    md5: str | None = None


class ExportResult(BaseModel):
    """Where a complete export lies; small, and its identity is the manifest's content."""

    bucket: str
    prefix: str
    snapshot_id: str
    query_hash: str
    rows: int
    shards: list[ShardObject]
    sql: str
    manifest_sha256: str
    reused: bool = False

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}/"

    def identity(self) -> str:
        return self.manifest_sha256

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)


def build_query(cfg: ExportConfig) -> Query:
    """The seed query for `cfg` with bounds and extension as parameters."""
    source = f"{cfg.source_project}.{cfg.source_dataset}"
    sql = QUERY_TEMPLATE.format(source=source)
    params = [
        ("path_pattern", "STRING", f"%{cfg.extension}"),
        ("min_size", "INT64", cfg.min_size),
        ("max_size", "INT64", cfg.max_size),
    ]
    return Query(sql=sql, params=params)


def _retry(gcp: GCPConfig) -> Any:
    from google.cloud.bigquery import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(gcp.retry_deadline_s)


def resolve_snapshot(client: Any, cfg: ExportConfig, gcp: GCPConfig) -> str:
    """cfg.snapshot_id, or a hash of the source tables' modification times and row counts."""
    if cfg.snapshot_id != "auto":
        return cfg.snapshot_id
    parts = []
    for table in ("files", "contents", "licenses"):
        t = client.get_table(f"{cfg.source_project}.{cfg.source_dataset}.{table}", retry=_retry(gcp), timeout=gcp.timeout_s)
        parts.append((table, t.modified.isoformat() if t.modified else "", t.num_rows))
    return "s" + short_hash(*parts, length=10)


def _manifest_blob(storage: Any, bucket: str, prefix: str) -> Any:
    return storage.bucket(bucket).blob(f"{prefix}/{MANIFEST_NAME}")


def _read_manifest(blob: Any, gcp: GCPConfig) -> ExportResult | None:
    from google.api_core import exceptions as gexc

    try:
        data = blob.download_as_bytes(timeout=gcp.timeout_s)
    except gexc.NotFound:
        return None
    result = ExportResult.model_validate_json(data)
    return result.model_copy(update={"reused": True})


def run_export(cfg: ExportConfig, gcp: GCPConfig) -> ExportResult:
    """Export the query's rows as gzipped JSONL shards; reuse a complete export with the same key."""
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery

    query = build_query(cfg)
    bq = bigquery_client(gcp)
    gcs = storage_client(gcp)
    with service_errors("BigQuery", gcp.bigquery_endpoint):
        snapshot = resolve_snapshot(bq, cfg, gcp)
    qhash = query.digest()
    prefix = f"{cfg.prefix}/{snapshot}-{qhash}"
    with service_errors("Cloud Storage", gcp.storage_endpoint):
        ensure_bucket(gcs, cfg.bucket, gcp.location, gcp)
        manifest = _manifest_blob(gcs, cfg.bucket, prefix)
        done = _read_manifest(manifest, gcp)
    if done is not None:
        log.info("export gs://%s/%s is complete already (%d rows); reusing it", cfg.bucket, prefix, done.rows)
        return done

    table = f"{gcp.project}.{cfg.dest_dataset}." + f"export_{snapshot}_{qhash}".replace("-", "_")
    job_config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter(n, t, v) for n, t, v in query.params]
    )
    t0 = time.monotonic()
    with service_errors("BigQuery", gcp.bigquery_endpoint):
        ds = bigquery.Dataset(f"{gcp.project}.{cfg.dest_dataset}")
        ds.location = gcp.location
        bq.create_dataset(ds, exists_ok=True, retry=_retry(gcp), timeout=gcp.timeout_s)
        ctas = f"CREATE OR REPLACE TABLE `{table}` AS\n{query.sql}"
        bq.query(ctas, job_config=job_config, retry=_retry(gcp), timeout=gcp.timeout_s).result(
            timeout=cfg.job_timeout_s, retry=_retry(gcp)
        )
        rows = bq.get_table(table, retry=_retry(gcp), timeout=gcp.timeout_s).num_rows or 0
        log.info("materialised %d rows into %s in %.1fs", rows, table, time.monotonic() - t0)
        uri = f"gs://{cfg.bucket}/{prefix}/{SHARD_PATTERN}"
        export_sql = (
            f"EXPORT DATA OPTIONS(uri='{uri}', format='JSON', compression='GZIP', overwrite=true) AS\n"
            f"SELECT * FROM `{table}`"
        )
        bq.query(export_sql, retry=_retry(gcp), timeout=gcp.timeout_s).result(timeout=cfg.job_timeout_s, retry=_retry(gcp))
    with service_errors("Cloud Storage", gcp.storage_endpoint):
        shards = [
            ShardObject(name=b.name, size=b.size, generation=b.generation, crc32c=b.crc32c, md5=b.md5_hash)
            for b in gcs.list_blobs(cfg.bucket, prefix=f"{prefix}/file-", timeout=gcp.timeout_s)
            if b.name.endswith(".json.gz")
        ]
        body: dict[str, Any] = {
            "bucket": cfg.bucket,
            "prefix": prefix,
            "snapshot_id": snapshot,
            "query_hash": qhash,
            "rows": rows,
            "shards": [s.model_dump() for s in sorted(shards, key=lambda s: s.name)],
            "sql": query.sql,
        }
        body["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        result = ExportResult.model_validate(body)
        try:
            manifest.upload_from_string(
                result.model_dump_json(indent=2), content_type="application/json", if_generation_match=0
            )
        except gexc.PreconditionFailed:
            # Another run finished the same export first: theirs is as good as ours.
            other = _read_manifest(manifest, gcp)
            if other is not None:
                return other
    log.info("exported %d rows into %d shards under %s in %.1fs", rows, len(shards), result.uri, time.monotonic() - t0)
    return result


@click.command("export")
@click.option("--bucket", default=None, help="GCS bucket for the shards.")
@click.option("--prefix", default=None, help="Object prefix under the bucket.")
@click.option("--snapshot-id", default=None, help="Pin the snapshot id ('auto' derives it).")
@click.option("--source-project", default=None, help="Project of github_repos (bigquery-public-data).")
@click.option("--min-size", type=int, default=None)
@click.option("--max-size", type=int, default=None)
@click.option("--extension", default=None, help="File extension, e.g. .py")
@click.option("--show-sql", is_flag=True, help="Print the SQL and parameters and exit.")
def export_command(show_sql: bool, **options: Any) -> None:
    """Run the seed query and export gzipped JSONL shards to GCS (embedded emulators unless configured)."""
    from codeparrot.services import ensure_services

    try:
        cfg = ExportConfig(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if show_sql:
        q = build_query(cfg)
        click.echo(q.sql)
        click.echo(json.dumps(q.params))
        return
    with ensure_services():
        result = run_export(cfg, GCPConfig.from_env())
    click.echo(
        f"{'reused' if result.reused else 'exported'} {result.rows} rows in {len(result.shards)} shards "
        f"({result.total_bytes / 2**20:.1f} MiB) at {result.uri}"
    )
