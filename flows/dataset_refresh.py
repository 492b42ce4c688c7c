"""Dataset refresh: BigQuery export -> GCS download -> curate -> publish.

Scheduled weekly in deployments/prefect.yaml. Parameters are the stage configs, rendered by the Prefect UI
as forms. Every task is cached on content (snapshot id, manifest and shard hashes, stage configs, stage
versions), so an unchanged rerun is all cache hits and a changed parameter reruns only the stages it
reaches. With `dask_address` set, curation runs as a subflow whose shard tasks go to that Dask cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
from prefect import flow
from pydantic import BaseModel, Field

from codeparrot.config import short_hash
from codeparrot.curate.config import CurateConfig
from codeparrot.curate.pipeline import CURATE_VERSION, DEFAULT_MEMORY_MB, CurateResult
from codeparrot.download import DownloadConfig, DownloadResult
from codeparrot.env import home
from codeparrot.export import ExportConfig
from codeparrot.publish import PublishConfig
from codeparrot.services import ensure_services
from flows._local import local_run
from flows._params import Text, param, text
from tasks.curate import curate_shards, on_dask
from tasks.download import download_stage
from tasks.events import DATASET_PUBLISHED, announce
from tasks.export import export_stage
from tasks.gcp import gcp_config
from tasks.publish import provenance, publish_stage, report_task


class RefreshResult(BaseModel):
    """Small: where each stage's output is and its identity, never data. `dataset` is what later stages take."""

    export_uri: str
    export_manifest_sha256: str
    rows: int
    download_dir: str
    curated_dir: str
    curated_hash: str
    kept: int
    dataset: str  # hf://datasets/OWNER/NAME@REV
    revision: str
    url: str
    new: bool


def curate_downloaded(
    local: DownloadResult, cfg: CurateConfig, workers: int, force_refresh: bool, partitions: int | None = None, memory_mb: int = DEFAULT_MEMORY_MB
) -> CurateResult:
    """The shard tasks and the partitioned stages, in the calling flow; output folder keyed on input and config."""
    out = home() / "curated" / short_hash(local.identity(), cfg.fingerprint(CURATE_VERSION), length=16)
    shards = [Path(f.path) for f in local.files]
    return curate_shards(shards, cfg, home() / "curate-work", out, workers=workers, force=force_refresh,
                         partitions=partitions, memory_mb=memory_mb)  # fmt: skip


@flow(name="curation", description="License filter, heuristics, exact and near dedup of the downloaded shards.")
def curation(
    local: DownloadResult, cfg: CurateConfig, workers: int = 2, force_refresh: bool = False,
    partitions: int | None = None, memory_mb: int = DEFAULT_MEMORY_MB,
) -> CurateResult:  # fmt: skip
    """Curation as a subflow, so all its tasks can go to a Dask cluster (the refresh's `dask_address`)."""
    return curate_downloaded(local, cfg, workers, force_refresh, partitions, memory_mb)


