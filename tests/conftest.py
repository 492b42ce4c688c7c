"""Shared fixtures: one Prefect test server per session, result storage in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import codeparrot  # noqa: F401 - applies the offline / telemetry environment before Prefect loads

if TYPE_CHECKING:
    from codeparrot.gcp import GCPConfig
    from codeparrot.services.emulators import EmbeddedServices, Endpoints
    from codeparrot.storage import Store


def pytest_configure(config: pytest.Config) -> None:
    """Every test session gets its own CODEPARROT_HOME, so no test reads or writes the user's caches."""
    import tempfile

    config.codeparrot_home = tempfile.mkdtemp(prefix="codeparrot-test-home-")  # type: ignore[attr-defined]
    os.environ["CODEPARROT_HOME"] = config.codeparrot_home  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    home = getattr(config, "codeparrot_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-scoped Prefect API with results in a fresh folder (no stale cache hits across sessions)."""
    storage = tmp_path_factory.mktemp("prefect-results")
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    with (
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}),
        prefect_test_harness(server_startup_timeout=timeout),
    ):
        yield storage


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServices]:
    """Both emulators for the whole session (no seed: tests build the tables they need)."""
    from codeparrot.services.emulators import EmbeddedServices, patched_environ

    svc = EmbeddedServices(tmp_path_factory.mktemp("services"))
    with svc as endpoints, patched_environ(endpoints.environ()):
        yield svc


@pytest.fixture(scope="session")
def embedded_services(services: EmbeddedServices) -> Endpoints:
    return services.endpoints()


@pytest.fixture
def gcp(embedded_services: Endpoints) -> GCPConfig:
    from codeparrot.gcp import GCPConfig

    return GCPConfig(
        project=embedded_services.project,
        bigquery_endpoint=embedded_services.bigquery,
        storage_endpoint=embedded_services.storage,
        retry_deadline_s=60,
    )



@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty Store on a local disk, then on the GCS emulator: what holds for one must hold for both."""
    from codeparrot.storage import GCSStore, LocalStore

    if request.param == "local":
        return LocalStore(tmp_path / "store")
    request.getfixturevalue("embedded_services")
    return GCSStore(f"gs://store-tests/{tmp_path.name}")
