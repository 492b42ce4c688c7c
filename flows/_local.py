"""Settings for flows run from the `codeparrot` command rather than by a worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_run() -> Iterator[None]:
    """No flow-run heartbeats: they let a server notice a dead worker's runs (deployments keep them), but a
    CLI run's API server lives and dies with the process, and each flow run's heartbeat thread costs up to
    a second at its end (it sleeps in 1 s steps)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
