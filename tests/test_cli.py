"""The CLI's error boundary: known failures of other libraries are one line and code 2 (3 when a retry may
help), anything else one line naming the exception and code 1; `--debug` keeps the traceback."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from codeparrot import cli
from codeparrot.env import home

RAISE: list[Callable[[], BaseException]] = []


@click.command("boom")
def boom() -> None:
    """A command that fails with whatever the test put in RAISE."""
    raise RAISE[0]()


def _validation_error() -> BaseException:
    from codeparrot.tokenizer import TokenizerConfig

    try:
        TokenizerConfig(vocab_size=5)
    except ValueError as exc:
        return exc
    raise AssertionError("no error")


def _arrow_error() -> BaseException:
    import pyarrow as pa

    return pa.ArrowInvalid("Parquet magic bytes not found in footer.")


def _refused() -> BaseException:
    import requests

    exc = requests.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): [Errno 111] Connection refused")
    exc.request = requests.Request("GET", "http://127.0.0.1:9/storage/v1/b").prepare()
    return exc


def _no_credentials() -> BaseException:
    from google.auth.exceptions import DefaultCredentialsError

    return DefaultCredentialsError("Your default credentials were not found.")


def _wrapped_disk_full() -> BaseException:
    try:
        raise OSError(errno.ENOSPC, "No space left on device", str(home() / "tokens" / "x.bin"))
    except OSError as exc:
        wrapped = RuntimeError("enforce fail at inline_container.cc:603] . unexpected pos 123")
        wrapped.__cause__ = exc
        return wrapped


@pytest.mark.parametrize(
    ("make", "code", "line"),
    [
        (lambda: OSError(errno.ENOSPC, "No space left on device", "/data/out/x.bin"), 2,
         "error: no space left on device writing /data/out/x.bin: free space or point the output elsewhere"),
        (_wrapped_disk_full, 2, "error: no space left on device writing {home}/tokens/x.bin: free space or point CODEPARROT_HOME elsewhere"),
        (_validation_error, 2, "error: invalid TokenizerConfig: vocab_size: Input should be greater than or equal to 300"),
        (_arrow_error, 2, "error: unreadable Arrow/Parquet data: Parquet magic bytes not found in footer.: fetch or publish the dataset again"),
        (_refused, 3, "error: cannot connect to http://127.0.0.1:9/storage/v1/b: connection refused; is it running? retry later"),
        (_no_credentials, 2, "error: no usable Google credentials: Your default credentials were not found.: set GOOGLE_APPLICATION_CREDENTIALS"),
        (lambda: json.JSONDecodeError("Expecting value", "{x", 1), 2, "error: invalid JSON (Expecting value: line 1 column 2)"),
        (lambda: FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such"), 2, "error: /no/such: No such file or directory"),
        (lambda: RuntimeError("boom\nsecond line"), 1, "error: unexpected RuntimeError: boom (rerun with --debug for the traceback)"),
        (lambda: KeyError("k"), 1, "error: unexpected KeyError: 'k' (rerun with --debug for the traceback)"),
    ],
)
def test_failures_are_one_line_with_their_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], make: Callable[[], BaseException], code: int, line: str
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "boom", ("tests.test_cli:boom", "fails"))
    RAISE.append(make)
    try:
        assert cli.main(["boom"]) == code
    finally:
        RAISE.clear()
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.strip().startswith(line.format(home=home()))


def test_debug_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "boom", ("tests.test_cli:boom", "fails"))
    RAISE.append(lambda: OSError(errno.ENOSPC, "No space left on device", "/x"))
    try:
        with pytest.raises(OSError, match="No space left"):
            cli.main(["--debug", "boom"])
    finally:
        RAISE.clear()


def test_writing_names_the_path_and_the_setting(tmp_path: Path) -> None:
    from codeparrot.errors import DiskFull, writing

    full = pytest.raises(DiskFull, match=r"^no space left on device writing /dev/full: free space or point --json elsewhere$")
    with full, writing("/dev/full", "--json"), open("/dev/full", "w") as fh:
        fh.write("x" * 10_000)
        fh.flush()
    with pytest.raises(ValueError, match="other"), writing(tmp_path, "OUT"):
        raise ValueError("other")  # not a full disk: passes through
