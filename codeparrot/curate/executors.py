"""Where curation's stages run: beside the stages, not inside them.

A stage is a picklable function of one item (a shard, a partition, a writer range); an executor maps it
over the items and returns the results in item order. `LocalExecutor` uses one process pool for a whole
curation (in-process for one worker or one item); `tasks.curate.PrefectExecutor` maps the same functions
as Prefect tasks, so under prefect-dask every stage runs on the Dask cluster.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor as _PoolExecutor
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    workers: int

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, desc: str, sizes: Sequence[int] | None = None) -> list[R]: ...


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with everything imported; only safe while this process has a
    # single thread (Prefect, Dask or a test harness may hold others, whose locks a fork would copy)
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def pool_size(n_items: int, workers: int, cpus: int | None = None) -> int:
    """Processes for `n_items` tasks given `workers` of the machine's `cpus`.

    With the whole machine and few items, one process per item: the OS shares the CPUs evenly, so 5
    shards on 2 CPUs take 2.5 shard-times, not the 3 of 2 processes (one of which runs a third shard
    while the other idles). Otherwise one process per worker, so a smaller `workers` caps the CPUs used.
    """
    cpus = default_workers() if cpus is None else cpus
    if workers >= cpus and n_items <= 4 * workers:
        return n_items
    return max(1, min(workers, n_items))


class LocalExecutor:
    """Stages on this machine: a process pool of `workers`, made on first use and kept for later stages."""

    def __init__(self, workers: int | None = None, *, progress: bool = False) -> None:
        self.workers = workers or default_workers()
        self.progress = progress
        self._pool: _PoolExecutor | None = None

    def _get_pool(self, n_items: int) -> _PoolExecutor:
        # Sized by the first stage (the shard filter) and kept: a new pool later would be spawned, not
        # forked (the first pool's threads are running by then), at ~1 s of imports per process.
        if self._pool is None:
            self._pool = ProcessPoolExecutor(pool_size(n_items, self.workers), mp_context=pool_context())
        return self._pool

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, desc: str, sizes: Sequence[int] | None = None) -> list[R]:
        """`fn` over items, largest first (by `sizes`) so the long ones do not finish last.

        When items fail, the error raised is that of the first failing item in input order, whichever
        worker failed first: the items before it still run (one of them may fail too), those after it are
        cancelled.
        """
        items = list(items)
        order = sorted(range(len(items)), key=lambda i: (-(sizes[i] if sizes else 0), i))
        out: dict[int, R] = {}
        failed: dict[int, BaseException] = {}
        pool = self._get_pool(len(items)) if self.workers > 1 and len(items) > 1 else None
        bar = tqdm(total=len(items), desc=desc, unit="task", disable=not self.progress or len(items) < 2)
        try:
            if pool is None:
                for i in range(len(items)):
                    out[i] = fn(items[i])
                    bar.update()
            else:
                futures = {pool.submit(fn, items[i]): i for i in order}
                for future in as_completed(futures):
                    i = futures[future]
                    if future.cancelled():
                        continue
                    try:
                        out[i] = future.result()
                    except Exception as exc:
                        failed[i] = exc
                        first = min(failed)
                        for f, j in futures.items():
                            if j > first:
                                f.cancel()
                    bar.update()
        finally:
            bar.close()
        if failed:
            raise failed[min(failed)]
        return [out[i] for i in range(len(items))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
