"""Hub credentials and artifact resolution for tasks: a Prefect Secret block when named, else the environment."""

from __future__ import annotations

import os

from codeparrot.artifacts import Resolver
from codeparrot.errors import ConfigError


def hub_token(block: str | None) -> str | None:
    """The Hub token from Secret block `block`, else HF_TOKEN (never logged)."""
    if not block:
        return os.environ.get("HF_TOKEN")
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(block).get())
    except ValueError as exc:
        raise ConfigError(f"no Prefect Secret block named {block!r}: create it with your Hub token or leave it empty") from exc


def resolver(block: str | None = None) -> Resolver:
    """A Resolver for the Hub and Cloud Storage this worker is configured for (token from `block` if named)."""
    return Resolver.from_env(hub_token(block))


def pinned(ref: str, block: str | None = None) -> str:
    """`ref` with its exact revision (`hf://...@REV`), so the run's parameters reproduce it."""
    return str(resolver(block).pin(ref))
