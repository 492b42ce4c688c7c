"""Run training as an `accelerate launch` child and supervise it: signals, metrics, outcome.

Neither of accelerate's launchers passes SIGTERM on the way we need: the single-process launcher dies at
once and leaves its child running unsignalled; the multi-process one (torch elastic) forwards it but
starts workers in their own sessions, so signalling the launcher's process group misses them. So the
supervisor signals every process of the child's tree itself, then waits until all of them are gone (the
checkpoint is written by then), and reads the outcome from the run's metrics events, because both
launchers turn the trainer's exit code 143 into 1.

Data parallel on CPU: `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.x runs
multi-process CPU only under mpirun); `--multi_gpu --num_processes 2` on a machine without GPUs starts
two, and the trainer asks for `Accelerator(cpu=True)`, which then uses gloo.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from codeparrot.train.errors import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free right now, for the rendezvous of a multi-process run (several runs may share a host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def threads_per_process(num_processes: int) -> int:
    """OMP_NUM_THREADS when the user set it, else this machine's CPUs shared among the processes."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, num_processes))


# glibc serves allocations above 32 MiB (its mmap threshold's ceiling) with mmap and unmaps them on free, so
# a CPU step of the tiny model (8 x 128 x 32,768 fp32 logits: 128 MiB, several such buffers per step)
# faults them in again every step: 27 % of the trainer's time was in the kernel. Heap allocations that are
# kept instead (same numbers, ~30 % more resident memory): 1,115 -> 1,385 tokens/s on 2 cores, measured.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}


def trainer_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for the training child, with the allocator settings unless already set."""
    env = {**os.environ, **(extra or {})}
    for key, value in ALLOCATOR_ENV.items():
        env.setdefault(key, value)
    return env


def accelerate_command(train_args: Sequence[str], *, num_processes: int = 1) -> list[str]:
    """`accelerate launch ... -m codeparrot.train ARGS` with every launcher setting explicit (no warnings)."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), "--num_machines", "1",
        # The trainer sets its own precision (TrainConfig.mixed_precision) and compiles itself.
        "--mixed_precision", "no", "--dynamo_backend", "no",
        # accelerate otherwise exports OMP_NUM_THREADS=1 to each process: half the speed on 2 CPU cores.
        "--num_cpu_threads_per_process", str(threads_per_process(num_processes)),
    ]
    if num_processes > 1:
        # Data parallel through torch elastic; on a machine without GPUs the trainer selects gloo on CPU.
        cmd += ["--multi_gpu", "--main_process_port", str(free_port())]
    return [*cmd, "-m", "codeparrot.train", *train_args]


def train_arguments(
    config_file: str | os.PathLike[str], tokenizer: str, output: str, *, data: str | None = None,
    tokens: str | None = None, restart: bool = False,
) -> list[str]:  # fmt: skip
    args = ["--config", str(config_file), "--tokenizer", str(tokenizer), "--output", str(output)]
    args += ["--data", str(data)] if data is not None else []
    args += ["--restart"] if restart else []
    return args + (["--tokens", str(tokens)] if tokens is not None else [])


@dataclass
class ChildOutcome:
    """How one launch ended: its exit code, the metrics events it wrote, the tail of its log."""

    returncode: int
    events: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    forwarded_signal: int | None = None

    @property
    def completed(self) -> bool:
        return self.returncode == 0 and any(e.get("event") == "completed" for e in self.events)

    @property
    def preempted(self) -> bool:
        """Stopped on a signal after checkpointing: resumable by running the same command again."""
        if any(e.get("event") == "preempted" for e in self.events):
            return True
        return self.returncode in (PREEMPTED_EXIT_CODE, -signal.SIGTERM)

    @property
    def final(self) -> str | None:
        done = [e for e in self.events if e.get("event") == "completed"]
        return done[-1]["final"] if done else None


class MetricsTail:
    """Reads the complete JSON lines appended to a metrics file since construction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                log.debug("skipping a malformed metrics line in %s", self.path)
        return events


def supervise(
    cmd: Sequence[str],
    *,
    metrics_path: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    on_event: Callable[[dict[str, Any]], None] | None = None,
    poll_seconds: float = 0.5,
    env: dict[str, str] | None = None,
    stop_grace_seconds: float = 300.0,
    tail_chars: int = 4000,
    forward_signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
) -> ChildOutcome:
    """Run `cmd` in its own session, forward SIGTERM/SIGINT to its whole tree, stream its metrics events.

    A signal received while the child runs is forwarded, the child is given `stop_grace_seconds` to
    checkpoint and exit, then the signal is delivered again to this process's own handler. A signal left
    out of `forward_signals` keeps the caller's handler; if that handler raises, the tree is stopped the
    same way (SIGTERM, wait) before the exception propagates.
    """
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail = MetricsTail(metrics_path)
    events: list[dict[str, Any]] = []
    with open(log_file, "ab") as fh:
        log_start = fh.tell()
        fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tree = ProcessTree(proc.pid)
    received: list[int] = []
    previous: dict[int, Any] = {}

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        log.warning("forwarding %s to the training processes", signal.Signals(signum).name)
        tree.signal(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in forward_signals:
            previous[sig] = signal.signal(sig, forward)

    def drain() -> None:
        for event in tail.read():
            events.append(event)
            if on_event is not None:
                on_event(event)

    try:
        while proc.poll() is None:
            tree.refresh()
            drain()
            time.sleep(poll_seconds)
        # The launcher is gone; its workers may still be writing the checkpoint.
        tree.wait_gone(stop_grace_seconds)
        drain()
    except BaseException:
        tree.signal(signal.SIGTERM)
        tree.wait_gone(stop_grace_seconds)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    outcome = ChildOutcome(proc.returncode, events, _read_tail(log_file, log_start, tail_chars), received[-1] if received else None)
    if received:
        signal.raise_signal(received[-1])
    return outcome


class ProcessTree:
    """A process and every descendant seen so far (they outlive their parent when it dies first)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.members: dict[int, psutil.Process] = {pid: self.root}

    def refresh(self) -> None:
        try:
            for child in self.root.children(recursive=True):
                self.members.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def alive(self) -> list[psutil.Process]:
        live = []
        for p in self.members.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
            except psutil.Error:
                continue
        return live

    def signal(self, signum: int) -> None:
        self.refresh()
        for p in self.alive():
            try:
                p.send_signal(signum)
            except psutil.Error:
                continue

    def wait_gone(self, timeout: float) -> None:
        """Wait until every member exited; SIGKILL what is left after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                log.error("training processes still running %.0f s after stop; killing them", timeout)
                self.signal(signal.SIGKILL)
                break
            time.sleep(0.2)


def _read_tail(path: Path, start: int, chars: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    return text[-chars:]
