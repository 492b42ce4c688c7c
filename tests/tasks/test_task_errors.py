"""Task adapters fail with the CLI's one-line errors: `explained` translates what `explain` knows."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from codeparrot.errors import DataError, DiskFull, ServiceError
from tasks._common import explained, retry_on_transient


def test_explained_raises_the_user_error_with_the_original_as_its_cause() -> None:
    @explained
    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x")

    with pytest.raises(DiskFull, match=r"^no space left on device writing /data/x: free space or point the output elsewhere$") as err:
        full()
    assert isinstance(err.value.__cause__, OSError)

    own = DataError("already one line")

    @explained
    def ours() -> None:
        raise own

    with pytest.raises(DataError) as err:
        ours()
    assert err.value is own

    @explained
    def bug() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):  # unknown: left as it is, for the traceback
        bug()


def test_every_stage_task_is_explained() -> None:
    from prefect import Task

    import tasks.curate
    import tasks.download
    import tasks.evaluate
    import tasks.events
    import tasks.export
    import tasks.pretokenize
    import tasks.publish
    import tasks.tokenizer
    import tasks.train

    modules = [tasks.curate, tasks.download, tasks.evaluate, tasks.events, tasks.export, tasks.pretokenize,
               tasks.publish, tasks.tokenizer, tasks.train]  # fmt: skip
    found = [t for m in modules for t in vars(m).values() if isinstance(t, Task) and t.fn.__module__ == m.__name__]
    assert len(found) >= 18
    assert [t.name for t in found if not hasattr(t.fn, "__wrapped__")] == []


def test_a_failed_task_run_carries_the_one_line_message(prefect_harness: Path) -> None:
    import requests
    from prefect import flow, task

    @task(retries=0, retry_condition_fn=retry_on_transient)
    @explained
    def refused() -> None:
        raise requests.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): [Errno 111] Connection refused")

    @flow
    def one() -> tuple[bool, str, str]:
        state = refused(return_state=True)
        try:
            state.result()
        except ServiceError as exc:  # what a caller of the task, and retry_on_transient, see
            return state.is_failed(), state.message or "", type(exc).__name__
        return state.is_failed(), state.message or "", ""

    failed, message, raised = one()
    assert failed and raised == "ServiceError"
    assert message.endswith("ServiceError: cannot connect to the service: connection refused; is it running? retry later")
