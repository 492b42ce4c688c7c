"""Shared fixtures: one Prefect test server per session, result storage in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import codeparrot  # noqa: F401 - applies the offline / telemetry environment before Prefect loads


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-scoped Prefect API with results in a fresh folder (no stale cache hits across sessions)."""
    storage = tmp_path_factory.mktemp("prefect-results")
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    with (
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}),
        prefect_test_harness(server_startup_timeout=timeout),
    ):
        yield storage
