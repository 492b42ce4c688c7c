"""Prefect tasks of the curation stage: `filter_shard` mapped over shards, then every later stage mapped
over its partitions (`PrefectExecutor`), so under a `DaskTaskRunner` all of them run on the cluster.

All are CPU work on files: no retries (a bad shard fails the same way twice). The shard task's cache key
holds the shard's content hash, not its path, so a re-downloaded identical shard is a hit. The later
stages are not cached by Prefect: the output folder's marker makes a finished curation a no-op, and an
unfinished one recomputes from the shards' work folders (their `_DONE.json` markers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy

from codeparrot.curate.config import CurateConfig
from codeparrot.curate.pipeline import (
    CURATE_VERSION,
    DEFAULT_MEMORY_MB,
    DONE,
    CurateResult,
    ShardSummary,
    file_sha256,
    filter_shard,
    finalize,
    shard_folder,
)
from codeparrot.env import restored_environ
from tasks._common import content_cache, explained


def _shard_content(_ctx: Any, inputs: dict[str, Any]) -> str:
    return file_sha256(Path(inputs["shard"]))


@task(
    name="curate-shard",
    cache_policy=content_cache("curate-shard", CURATE_VERSION, ignore=("shard",)) + CacheKeyFnPolicy(cache_key_fn=_shard_content),
    persist_result=True,
)
@explained
def filter_shard_task(shard: Path, cfg: CurateConfig, work_dir: Path) -> ShardSummary:
    """License filter, heuristics and MinHash signatures of one shard."""
    summary = filter_shard(shard, cfg, work_dir)
    get_run_logger().info("%s: %d in, %d survive the filters", Path(shard).name, summary.records_in, summary.survivors)
    return summary


@task(name="curate-stage", task_run_name="{name}", cache_policy=NO_CACHE, persist_result=False)
@explained
def stage_task(fn: Callable[[Any], Any], item: Any, name: str) -> Any:
    """One item (a partition, a writer range, a shard) of one of curation's later stages."""
    return fn(item)


class PrefectExecutor:
    """Maps a curation stage as Prefect tasks: on the flow's task runner (a Dask cluster under prefect-dask)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str, sizes: Sequence[int] | None = None) -> list[Any]:
        items = list(items)
        if not items:
            return []
        names = [f"curate-{desc.replace(' ', '-')}-{i}" for i in range(len(items))]
        return stage_task.map(unmapped(fn), items, names).result()


# What dask's Nanny sets in the process that spawns its workers (distributed.nanny.pre-spawn-environ) and
# leaves set there: a trainer launched from that process later would run on one thread (seen: 2x slower).
_NANNY_ENVIRON = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def on_dask(subflow: Any, address: str, *args: Any) -> Any:
    """Run `subflow(*args)` with its tasks on the Dask cluster at `address` ("local": a LocalCluster here),
    leaving this process's environment as it was."""
    with restored_environ(*_NANNY_ENVIRON):
        return subflow.with_options(task_runner=dask_runner(None if address == "local" else address))(*args)


def dask_runner(address: str | None = None, *, n_workers: int = 2, memory_limit: str | None = None) -> Any:
    """A `DaskTaskRunner` for the shard tasks: the cluster at `address` (e.g. "tcp://scheduler:8786")
    when one is configured, else a `LocalCluster` of single-threaded worker processes (NumPy and the
    filters hold the GIL for most of their work, so processes, not threads, give the speed-up)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    return DaskTaskRunner(cluster_kwargs=kwargs)


def curate_shards(
    shards: list[Path],
    cfg: CurateConfig,
    work_dir: Path,
    out_dir: Path,
    *,
    workers: int = 1,
    force: bool = False,
    partitions: int | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> CurateResult:
    """Inside a flow: one mapped task per shard, wait for all, then the partitioned stages, and a stats
    artifact. Cached shard results are recomputed when forced or when the files they point at are gone."""
    shards = [Path(s) for s in shards]
    shard_task = filter_shard_task
    gone = any(not (shard_folder(s, file_sha256(s), cfg, work_dir) / DONE).is_file() for s in shards)
    if force or gone:
        shard_task = filter_shard_task.with_options(refresh_cache=True)
    summaries = shard_task.map(shards, unmapped(cfg), unmapped(work_dir)).result()
    if force:
        (Path(out_dir) / "_SUCCESS").unlink(missing_ok=True)
    result = finalize(summaries, cfg, work_dir, out_dir, executor=PrefectExecutor(workers), partitions=partitions, memory_mb=memory_mb)
    get_run_logger().info("curated %d -> %d records into %s", result.records_in, result.kept, result.out_dir)
    create_markdown_artifact(result.table, key="curate-stats", description=f"Curation of {len(shards)} shards")
    return result
