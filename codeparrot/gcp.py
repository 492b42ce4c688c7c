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
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator

from codeparrot.config import StageConfig
from codeparrot.errors import (
    NO_SPACE,
    CodeParrotError,
    ConfigError,
    PermanentServiceError,
    ServiceError,
    refused,
    short,
)

DEFAULT_PROJECT = "codeparrot-local"
PROJECT_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$")
# Cloud Storage bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, '-', '_'
# and '.', starting and ending with a letter or digit (https://cloud.google.com/storage/docs/buckets#naming).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# Which environment variable sets each field in `GCPConfig.from_env`, to name it when its value is refused.
ENV_VARS = {
    "project": "CODEPARROT_GCP_PROJECT",
    "location": "CODEPARROT_BQ_LOCATION",
    "bigquery_endpoint": "CODEPARROT_BIGQUERY_ENDPOINT",
    "storage_endpoint": "STORAGE_EMULATOR_HOST",
    "credentials_file": "GOOGLE_APPLICATION_CREDENTIALS",
}
# An emulator endpoint is checked with one TCP connect before a client is made: nothing listening there
# fails at once, naming it, instead of after the client's retry deadline (120 s).
PROBE_TIMEOUT_S = 2.0
NEW_KEY = "download a new JSON key for the service account (IAM > Service accounts > Keys)"


def check_bucket(name: str, uri: str | None = None) -> str:
    """`name` if it is a valid bucket name, else a ConfigError naming it (and the URI it came from)."""
    if not BUCKET_RE.match(name) or ".." in name:
        where = f"{uri!r}: " if uri else ""
        raise ConfigError(
            f"{where}{name!r} is not a valid bucket name: use 3-63 lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return name


def check_project_id(value: str) -> str:
    """`value` if it is a valid GCP project id, else a ValueError that says what one looks like."""
    if not PROJECT_ID_RE.match(value):
        raise ValueError(
            f"project {value!r} is not a valid project id: use your project's id (6-63 lowercase letters, digits "
            "and hyphens, starting with a letter, e.g. codeparrot-local)"
        )
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
        names = dict(ENV_VARS)
        if not env.get("CODEPARROT_GCP_PROJECT") and env.get("GOOGLE_CLOUD_PROJECT"):
            names["project"] = "GOOGLE_CLOUD_PROJECT"
        values: dict[str, Any] = {
            "project": env.get("CODEPARROT_GCP_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
            "location": env.get("CODEPARROT_BQ_LOCATION", "US"),
            "bigquery_endpoint": env.get("CODEPARROT_BIGQUERY_ENDPOINT"),
            "storage_endpoint": env.get("STORAGE_EMULATOR_HOST"),
            "credentials_file": env.get("GOOGLE_APPLICATION_CREDENTIALS"),
        }
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                field = str(e["loc"][0]) if e["loc"] else ""
                source = field if field in given or field not in names else names[field]
                msg = e["msg"].removeprefix("Value error, ")
                value = values.get(field)
                shown = "" if field == "credentials_json" or repr(value) in msg else f"={value!r}"
                problems.append(f"{source}{shown}: {msg}")
            raise ConfigError("invalid GCP settings: " + "; ".join(problems)) from None

    def credentials(self, endpoint: str | None) -> Any:
        """Anonymous for an emulator, else a key (JSON text or file), else None (ADC)."""
        if endpoint is not None:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        if self.credentials_json is not None:
            source = "the credentials_json setting (the GCP credentials Secret block)"
            return _service_account(source, self.credentials_json.get_secret_value())
        if self.credentials_file is not None:
            path = self.credentials_file
            source = f"credentials file {path} (GOOGLE_APPLICATION_CREDENTIALS)"
            if not path.exists():
                raise ConfigError(f"{source} does not exist: point it at a service-account key file, or unset it to use ADC")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{source} is not a JSON key (not even text): {NEW_KEY}") from None
            except OSError as exc:
                raise ConfigError(f"{source} cannot be read: {exc.strerror or exc}") from None
            return _service_account(source, text)
        return None


def _service_account(source: str, text: str) -> Any:
    """Service-account credentials from a JSON key's text; a ConfigError naming `source` when it is not one."""
    from google.oauth2 import service_account

    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source} is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}; truncated?): {NEW_KEY}"
        ) from None
    if not isinstance(info, dict):
        raise ConfigError(f"{source} holds JSON but not a key object: {NEW_KEY}")
    try:
        return service_account.Credentials.from_service_account_info(info)
    except (ValueError, KeyError, TypeError) as exc:
        # a missing field, or a private_key that does not parse (cryptography's "Could not deserialize key data")
        detail = "its private_key cannot be read" if "private_key" in info and "deserialize" in str(exc) else short(exc)
        raise ConfigError(f"{source} is not a usable service-account key ({detail}): {NEW_KEY}") from None


def check_endpoint(service: str, endpoint: str, variable: str) -> None:
    """Fail fast when nothing listens at an emulator endpoint; other failures are left to the client."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=PROBE_TIMEOUT_S).close()
    except ConnectionRefusedError:
        raise ServiceError(
            f"{service} at {endpoint} ({variable}): connection refused: start the emulator "
            f"(`codeparrot services up`), fix {variable}, or unset it to use the embedded emulators"
        ) from None
    except OSError:  # a timeout or a name that does not resolve yet: the client's retries report it
        pass


def bigquery_client(cfg: GCPConfig) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    options = None
    if cfg.bigquery_endpoint:
        check_endpoint("BigQuery", cfg.bigquery_endpoint, ENV_VARS["bigquery_endpoint"])
        options = ClientOptions(api_endpoint=cfg.bigquery_endpoint)
    return bigquery.Client(
        project=cfg.project,
        location=cfg.location,
        credentials=cfg.credentials(cfg.bigquery_endpoint),
        client_options=options,
    )


def storage_client(cfg: GCPConfig) -> Any:
    from google.cloud import storage

    options = None
    if cfg.storage_endpoint:
        check_endpoint("Cloud Storage", cfg.storage_endpoint, ENV_VARS["storage_endpoint"])
        options = {"api_endpoint": cfg.storage_endpoint}
    return storage.Client(project=cfg.project, credentials=cfg.credentials(cfg.storage_endpoint), client_options=options)


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://"):
        raise ConfigError(f"{uri!r} is not a gs:// URI")
    bucket, _, name = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} has no bucket name")
    return check_bucket(bucket, uri), name


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
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise  # a full local disk, not the service: the caller names the file
        if refused(exc):
            raise ServiceError(f"{service} at {where}: connection refused: is it running? retry later") from exc
        raise ServiceError(f"{service} at {where} is unreachable or failing: {_short(exc)}; retry later") from exc
    except Exception as exc:
        import requests

        if isinstance(exc, requests.RequestException):
            what = "connection refused" if refused(exc) else _short(exc)
            raise ServiceError(f"{service} at {where} is unreachable: {what}; is it running?") from exc
        raise


def _short(exc: BaseException) -> str:
    """The first line of a client error; for a retry that gave up, of the error it last retried."""
    cause = getattr(exc, "cause", None)
    text = short(exc)
    return f"{text} ({short(cause)})" if isinstance(cause, BaseException) else text


def ensure_bucket(storage: Any, name: str, location: str, gcp: GCPConfig) -> None:
    """Create bucket `name` if it does not exist (a concurrent creator winning is fine)."""
    if storage.lookup_bucket(name, timeout=gcp.timeout_s) is None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.Conflict):
            storage.create_bucket(name, location=location, timeout=gcp.timeout_s)
