"""What every stage task shares: content-keyed caching, retry rules, small artifacts.

Cache keys are built from what determines a stage's output (config fingerprints without volatile fields,
input identities such as manifest or dataset hashes, a stage version constant) plus the task's source,
never from run ids, so an unchanged rerun is a cache hit and a changed parameter reruns only the stages
it reaches. Bump a stage's VERSION when its helper functions change behaviour: TASK_SOURCE does not see
them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.tasks import exponential_backoff

from codeparrot.config import StageConfig, short_hash
from codeparrot.errors import explain, is_transient

P = ParamSpec("P")
R = TypeVar("R")

# I/O tasks: 3 retries at about 10, 20, 40 s, each +-50 % jitter so parallel retries spread out.
IO_RETRIES = 3
IO_RETRY_DELAYS = exponential_backoff(backoff_factor=10)
IO_RETRY_JITTER = 0.5


def identity(value: Any) -> Any:
    """What of a task input decides its output: config fingerprints, result identities, plain values."""
    if isinstance(value, StageConfig):
        return value.fingerprint()
    ident = getattr(value, "identity", None)
    if callable(ident):
        return ident()
    if isinstance(value, Mapping):
        return {str(k): identity(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [identity(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def content_cache(stage: str, version: str, *, ignore: tuple[str, ...] = ()) -> CachePolicy:
    """Cache key = stage + version + identities of the inputs (minus `ignore`) + the task's source."""

    def key(_ctx: Any, inputs: dict[str, Any]) -> str:
        relevant = {k: identity(v) for k, v in inputs.items() if k not in ignore}
        return short_hash(stage, version, json.dumps(relevant, sort_keys=True, default=str), length=32)

    return CacheKeyFnPolicy(cache_key_fn=key) + TASK_SOURCE


def cached_call(task: Task[P, R], *args: Any, force: bool = False, outputs_present: bool = True, **kwargs: Any) -> R:
    """Call a cached task, recomputing (and overwriting its cache entry) when forced or when the outputs a
    cached result would point at are gone, so a cache hit never hands on a deleted folder."""
    if force or not outputs_present:
        task = task.with_options(refresh_cache=True)
    return task(*args, **kwargs)


def explained(fn: Callable[P, R]) -> Callable[P, R]:
    """Under `@task`: a failure `explain` recognises is raised as its one-line user error (the original as
    its cause), so the task run's state message is what the CLI would print and retries see its kind."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            known = explain(exc)
            if known is None or known is exc:
                raise
            raise known from exc

    return run


def retry_on_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry connection failures, timeouts, 429 and 5xx; fail at once on bad SQL, 4xx and bad input."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:
        return is_transient(exc)
    return False


def io_task_options() -> dict[str, Any]:
    """`@task` keyword arguments for tasks that talk to a service."""
    return {
        "retries": IO_RETRIES,
        "retry_delay_seconds": IO_RETRY_DELAYS,
        "retry_jitter_factor": IO_RETRY_JITTER,
        "retry_condition_fn": retry_on_transient,
        "persist_result": True,
    }


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
    """A small GitHub-markdown table for artifacts."""
    if not rows:
        return "_(empty)_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


