"""A flow whose process dies mid-run without reporting, as a spot VM that vanishes: the run ends Crashed."""

from __future__ import annotations

import os

from prefect import flow


@flow(name="always-crash")
def always_crash() -> None:
    """Exit the flow-run process at once; nothing reports a final state, so the worker marks it Crashed."""
    os._exit(1)
