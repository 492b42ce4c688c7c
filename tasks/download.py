"""Prefect task of the download stage."""

from __future__ import annotations

from prefect import get_run_logger, task

from codeparrot.download import (
    DOWNLOAD_VERSION,
    DownloadConfig,
    DownloadResult,
    completed,
    download,
    local_dir,
)
from codeparrot.export import ExportResult
from codeparrot.gcp import GCPConfig
from tasks._common import cached_call, content_cache, explained, io_task_options


@task(name="download", cache_policy=content_cache("download", DOWNLOAD_VERSION), **io_task_options())
@explained
def download_task(export: ExportResult, cfg: DownloadConfig, gcp: GCPConfig) -> DownloadResult:
    """Mirror the export's shards into the local cache (verified, resumable)."""
    result = download(export, cfg, gcp, progress=False)
    get_run_logger().info(
        "%d shards in %s (%d downloaded, %d already there)", len(result.files), result.local_dir, result.downloaded, result.skipped
    )
    return result


def download_stage(export: ExportResult, cfg: DownloadConfig, gcp: GCPConfig, *, force: bool = False) -> DownloadResult:
    """The download task, recomputed when forced or when its cached folder is gone."""
    present = completed(local_dir(cfg, export.bucket, export.prefix)) is not None
    return cached_call(download_task, export, cfg, gcp, force=force, outputs_present=present)
