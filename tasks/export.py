"""Prefect tasks of the export stage."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from codeparrot.export import (
    EXPORT_VERSION,
    ExportConfig,
    ExportResult,
    resolve_snapshot,
    run_export,
)
from codeparrot.gcp import GCPConfig, bigquery_client, service_errors
from tasks._common import cached_call, content_cache, explained, io_task_options, markdown_table


@task(name="export", cache_policy=content_cache("export", EXPORT_VERSION), **io_task_options())
@explained
def export_task(cfg: ExportConfig, gcp: GCPConfig) -> ExportResult:
    """Materialise and export the query (reuses a complete export with the same snapshot and query)."""
    result = run_export(cfg, gcp)
    get_run_logger().info(
        "%s %d rows in %d shards at %s", "reused" if result.reused else "exported", result.rows, len(result.shards), result.uri
    )
    create_markdown_artifact(
        key="export",
        markdown=f"## Export {result.uri}\n\n{result.rows} rows, {len(result.shards)} shards, "
        f"{result.total_bytes / 2**20:.1f} MiB\n\n```sql\n{result.sql}\n```\n\n"
        + markdown_table([{"object": s.name, "bytes": s.size, "crc32c": s.crc32c} for s in result.shards]),
        description="BigQuery export shards",
    )
    return result


def export_stage(cfg: ExportConfig, gcp: GCPConfig, *, force: bool = False) -> ExportResult:
    """Resolve the snapshot first (a metadata read, with the client's bounded retries), then run the export
    task keyed on it: an unchanged source is a cache hit, a new snapshot a new export."""
    with service_errors("BigQuery", gcp.bigquery_endpoint):
        snapshot = resolve_snapshot(bigquery_client(gcp), cfg, gcp)
    get_run_logger().info("source snapshot %s", snapshot)
    return cached_call(export_task, cfg.model_copy(update={"snapshot_id": snapshot}), gcp, force=force)
