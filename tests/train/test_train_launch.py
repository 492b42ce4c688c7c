"""Supervising `accelerate launch -m codeparrot.train`: signal forwarding, outcome, log tail."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from codeparrot.train.config import TrainConfig
from codeparrot.train.launch import MetricsTail, accelerate_command, supervise, train_arguments
from tests.train.helpers import child_env


def test_metrics_tail_returns_only_complete_new_lines(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"event": "old"}\n')
    tail = MetricsTail(path)
    assert tail.read() == []
    with open(path, "a") as fh:
        fh.write('{"event": "a", "step": 1}\n{"event": "b", "st')
    assert tail.read() == [{"event": "a", "step": 1}]
    with open(path, "a") as fh:
        fh.write('ep": 2}\n')
    assert tail.read() == [{"event": "b", "step": 2}]


def test_failed_child_reports_code_and_log_tail(tmp_path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('x' * 9000); print('boom: bad input', file=sys.stderr); sys.exit(3)"]
    outcome = supervise(cmd, metrics_path=tmp_path / "m.jsonl", log_path=tmp_path / "log.txt", poll_seconds=0.05)
    assert outcome.returncode == 3 and not outcome.completed and not outcome.preempted
    assert outcome.log_tail.endswith("boom: bad input\n") and len(outcome.log_tail) <= 4000


@pytest.mark.slow
def test_sigterm_to_the_supervisor_reaches_the_trainer_through_accelerate(corpus, tmp_path) -> None:
    # accelerate's single-process launcher dies on SIGTERM without passing it on; the supervisor must
    # signal the trainer itself, wait for its checkpoint, then hand the signal back to its caller.
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(
        max_steps=200, batch_size=8, seq_length=64, log_every=1, eval_every=1000, eval_sequences=32,
        token_cache=str(corpus.token_cache),
    )
    config_file = out / "train-config.json"
    config_file.write_text(config.model_dump_json())
    cmd = accelerate_command(train_arguments(config_file, str(corpus.tokenizer), str(out), data=str(corpus.data)))
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    sent: list[int] = []

    def on_event(event: dict) -> None:
        if event["event"] == "train" and event["step"] >= 5 and not sent:
            sent.append(event["step"])
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        outcome = supervise(
            cmd, metrics_path=out / "metrics.jsonl", log_path=out / "train.log", on_event=on_event,
            poll_seconds=0.05, env=child_env(),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent, outcome.log_tail
    assert outcome.preempted and not outcome.completed, outcome.log_tail
    assert outcome.forwarded_signal == signal.SIGTERM and received == [signal.SIGTERM]
    stop = next(e for e in outcome.events if e["event"] == "preempted")
    assert sent[0] <= stop["step"] < 200
    assert (out / "checkpoints" / f"step-{stop['step']:08d}" / "COMMITTED").is_file()

    # the same command again resumes and finishes (what the task retry does)
    outcome = supervise(cmd, metrics_path=out / "metrics.jsonl", log_path=out / "train.log", env=child_env())
    assert outcome.completed, outcome.log_tail
    assert outcome.final == str(out / "final")
    start = next(e for e in outcome.events if e["event"] == "start")
    assert start["resumed"] and start["step"] == stop["step"]


def test_the_trainer_environment_keeps_large_buffers_in_the_heap_unless_the_user_says_otherwise(monkeypatch) -> None:
    from codeparrot.train.launch import ALLOCATOR_ENV, trainer_environment

    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "123")
    env = trainer_environment({"HF_TOKEN": "t"})
    assert env["MALLOC_MMAP_MAX_"] == ALLOCATOR_ENV["MALLOC_MMAP_MAX_"] == "0"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "123" and env["HF_TOKEN"] == "t"
    assert env["PATH"] == os.environ["PATH"]