@flow(name="dataset-refresh", description="BigQuery github_repos -> curated dataset published to the Hub target.")
def dataset_refresh(
    export: ExportConfig = param(ExportConfig(), "Export"),  # noqa: B008 - pydantic defaults render as the UI form
    download: DownloadConfig = param(DownloadConfig(), "Download"),  # noqa: B008
    curate: CurateConfig = param(CurateConfig(), "Curation"),  # noqa: B008
    publish: PublishConfig = param(PublishConfig(), "Publish"),  # noqa: B008
    gcp_project: Text = text("GCP project"),
    gcp_credentials_block: Text = text("GCP credentials block"),
    hub_token_block: Text = text("Hub token block"),
    dask_address: Text = text("Dask scheduler"),
    curate_workers: Annotated[int, Field(ge=1, le=256)] = param(2, "Curation processes"),
    curate_partitions: Annotated[int | None, Field(ge=1, le=4096)] = param(None, "Dedup partitions"),
    curate_memory_mb: Annotated[int, Field(ge=256, le=1 << 20)] = param(DEFAULT_MEMORY_MB, "Curation memory per process (MB)"),
    force_refresh: bool = param(False, "Force refresh"),
) -> RefreshResult:
    """Export, download, curate, publish; returns the dataset's hf://datasets/OWNER/NAME@REV URI.

    Args:
        export: The BigQuery query and where its shards go in Cloud Storage.
        download: Where shards are cached on this worker and how hard to try.
        curate: License filter, heuristics, exact and near dedup.
        publish: The dataset repo (on the Hub, or its stand-in) and the train/valid split.
        gcp_project: GCP project that runs the jobs; empty: CODEPARROT_GCP_PROJECT or the embedded default.
        gcp_credentials_block: Name of a Prefect Secret block holding a service-account key (never the key
            itself); empty: the worker's environment (GOOGLE_APPLICATION_CREDENTIALS).
        hub_token_block: Name of a Prefect Secret block holding a Hub token (never the token itself); empty:
            the worker's environment (HF_TOKEN).
        dask_address: A Dask scheduler (tcp://host:8786) for the per-shard curation, or "local" for a
            LocalCluster here; empty: threads here.
        curate_workers: Processes for the near-dedup finalize.
        curate_partitions: Hash-range partitions of the dedup and output stages (at most 4,096, the shards'
            hash slots); empty: from the corpus size and curate_memory_mb. The output is the same for any value.
        curate_memory_mb: Memory budget of one curation worker process, in MB.
        force_refresh: Recompute every stage, ignoring caches.
    """
    with ensure_services():
        gcp = gcp_config(gcp_project, gcp_credentials_block)
        exported = export_stage(export, gcp, force=force_refresh)
        local = download_stage(exported, download, gcp, force=force_refresh)
        if dask_address:
            curated = on_dask(curation, dask_address, local, curate, curate_workers, force_refresh, curate_partitions, curate_memory_mb)
        else:
            curated = curate_downloaded(local, curate, curate_workers, force_refresh, curate_partitions, curate_memory_mb)
        published = publish_stage(curated, publish, provenance(exported, local, curated, curate), hub_token_block, force=force_refresh)
        report_task(exported, curated, published)
        announce(DATASET_PUBLISHED, f"codeparrot.dataset.{published.repo}", {"dataset": published.uri}, new=not published.skipped)
    return RefreshResult(
        export_uri=exported.uri,
        export_manifest_sha256=exported.manifest_sha256,
        rows=exported.rows,
        download_dir=local.local_dir,
        curated_dir=curated.out_dir,
        curated_hash=curated.content_hash,
        kept=curated.kept,
        dataset=published.uri,
        revision=published.revision,
        url=published.url,
        new=not published.skipped,
    )


@click.command("refresh")
@click.option("--snapshot-id", default=None, help="Pin the source snapshot (default: derived from the tables).")
@click.option("--bucket", default=None, help="GCS bucket for export shards.")
@click.option("--licenses", default=None, help="permissive | weak-copyleft | all | any | comma-separated keys.")
@click.option("--dataset-name", default=None, help="owner/name of the dataset repo (default codeparrot/codeparrot-clean).")
@click.option("--dask-address", default=None, help="Dask scheduler for curation ('local' for a LocalCluster).")
@click.option("--force-refresh", is_flag=True, help="Recompute every stage, ignoring caches.")
def refresh_command(
    snapshot_id: str | None, bucket: str | None, licenses: str | None, dataset_name: str | None, dask_address: str | None, force_refresh: bool
) -> None:
    """Run the dataset-refresh flow (embedded emulators unless GCP is configured)."""
    export = ExportConfig(**{k: v for k, v in {"snapshot_id": snapshot_id, "bucket": bucket}.items() if v})
    curate = CurateConfig(licenses=tuple(licenses.split(","))) if licenses else CurateConfig()
    publish = PublishConfig(dataset_name=dataset_name) if dataset_name else PublishConfig()
    with local_run():
        result = dataset_refresh(export=export, curate=curate, publish=publish, dask_address=dask_address, force_refresh=force_refresh)
    click.echo(f"export:   {result.export_uri} ({result.rows} rows)")
    click.echo(f"download: {result.download_dir}")
    click.echo(f"curated:  {result.curated_dir} ({result.kept} kept)")
    click.echo(f"dataset:  {result.dataset} ({result.url})")
