"""Google Cloud clients, the same code path for real GCP and the embedded emulators.

Which endpoint a client talks to is configuration only: `CODEPARROT_BIGQUERY_ENDPOINT` and
`STORAGE_EMULATOR_HOST` (the variable google-cloud-storage itself honours) point at emulators; unset, the
clients use Google with Application Default Credentials or a service-account key.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from codeparrot.config import StageConfig
from codeparrot.errors import CodeParrotError, ConfigError, PermanentServiceError, ServiceError

DEFAULT_PROJECT = "codeparrot-local"
PROJECT_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$")


def check_project_id(value: str) -> str:
    """`value` if it is a valid GCP project id, else a ValueError that says what one looks like."""
    if not PROJECT_ID_RE.match(value):
        raise ValueError(f"project {value!r} is not a valid project id (lowercase letters, digits, hyphens; 6-63 chars)")
    return value


class GCPConfig(StageConfig):
    """Where the BigQuery and Cloud Storage clients connect, and as whom."""

    project: str = Field(DEFAULT_PROJECT, description="Project that runs jobs and owns the bucket.")
    location: str = Field("US", description="BigQuery location of jobs and the destination dataset.")
    bigquery_endpoint: str | None = Field(None, description="BigQuery API base URL; None means Google.")
    storage_endpoint: str | None = Field(None, description="Cloud Storage API base URL; None means Google.")
    credentials_file: Path | None = Field(None, description="Service-account key file; None means ADC.")
    credentials_json: SecretStr | None = Field(
        None, description="Service-account key as JSON text (e.g. from a Prefect Secret block).", repr=False
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    retry_deadline_s: float = Field(120.0, gt=0, description="Total time to keep retrying a failing call.")

    volatile_fields: ClassVar[frozenset[str]] = frozenset(
        {"credentials_file", "credentials_json", "timeout_s", "retry_deadline_s", "bigquery_endpoint", "storage_endpoint"}
    )

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return check_project_id(value)

    @field_validator("bigquery_endpoint", "storage_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {value!r} must start with http:// or https:// (e.g. http://127.0.0.1:9050)")
        return value.rstrip("/")

    @property
    def emulated(self) -> bool:
        return self.bigquery_endpoint is not None or self.storage_endpoint is not None

    @classmethod
    def from_env(cls, **overrides: Any) -> GCPConfig:
        """Settings from the environment (`CODEPARROT_GCP_PROJECT`, endpoints, credentials), then overrides."""
        env = os.environ
        values: dict[str, Any] = {
            "project": env.get("CODEPARROT_GCP_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
            "location": env.get("CODEPARROT_BQ_LOCATION", "US"),
            "bigquery_endpoint": env.get("CODEPARROT_BIGQUERY_ENDPOINT"),
            "storage_endpoint": env.get("STORAGE_EMULATOR_HOST"),
            "credentials_file": env.get("GOOGLE_APPLICATION_CREDENTIALS"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def credentials(self, endpoint: str | None) -> Any:
        """Anonymous for an emulator, else a key (JSON text or file), else None (ADC)."""
        if endpoint is not None:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        from google.oauth2 import service_account

        if self.credentials_json is not None:
            try:
                info = json.loads(self.credentials_json.get_secret_value())
            except json.JSONDecodeError as exc:
                raise ConfigError("credentials_json is not valid JSON: paste the whole service-account key") from exc
            return service_account.Credentials.from_service_account_info(info)
        if self.credentials_file is not None:
            if not self.credentials_file.exists():
                raise ConfigError(f"credentials file {self.credentials_file} does not exist (GOOGLE_APPLICATION_CREDENTIALS)")
            return service_account.Credentials.from_service_account_file(str(self.credentials_file))
        return None


def bigquery_client(cfg: GCPConfig) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    options = ClientOptions(api_endpoint=cfg.bigquery_endpoint) if cfg.bigquery_endpoint else None
    return bigquery.Client(
        project=cfg.project,
        location=cfg.location,
        credentials=cfg.credentials(cfg.bigquery_endpoint),
        client_options=options,
    )


def storage_client(cfg: GCPConfig) -> Any:
    from google.cloud import storage

    options = {"api_endpoint": cfg.storage_endpoint} if cfg.storage_endpoint else None
    return storage.Client(project=cfg.project, credentials=cfg.credentials(cfg.storage_endpoint), client_options=options)


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://"):
        raise ConfigError(f"{uri!r} is not a gs:// URI")
    bucket, _, name = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} has no bucket name")
    return bucket, name


@contextlib.contextmanager
def service_errors(service: str, endpoint: str | None) -> Iterator[None]:
    """Turn client exceptions into errors that name the service and say what to do."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    where = endpoint or "Google Cloud"
    try:
        yield
    except CodeParrotError:
        raise
    except (gexc.Unauthorized, gexc.Forbidden, auth_exc.DefaultCredentialsError, auth_exc.RefreshError) as exc:
        raise PermanentServiceError(
            f"{service} at {where} refused the credentials: {_short(exc)}. Check GOOGLE_APPLICATION_CREDENTIALS "
            "or the GCP credentials block, and the account's roles."
        ) from exc
    except gexc.BadRequest as exc:
        raise PermanentServiceError(f"{service} rejected the request: {_short(exc)}") from exc
    except gexc.NotFound as exc:
        raise PermanentServiceError(f"{service}: not found: {_short(exc)}") from exc
    except gexc.ClientError as exc:
        raise PermanentServiceError(f"{service} at {where}: {_short(exc)}") from exc
    except (gexc.GoogleAPIError, OSError, TimeoutError) as exc:
        raise ServiceError(f"{service} at {where} is unreachable or failing: {_short(exc)}; retry later") from exc
    except Exception as exc:
        import requests

        if isinstance(exc, requests.RequestException):
            raise ServiceError(f"{service} at {where} is unreachable: {_short(exc)}; is it running?") from exc
        raise


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.splitlines()[0][:400] if text else type(exc).__name__


def ensure_bucket(storage: Any, name: str, location: str, gcp: GCPConfig) -> None:
    """Create bucket `name` if it does not exist (a concurrent creator winning is fine)."""
    if storage.lookup_bucket(name, timeout=gcp.timeout_s) is None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.Conflict):
            storage.create_bucket(name, location=location, timeout=gcp.timeout_s)
