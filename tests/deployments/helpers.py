"""Helpers of the deployment tests: the files under deployments/ as Prefect reads them, and child processes."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deployments" / "k8s-gpu-job-template.json"

T = TypeVar("T")


def prefect_yaml() -> dict[str, Any]:
    """deployments/prefect.yaml as `prefect deploy` loads it (yaml.safe_load, anchors and merge keys applied)."""
    return yaml.safe_load(PREFECT_YAML.read_text())


def deployments_by_name() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in prefect_yaml()["deployments"]}


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class ProcessStack:
    """Child processes of a test, each in its own session with a log file; `stop_all` ends their whole trees."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, args: list[str], timeout: float = 300, **env: str) -> str:
        """Run a command to completion (extra environment in `env`); its output, or an error that shows it."""
        done = subprocess.run(
            args, cwd=REPO, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout, check=False
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
        return output

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_tree(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal a child and every descendant at once (a machine going away); how many were signalled."""
        proc = self.procs.pop(name)
        tree = _tree(proc.pid)
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        proc.wait(timeout=30)
        return len(tree)

    def stop_all(self, grace: float = 20) -> None:
        """SIGTERM every child's tree (descendants collected first: trainers run in their own sessions)."""
        trees = [_tree(proc.pid) for proc in reversed(self.procs.values())]
        for tree in trees:
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            _, alive = psutil.wait_procs(tree, timeout=grace)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
