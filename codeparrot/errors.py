"""Errors users see: each says what went wrong, which input or endpoint, and what to do.

The CLI prints these without a traceback; Prefect tasks retry only what `is_transient` accepts.
"""

from __future__ import annotations


class CodeParrotError(Exception):
    """Base of every error meant for a user, not a developer."""

    exit_code = 2


class ConfigError(CodeParrotError, ValueError):
    """A setting is invalid or missing; the message names it and how to fix it."""


class DataError(CodeParrotError):
    """An input file or record cannot be used; the message names the file (and line)."""


class ServiceError(CodeParrotError):
    """A service (BigQuery, GCS, the Hub) could not be reached or failed on its side. Retryable."""

    exit_code = 3


class PermanentServiceError(CodeParrotError):
    """A service refused the request (bad SQL, 403, 404): retrying cannot help."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying could help: connection failures, timeouts, 429 and 5xx, never 4xx or bad input."""
    if isinstance(exc, ServiceError):
        return True
    if isinstance(exc, CodeParrotError):
        return False
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover - the google clients are core dependencies
        gexc = None
    if gexc is not None:
        if isinstance(exc, gexc.TooManyRequests | gexc.ServerError | gexc.RetryError):
            return True
        if isinstance(exc, gexc.ClientError):
            return False
    import requests

    if isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)
