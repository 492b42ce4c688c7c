"""Prefect tasks of the publish stage, and the refresh report."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from codeparrot.curate.pipeline import CurateResult
from codeparrot.download import DownloadResult
from codeparrot.errors import DataError
from codeparrot.export import ExportResult
from codeparrot.publish import PUBLISH_VERSION, PublishConfig, PublishResult, curation_report, publish
from tasks._common import cached_call, content_cache, explained, io_task_options
from tasks.hub import resolver


def provenance(exported: ExportResult, local: DownloadResult, curated: CurateResult, curate_cfg: Any) -> dict[str, Any]:
    """What the dataset card records about where the data came from and what was done to it."""
    return {
        "snapshot_id": exported.snapshot_id,
        "export_uri": exported.uri,
        "export_rows": exported.rows,
        "sql": exported.sql,
        "counts": [
            {"stage": "export", "in": exported.rows, "kept": exported.rows, "dropped": 0},
            {"stage": "download", "in": len(exported.shards), "kept": len(local.files), "dropped": 0},
            {"stage": "curate", "in": curated.records_in, "kept": curated.kept, "dropped": curated.records_in - curated.kept},
        ],
        "dropped": curated.dropped,
        **curation_report(curated.out_dir),
        "curation": curate_cfg.fingerprint_fields(),
    }


@task(name="publish", cache_policy=content_cache("publish", PUBLISH_VERSION, ignore=("hub_token_block",)), **io_task_options())
@explained
def publish_task(curated: CurateResult, cfg: PublishConfig, prov: dict[str, Any], hub_token_block: str | None) -> PublishResult:
    """Split, write Parquet + card, push to the Hub target; returns the dataset's hf://...@REV URI."""
    result = publish(curated.out_dir, cfg, hub=resolver(hub_token_block).hub, provenance=prov)
    logger = get_run_logger()
    logger.info("%s %s", "unchanged" if result.skipped else "published", result.uri)
    create_link_artifact(key="dataset", link=result.url, link_text=result.uri, description="Where the published dataset revision is stored")
    create_markdown_artifact(key="dataset-card", markdown=card_body(result.card), description=f"The dataset card of {result.uri} (its YAML metadata is in the repo's README.md)")
    return result


def card_body(card: str) -> str:
    """A card without its YAML front matter, which a markdown renderer would show as dozens of headings."""
    if card.startswith("---\n") and (end := card.find("\n---\n", 4)) != -1:
        return card[end + 5 :].lstrip("\n")
    return card


@task(name="refresh-report", cache_policy=content_cache("refresh-report", PUBLISH_VERSION), persist_result=True)
@explained
def report_task(exported: ExportResult, curated: CurateResult, published: PublishResult) -> None:
    """One table: records in, kept and dropped per stage and reason; in = kept + dropped at every stage."""
    published_files = sum(st.files for st in published.splits.values())
    if curated.records_in != exported.rows or published_files != curated.kept:
        raise DataError(
            f"counts do not reconcile: export {exported.rows} rows, curate read {curated.records_in} "
            f"and kept {curated.kept}, publish wrote {published_files}: rerun with force_refresh"
        )
    rows = [{"stage": "export", "reason": "selected by the query", "records": exported.rows}]
    rows += [{"stage": "curate", "reason": reason, "records": n} for reason, n in curated.dropped.items()]
    rows.append({"stage": "curate", "reason": "kept", "records": curated.kept})
    rows += [{"stage": "publish", "reason": f"split {s}", "records": st.files} for s, st in published.splits.items()]
    create_table_artifact(key="refresh-counts", table=rows, description="Records per stage and reason")


def publish_stage(
    curated: CurateResult, cfg: PublishConfig, prov: dict[str, Any], hub_token_block: str | None, *, force: bool = False
) -> PublishResult:
    """The publish task, recomputed when forced or when the Hub target has no such dataset (a new bucket)."""
    present = resolver(hub_token_block).hub.head("dataset", cfg.dataset_name) is not None
    return cached_call(publish_task, curated, cfg, prov, hub_token_block, force=force, outputs_present=present)
