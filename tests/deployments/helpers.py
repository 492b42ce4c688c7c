"""Helpers of the deployment tests: the files under deployments/ as Prefect reads them, and child processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deployments" / "k8s-gpu-job-template.json"

T = TypeVar("T")


# What deployments/setup.py stores by default, for the tests that resolve `{{ prefect.variables.* }}`.
SETUP_VARIABLES = {
    "codeparrot_gcs_bucket": "codeparrot-exports",
    "codeparrot_hub_root": "gs://codeparrot-hub",
    "codeparrot_artifact_root": "gs://codeparrot-artifacts",
    "codeparrot_gcp_credentials_block": "",
    "codeparrot_hub_token_block": "",
}


def prefect_yaml(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """deployments/prefect.yaml as `prefect deploy` loads it (yaml.safe_load, anchors and merge keys applied),
    with `{{ prefect.variables.NAME }}` replaced from `variables` when given, as deploying resolves them."""
    text = PREFECT_YAML.read_text()
    if variables is not None:
        text = re.sub(r"\{\{\s*prefect\.variables\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], text)
    return yaml.safe_load(text)


def deployments_by_name(variables: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in prefect_yaml(variables)["deployments"]}


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

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a child with its own log; `env` and `cwd` replace the stack's (another machine's settings)."""
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, cwd=cwd or REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
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


# ---------------------------------------------------------------------------- a live Prefect stack

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class Live:
    """The running stack: server URL, the children's environment, and the default worker's CODEPARROT_HOME."""

    url: str
    root: Path
    home: Path
    stack: ProcessStack
    deploy_output: str = ""

    @contextmanager
    def client(self) -> Iterator[Any]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            yield client

    def prefect(self, *args: str, timeout: float = 300) -> str:
        return self.stack.run([str(BIN / "prefect"), "--no-prompt", *args], timeout=timeout)

    def start_worker(self, name: str, pool: str = "gpu-pool", *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        """A process worker, one flow run at a time (as on a one-GPU VM), online before returning; `env` and
        `cwd` make it another machine's."""
        args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--limit", "1", "--name", name]
        self.stack.start(name, args, env=env, cwd=cwd)

        def online() -> bool:
            with self.client() as client:
                return any(w.name == name and w.status.value == "ONLINE" for w in client.read_workers_for_work_pool(pool))

        wait_until(online, timeout=180, interval=1, what=f"worker {name} online (log: {self.root / name}.log)")

    def run_deployment(self, name: str, params: dict[str, Any] | None = None) -> uuid.UUID:
        """`prefect deployment run NAME --params JSON`, as the UI's custom run does; the new flow run's id."""
        out = self.prefect("deployment", "run", name, *(["--params", json.dumps(params)] if params is not None else []))
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, out
        return uuid.UUID(match.group(1))

    def flow_run(self, run_id: uuid.UUID) -> Any:
        with self.client() as client:
            return client.read_flow_run(run_id)

    def state_names(self, run_id: uuid.UUID) -> list[str]:
        with self.client() as client:
            return [s.name for s in client.read_flow_run_states(run_id)]

    def wait_final(self, run_id: uuid.UUID, timeout: float) -> Any:
        """The run once Completed, Failed or Cancelled (Crashed is not final here: the automation resubmits)."""

        def final() -> Any:
            run = self.flow_run(run_id)
            return run if run.state.is_completed() or run.state.is_failed() or run.state.is_cancelled() else None

        return wait_until(final, timeout=timeout, interval=1, what=f"flow run {run_id} to finish; states {self.state_names(run_id)}")


@contextmanager
def live_stack(root: Path, *, ui: bool = False, **env_extra: str) -> Iterator[Live]:
    """A real `prefect server` (SQLite) under `root`, its URL in the children's environment; stopped after.
    With `ui`, the server also serves the Prefect UI (built into root/ui, not into the installed package)."""
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="true" if ui else "false",
        PREFECT_UI_STATIC_DIRECTORY=str(root / "ui"),
        PREFECT_UI_API_URL=url,
        # Workers poll every second, so a rescheduled run starts again at once.
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
        CODEPARROT_SRC=str(REPO),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        **env_extra,
    )
    stack = ProcessStack(root, env)
    live = Live(url=url, root=root, home=Path(env.get("CODEPARROT_HOME", root / "home")), stack=stack)
    try:
        stack.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", url.split(":")[-1].split("/")[0]])
        wait_until(lambda: healthy(url), timeout=240, interval=1, what=f"prefect server at {url} (log: {root}/server.log)")
        yield live
    finally:
        # Block loads here emitted events to this server: flush them before it stops, or the events
        # worker of this test process keeps retrying a dead server and slows every later test.
        from prefect.events.worker import EventsWorker
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            EventsWorker.drain_all(timeout=15)
        stack.stop_all()
