"""The one place that sets the process environment for offline, telemetry-free runs.

Every entry point (CLI, flows, tasks, tests) imports `codeparrot`, which calls `apply_defaults()` before
Prefect or the Hugging Face libraries are imported. Values are defaults only: anything the user exported
wins, which is how real mode switches e.g. `HF_HUB_OFFLINE=0` for pushing to the Hub.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

DEFAULTS: dict[str, str] = {
    # No code may download weights or datasets at run time; tokenizers and models are built from config.
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Prefect: no analytics, and a start-up timeout the ephemeral API server meets on 2 cores (13-30 s seen).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_UI_ENABLED": "false",
    # gcsfs hangs about a minute per call against an emulator without this.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
}


def apply_defaults() -> None:
    """Set every default that the user has not set already."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def home() -> Path:
    """Root of local state: emulator data, download cache, outputs (`CODEPARROT_HOME`)."""
    root = os.environ.get("CODEPARROT_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "codeparrot"


@contextlib.contextmanager
def restored_environ(*keys: str) -> Iterator[None]:
    """Put `keys` back as they were (set or not) when the block ends, whoever changed them inside."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
