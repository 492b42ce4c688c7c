"""Errors users see: each says what went wrong, which input or endpoint, and what to do.

The CLI prints these without a traceback; Prefect tasks retry only what `is_transient` accepts.

Exit codes of `codeparrot`: 0 done; 2 a user error (an input, a setting, a refused request, a full
disk: fix it and rerun); 3 a service failed or could not be reached (retrying may help); 1 an unexpected
failure, i.e. a bug: one line naming the exception, `--debug` for the traceback. Failures of other
libraries that are really user errors (a damaged credentials file, a corrupt Parquet file, a full disk,
a refused connection) are translated by `explain`, which the CLI and the Prefect tasks share, so a
failed task's state message is the same one line the command prints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


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


class DiskFull(CodeParrotError):
    """No space left where a file is written; the message names the path and the setting that moves it."""


# A full disk and a full quota look the same to a user: free space or write elsewhere.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Messages of translated errors are cut to one line of at most this many characters.
MAX_DETAIL = 400


def disk_full(path: str | os.PathLike[str], setting: str) -> DiskFull:
    return DiskFull(f"no space left on device writing {os.fspath(path)}: free space or point {setting} elsewhere")


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], setting: str) -> Iterator[None]:
    """A full disk inside the block becomes `DiskFull` naming the file (or `path`) and `setting`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise disk_full(exc.filename or path, setting) from exc


def short(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), at most MAX_DETAIL chars."""
    text = getattr(exc, "message", None) or str(exc)
    text = text.strip().splitlines()[0] if text and text.strip() else type(exc).__name__
    return text[:MAX_DETAIL]


def refused(exc: BaseException) -> bool:
    """Whether a connection was refused somewhere in the exception's chain (nothing listens there)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError) or "connection refused" in str(cur).lower():
            return True
        todo += [cur.__cause__, cur.__context__, getattr(cur, "cause", None), getattr(cur, "reason", None)]
        todo += [a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]
    return False


def explain(exc: BaseException) -> CodeParrotError | None:
    """The user error a failure stands for (itself when it is one already); None for an unexpected one.

    Known kinds of other libraries' failures (see the module docstring) are checked on the exception and
    then on its explicit causes, so a library that wraps a full disk in its own error is still explained.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, CodeParrotError):
            return cur
        found = _translate(cur)
        if found is not None:
            return found
        cur = cur.__cause__
    return None


def _translate(exc: BaseException) -> CodeParrotError | None:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        path = exc.filename
        return disk_full(path or "a file", _setting_for(path))
    found = _pydantic(exc) or _google(exc) or _requests(exc) or _arrow(exc)
    if found is not None:
        return found
    if isinstance(exc, ConnectionError | TimeoutError):
        what = "connection refused" if refused(exc) else short(exc)
        return ServiceError(f"{what}: is the service running and reachable? retry later")
    if isinstance(exc, OSError) and exc.filename:
        return DataError(f"{exc.filename}: {exc.strerror or short(exc)}")
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start}): is the file damaged, or not text?")
    if isinstance(exc, json.JSONDecodeError):
        return DataError(f"invalid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}): the file is damaged or not JSON")
    return None


def _setting_for(path: str | os.PathLike[str] | None) -> str:
    """What moves the file somewhere else: CODEPARROT_HOME for local state, TMPDIR for temp files."""
    if path:
        from codeparrot.env import home

        where = Path(path).absolute()
        if where.is_relative_to(home().absolute()):
            return "CODEPARROT_HOME"
        if where.is_relative_to(Path(tempfile.gettempdir()).absolute()):
            return "TMPDIR"
    return "the output"


def _pydantic(exc: BaseException) -> CodeParrotError | None:
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(exc, pydantic.ValidationError):
        return None
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
    return ConfigError(f"invalid {exc.title}: {'; '.join(parts)}"[:MAX_DETAIL])


def _google(exc: BaseException) -> CodeParrotError | None:
    auth = sys.modules.get("google.auth.exceptions")
    if auth is not None:
        if isinstance(exc, auth.DefaultCredentialsError):
            return ConfigError(
                f"no usable Google credentials: {short(exc)}: set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
                "key file (or run `gcloud auth application-default login`), or point STORAGE_EMULATOR_HOST at an emulator"
            )
        if isinstance(exc, auth.RefreshError):
            cls = ServiceError if getattr(exc, "retryable", False) else PermanentServiceError
            return cls(f"Google refused the credentials: {short(exc)}: check the key file and the account's roles")
        if isinstance(exc, auth.TransportError):
            return ServiceError(f"cannot reach Google's token service: {short(exc)}; check the network, then retry")
    api = sys.modules.get("google.api_core.exceptions")
    if api is not None and isinstance(exc, api.GoogleAPIError):
        if isinstance(exc, api.RetryError):
            cause = exc.cause or exc
            what = "connection refused" if refused(exc) else short(cause)
            return ServiceError(f"gave up retrying ({short(exc)}): {what}; is the service running? retry later")
        if isinstance(exc, api.ClientError) and not isinstance(exc, api.TooManyRequests):
            return PermanentServiceError(f"the service refused the request: {short(exc)}")
        return ServiceError(f"the service failed: {short(exc)}; retry later")
    return None


def _requests(exc: BaseException) -> CodeParrotError | None:
    requests = sys.modules.get("requests")
    if requests is None or not isinstance(exc, requests.RequestException):
        return None
    url = getattr(getattr(exc, "request", None), "url", None)
    where = f" {url}" if url else ""
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        what = "connection refused" if refused(exc) else short(exc)
        return ServiceError(f"cannot connect to{where or ' the service'}: {what}; is it running? retry later")
    return ServiceError(f"request to{where or ' the service'} failed: {short(exc)}")


def _arrow(exc: BaseException) -> CodeParrotError | None:
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is None or not isinstance(exc, pyarrow.ArrowException):
        return None
    return DataError(f"unreadable Arrow/Parquet data: {short(exc)}: fetch or publish the dataset again")


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
