"""Acceptance: a run stopped by SIGTERM or SIGKILL and rerun ends with the same bytes as an unbroken run.

Each test drives the real CLI (`python -m codeparrot.train`) as a child process, as a preempted VM would.
"""

from __future__ import annotations

import http.server
import signal
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from codeparrot.train.checkpoint import LocalStore
from codeparrot.train.errors import PREEMPTED_EXIT_CODE
from tests.train.helpers import (
    RUN_DEFAULTS,
    child_env,
    events,
    log_text,
    run_training,
    start_training,
    wait_for_event,
)

MAX_STEPS = RUN_DEFAULTS["max_steps"]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> bytes:
    """The final weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_training(corpus, out) == 0, log_text(out)
    return (out / "final" / "model.safetensors").read_bytes()


def _interrupt_at(corpus, out: Path, step: int) -> tuple[int, float, dict]:
    """Start (or resume) the run, SIGTERM it once it passed `step`; returns exit code, signal time, stop event."""
    proc = start_training(corpus, out)
    wait_for_event(out, proc, lambda e: e["event"] == "train" and e["step"] >= step)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    stopped = [e for e in events(out) if e["event"] == "preempted"]
    return code, sent, stopped[-1] if stopped else {}


@pytest.mark.slow
def test_sigterm_twice_then_rerun_is_byte_identical(corpus, tmp_path, reference) -> None:
    out = tmp_path / "run"
    code, sent, first = _interrupt_at(corpus, out, 7)
    assert code == PREEMPTED_EXIT_CODE, log_text(out)
    assert 7 <= first["step"] < MAX_STEPS
    # exit 143 after a committed checkpoint, written within 10 s of the signal
    stop_ckpt = [e for e in events(out) if e["event"] == "checkpoint" and e["step"] == first["step"]]
    assert stop_ckpt and stop_ckpt[-1]["time"] - sent < 10
    assert first["step"] in LocalStore(out / "checkpoints").committed_steps()

    code, _, second = _interrupt_at(corpus, out, max(23, first["step"] + 3))
    assert code == PREEMPTED_EXIT_CODE, log_text(out)
    assert first["step"] < second["step"] < MAX_STEPS

    assert run_training(corpus, out) == 0, log_text(out)
    starts = [e for e in events(out) if e["event"] == "start"]
    assert [(s["resumed"], s["step"]) for s in starts] == [(False, 0), (True, first["step"]), (True, second["step"])]
    assert (out / "final" / "model.safetensors").read_bytes() == reference


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_periodic_checkpoint_byte_identical(corpus, tmp_path, reference) -> None:
    out = tmp_path / "run"
    proc = start_training(corpus, out)
    wait_for_event(out, proc, lambda e: e["event"] == "checkpoint" and e["step"] == 20)
    wait_for_event(out, proc, lambda e: e["event"] == "train" and e["step"] >= 23)
    proc.kill()
    proc.wait(timeout=60)
    assert LocalStore(out / "checkpoints").latest() in (20, 30)
    latest = LocalStore(out / "checkpoints").latest()

    assert run_training(corpus, out) == 0, log_text(out)
    resumed = [e for e in events(out) if e["event"] == "start"][-1]
    assert resumed["resumed"] and resumed["step"] == latest
    assert (out / "final" / "model.safetensors").read_bytes() == reference


class _Metadata(http.server.BaseHTTPRequestHandler):
    """A stand-in for the GCE metadata server: `instance/preempted` turns TRUE once `preempted` is set."""

    preempted = threading.Event()
    seen_flavor: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen_flavor.append(self.headers.get("Metadata-Flavor", ""))
        body = b"TRUE" if self.preempted.is_set() else b"FALSE"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_preemption_notice_from_the_metadata_server_stops_like_sigterm(corpus, tmp_path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/computeMetadata/v1/instance/preempted"
    out = tmp_path / "run"
    try:
        # a longer run, so that it cannot finish before the notice is seen
        proc = start_training(corpus, out, max_steps=2000, preemption_url=url, preemption_poll_seconds=0.2)
        wait_for_event(out, proc, lambda e: e["event"] == "train" and e["step"] >= 3)
        _Metadata.preempted.set()
        code = proc.wait(timeout=120)
    finally:
        server.shutdown()
    assert code == PREEMPTED_EXIT_CODE, log_text(out)
    stop = [e for e in events(out) if e["event"] == "preempted"][-1]
    assert stop["reason"] == "preemption notice" and stop["step"] < 2000
    assert LocalStore(out / "checkpoints").latest() == stop["step"]
    assert "Google" in _Metadata.seen_flavor


@pytest.mark.slow
def test_two_process_gloo_run_trains_and_resumes(corpus, tmp_path) -> None:
    from codeparrot.train.launch import ProcessTree, accelerate_command

    out = tmp_path / "ddp"
    launcher = accelerate_command([], num_processes=2)[: -len(["-m", "codeparrot.train"])]
    env = child_env(OMP_NUM_THREADS="1")
    options = {"max_steps": 24, "save_every": 5, "batch_size": 4, "grad_accum": 2}
    proc = start_training(corpus, out, launcher=launcher, env=env, **options)
    tree = ProcessTree(proc.pid)
    wait_for_event(out, proc, lambda e: e["event"] == "train" and e["step"] >= 6, timeout=300)
    tree.refresh()
    tree.signal(signal.SIGTERM)  # what a preempted VM does: every process gets it
    proc.wait(timeout=120)
    tree.wait_gone(60)
    stop = [e for e in events(out) if e["event"] == "preempted"]
    assert stop, log_text(out)
    step = stop[-1]["step"]
    ckpt_dir = out / "checkpoints" / f"step-{step:08d}"
    assert (ckpt_dir / "COMMITTED").is_file()
    assert (ckpt_dir / "rng-00000.pt").is_file() and (ckpt_dir / "rng-00001.pt").is_file()

    proc = start_training(corpus, out, launcher=launcher, env=env, **options)
    assert proc.wait(timeout=300) == 0, log_text(out)
    start = [e for e in events(out) if e["event"] == "start"][-1]
    assert start["resumed"] and start["step"] == step and start["world_size"] == 2
    assert (out / "final" / "model.safetensors").is_file()
    trained = [e["step"] for e in events(out) if e["event"] == "train"]
    assert trained[-1] == 24



@pytest.mark.slow
def test_two_trainers_on_one_folder_one_fails_at_once_naming_the_other(corpus, tmp_path, reference) -> None:
    # Started together with a checkpoint every step, as in the report: before the run lock one died
    # with "Parent directory .../step-00000003.tmp does not exist" and both appended to one metrics file.
    out = tmp_path / "run"
    out.mkdir()
    alias = tmp_path / "alias"  # the same folder by another name, so each process has a log of its own
    alias.symlink_to(out)
    procs = {name: start_training(corpus, tmp_path / name, save_every=1) for name in ("run", "alias")}
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    loser = next(name for name, p in procs.items() if p.poll() is not None)
    winner = "alias" if loser == "run" else "run"
    assert procs[loser].returncode == 2, log_text(tmp_path / loser)
    message = log_text(tmp_path / loser).strip().splitlines()[-1]
    assert f"is in use by pid {procs[winner].pid}" in message and "Traceback" not in log_text(tmp_path / loser)

    assert procs[winner].wait(timeout=300) == 0, log_text(tmp_path / winner)
    assert [e["event"] for e in events(out)].count("start") == 1  # one run wrote the metrics
    assert (out / "final" / "model.safetensors").read_bytes() == reference
