"""Bad GCP settings and unreachable endpoints fail as one line naming the input, through the CLI."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from codeparrot.cli import main
from codeparrot.errors import ConfigError, ServiceError
from codeparrot.gcp import GCPConfig, parse_gs_uri, service_errors

GCP_VARIABLES = ("STORAGE_EMULATOR_HOST", "CODEPARROT_BIGQUERY_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS",
                 "CODEPARROT_GCP_PROJECT", "GOOGLE_CLOUD_PROJECT")  # fmt: skip


@pytest.fixture
def real_mode(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Real GCP configured (so nothing embedded starts), no emulator, no credentials yet."""
    for name in GCP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CODEPARROT_GCP_PROJECT", "codeparrot-test")
    return monkeypatch


def one_error(stderr: str) -> str:
    """The one `error:` line of a failed command, with no traceback."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error")]
    return line



BAD_KEY = json.dumps({
    "type": "service_account", "project_id": "codeparrot-test", "private_key_id": "1",
    "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    "client_email": "x@codeparrot-test.iam.gserviceaccount.com", "client_id": "1",
    "token_uri": "https://oauth2.googleapis.com/token",
})  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("garbage.json", b"not json \x00\xff at all\n", "is not a JSON key (not even text)"),
        ("truncated.json", b'{"type": "service_account", "project_id": "codeparrot-test", "private_k', "is not valid JSON ("),
        ("badkey.json", BAD_KEY.encode(), "is not a usable service-account key (its private_key cannot be read)"),
    ],
)
def test_a_damaged_credentials_file_is_named(
    real_mode: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, needle: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    real_mode.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    assert main(["download", "gs://codeparrot-test-bucket/x"]) == 2
    err = one_error(capsys.readouterr().err)
    assert err.startswith(f"error: credentials file {path} (GOOGLE_APPLICATION_CREDENTIALS) {needle}")
    assert "download a new JSON key" in err


def test_the_credentials_secret_is_named_when_it_is_not_json() -> None:
    cfg = GCPConfig(credentials_json="{not json")
    with pytest.raises(ConfigError, match=r"the credentials_json setting \(the GCP credentials Secret block\) is not valid JSON"):
        cfg.credentials(None)


def test_an_invalid_bucket_name_is_refused_before_any_request(real_mode: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "gs://BAD_bucket!/x"]) == 2
    err = one_error(capsys.readouterr().err)
    assert err.startswith("error: 'gs://BAD_bucket!/x': 'BAD_bucket!' is not a valid bucket name: use 3-63 lowercase")
    assert parse_gs_uri("gs://codeparrot-artifacts/tokens") == ("codeparrot-artifacts", "tokens")


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("STORAGE_EMULATOR_HOST", "127.0.0.1:1", "STORAGE_EMULATOR_HOST: endpoint '127.0.0.1:1' must start with http:// or https://"),
        ("CODEPARROT_GCP_PROJECT", "BAD", "CODEPARROT_GCP_PROJECT: project 'BAD' is not a valid project id: use your project's id"),
    ],
)
def test_an_invalid_setting_names_its_variable(
    real_mode: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, needle: str
) -> None:
    real_mode.setenv(variable, value)
    assert main(["download", "gs://codeparrot-test-bucket/x"]) == 2
    assert one_error(capsys.readouterr().err).startswith(f"error: invalid GCP settings: {needle}")


def test_an_endpoint_nobody_listens_on_is_connection_refused_at_once(
    real_mode: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    real_mode.setenv("STORAGE_EMULATOR_HOST", endpoint)
    t0 = time.monotonic()
    assert main(["download", "gs://codeparrot-test-bucket/x"]) == 3  # a service failure: retryable
    err = one_error(capsys.readouterr().err)
    assert time.monotonic() - t0 < 10  # not the client's 120 s retry deadline
    assert err.startswith(f"error: Cloud Storage at {endpoint} (STORAGE_EMULATOR_HOST): connection refused: start the emulator")


def test_a_retry_that_gave_up_on_a_refused_connection_says_so() -> None:
    import requests
    from google.api_core import exceptions as gexc

    cause = requests.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded ([Errno 111] Connection refused)")
    with pytest.raises(ServiceError, match=r"^Cloud Storage at http://127\.0\.0\.1:1: connection refused: is it running"), service_errors("Cloud Storage", "http://127.0.0.1:1"):
        raise gexc.RetryError("Timeout of 120.0s exceeded", cause)
