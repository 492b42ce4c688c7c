"""Helpers of the training tests: run the CLI as a child process and read its metrics events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Corpus:
    data: Path
    tokenizer: Path
    token_cache: Path


def prebuild_tokens(data: Path, tokenizer: Path, token_cache: Path) -> Path:
    """The token set `codeparrot train --data D --tokenizer T --token-cache C` uses, built now; its folder."""
    from codeparrot.train.data import prepare_tokens

    return prepare_tokens(data, tokenizer, token_cache)


# The run the resume tests interrupt: tiny model, 64-token context, 40 steps of 8 sequences.
RUN_DEFAULTS: dict[str, Any] = {
    "preset": "tiny",
    "max_steps": 40,
    "batch_size": 8,
    "seq_length": 64,
    "save_every": 10,
    "seed": 1,
    "log_every": 1,
    "eval_every": 20,
    "eval_sequences": 64,
}


def cli_args(corpus: Corpus, out: Path, **options: Any) -> list[str]:
    """`codeparrot train` arguments for `out`, RUN_DEFAULTS overridden by `options` (None drops one)."""
    opts = {**RUN_DEFAULTS, "token_cache": corpus.token_cache, **options}
    args = ["--data", str(corpus.data), "--tokenizer", str(corpus.tokenizer), "--output", str(out)]
    for key, value in opts.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: the same arithmetic in every run, and OpenMP's spinning threads collapse
    # on a shared 2-core machine.
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("CODEPARROT_HOME", str(Path(env.get("TMPDIR", "/tmp")) / "codeparrot-train-tests"))
    env.update(extra)
    return env


def start_training(corpus: Corpus, out: Path, *, launcher: list[str] | None = None, env: dict[str, str] | None = None, **options: Any) -> subprocess.Popen[bytes]:
    """Start `python -m codeparrot.train` (or `launcher + [-m codeparrot.train]`) with output to a log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*(launcher or [sys.executable]), "-m", "codeparrot.train", *cli_args(corpus, out, **options)]
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or child_env())
    finally:
        log.close()


def run_training(corpus: Corpus, out: Path, timeout: float = 300, **options: Any) -> int:
    proc = start_training(corpus, out, **options)
    return proc.wait(timeout=timeout)


def events(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for_event(
    out: Path, proc: subprocess.Popen[bytes], predicate: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> dict[str, Any]:
    """Poll the metrics file until an event matches; fails if the process exits or time runs out first."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        evs = events(out)
        for event in evs[seen:]:
            if predicate(event):
                return event
        seen = len(evs)
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before the awaited event; see {out}.log")
        time.sleep(0.01)
    raise AssertionError(f"no matching metrics event within {timeout} s; see {out}.log")


def log_text(out: Path) -> str:
    path = out.parent / f"{out.name}.log"
    return path.read_text(errors="replace") if path.exists() else ""
