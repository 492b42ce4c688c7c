"""GCP settings for tasks: the environment, plus credentials from a Prefect Secret block when named."""

from __future__ import annotations

from codeparrot.errors import ConfigError
from codeparrot.gcp import GCPConfig


def gcp_config(project: str | None = None, credentials_block: str | None = None) -> GCPConfig:
    """`GCPConfig.from_env()` with an optional project and a service-account key from a Secret block."""
    key = None
    if credentials_block:
        from prefect.blocks.system import Secret

        try:
            key = Secret.load(credentials_block).get()
        except ValueError as exc:
            raise ConfigError(
                f"no Prefect Secret block named {credentials_block!r}: create it with the service-account JSON "
                "(prefect block create secret) or leave gcp_credentials_block empty to use the environment"
            ) from exc
        if not isinstance(key, str):
            import json

            key = json.dumps(key)
    return GCPConfig.from_env(project=project, credentials_json=key)
