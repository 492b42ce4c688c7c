"""Dataset refresh: BigQuery export -> GCS download -> (curate -> publish).

Scheduled weekly in deployments/prefect.yaml. Parameters are the stage configs, rendered by the Prefect UI
as forms. Every task is cached on content (snapshot id, manifest hashes, stage configs, stage versions),
so an unchanged rerun is all cache hits and a changed parameter reruns only the stages it reaches.
"""

from __future__ import annotations

import click
from prefect import flow
from pydantic import BaseModel

from codeparrot.download import DownloadConfig, DownloadResult
from codeparrot.export import ExportConfig, ExportResult
from codeparrot.services import ensure_services
from tasks.download import download_stage
from tasks.export import export_stage
from tasks.gcp import gcp_config


class RefreshResult(BaseModel):
    export: ExportResult
    download: DownloadResult


@flow(name="dataset-refresh", description="BigQuery github_repos -> curated, published dataset.")
def dataset_refresh(
    export: ExportConfig = ExportConfig(),  # noqa: B008 - pydantic defaults render as the UI form
    download: DownloadConfig = DownloadConfig(),  # noqa: B008
    gcp_project: str | None = None,
    gcp_credentials_block: str | None = None,
    force_refresh: bool = False,
) -> RefreshResult:
    """Export, download; every stage cached on content. `force_refresh` recomputes every stage."""
    with ensure_services():
        gcp = gcp_config(gcp_project, gcp_credentials_block)
        exported = export_stage(export, gcp, force=force_refresh)
        local = download_stage(exported, download, gcp, force=force_refresh)
    return RefreshResult(export=exported, download=local)


@click.command("refresh")
@click.option("--snapshot-id", default=None, help="Pin the source snapshot (default: derived from the tables).")
@click.option("--bucket", default=None, help="GCS bucket for export shards.")
@click.option("--force-refresh", is_flag=True, help="Recompute every stage, ignoring caches.")
def refresh_command(snapshot_id: str | None, bucket: str | None, force_refresh: bool) -> None:
    """Run the dataset-refresh flow (embedded emulators unless GCP is configured)."""
    overrides = {k: v for k, v in {"snapshot_id": snapshot_id, "bucket": bucket}.items() if v}
    result = dataset_refresh(export=ExportConfig(**overrides), force_refresh=force_refresh)
    click.echo(f"export:   {result.export.uri} ({result.export.rows} rows)")
    click.echo(f"download: {result.download.local_dir}")
