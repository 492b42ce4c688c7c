"""deployments/ against a real `prefect server` (SQLite) and a process worker, as users run them.

One server, one setup (`python deployments/setup.py`) and one `prefect deploy --all` for the module; a
process worker polls gpu-pool. The tests then: read the deployments back; let a flow that always crashes hit
the automation's cap; preempt a training run with SIGTERM (the acceptance test of issue 8); and lose a whole
machine (SIGKILL of the worker and everything under it) so that the heartbeat automation takes over.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from codeparrot.train.config import TrainConfig
from codeparrot.train.identity import default_run_dir
from codeparrot.train.launch import accelerate_command, train_arguments
from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset
from deployments import automations
from tests.deployments.helpers import K8S_TEMPLATE, PREFECT_YAML, REPO, ProcessStack, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CAP = 2
# Prefect's floor for the silent-run window (two 30 s heartbeats): the shortest a test can wait.
HEARTBEAT_WINDOW_S = 60
# Small enough for seconds on 2 cores, long enough (200 steps) that a signal lands mid-run.
TRAIN = TrainConfig(max_steps=200, warmup_steps=5, batch_size=4, seq_length=64, save_every=50, log_every=1, eval_every=100)
TRAIN_PARAMS = {k: getattr(TRAIN, k) for k in ("max_steps", "warmup_steps", "batch_size", "seq_length", "save_every", "log_every", "eval_every")}


@dataclass
class Live:
    """The running stack: server URL, the children's environment, and the worker's CODEPARROT_HOME."""

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

    def start_worker(self, name: str) -> None:
        """A process worker on gpu-pool, one flow run at a time (as on a one-GPU VM), online before returning."""
        self.stack.start(name, [str(BIN / "prefect"), "worker", "start", "--pool", "gpu-pool", "--type", "process", "--limit", "1", "--name", name])

        def online() -> bool:
            with self.client() as client:
                return any(w.name == name and w.status.value == "ONLINE" for w in client.read_workers_for_work_pool("gpu-pool"))

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live-deployments")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # Workers poll every second, so a rescheduled run starts again at once.
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
        CODEPARROT_SRC=str(REPO),
        CODEPARROT_HOME=str(root / "home"),
        # The same arithmetic in the deployment's trainer and the reference run.
        OMP_NUM_THREADS="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    stack = ProcessStack(root, env)
    live = Live(url=url, root=root, home=root / "home", stack=stack)
    try:
        stack.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", url.split(":")[-1].split("/")[0]])
        wait_until(lambda: _healthy(url), timeout=240, interval=1, what=f"prefect server at {url} (log: {root}/server.log)")
        stack.run([sys.executable, "deployments/setup.py", "--max-restarts", str(CAP), "--heartbeat-window", str(HEARTBEAT_WINDOW_S)])
        live.deploy_output = live.prefect("deploy", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)), "--all")
        live.start_worker("gpu-worker")
        yield live
    finally:
        # Block loads here emitted events to this server: flush them before it stops, or the events
        # worker of this test process keeps retrying a dead server and slows every later test.
        from prefect.events.worker import EventsWorker
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            EventsWorker.drain_all(timeout=15)
        stack.stop_all()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("live-corpus")
    data = write_sample_dataset(root / "data", n_files=120)
    return data, train_sample_tokenizer(data, root / "tok", vocab_size=512)


@pytest.fixture(scope="module")
def reference(corpus: tuple[Path, Path], live: Live, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Final weights of an uninterrupted run of TRAIN, launched exactly as the train task launches it."""
    data, tok = corpus
    out = tmp_path_factory.mktemp("live-reference") / "run"
    out.mkdir()
    (out / "train-config.json").write_text(TRAIN.model_dump_json())
    # The command as the worker's task builds it, in the worker's environment (its OMP_NUM_THREADS sets the
    # launcher's threads per process, and the arithmetic must match for identical weights).
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = live.stack.env["OMP_NUM_THREADS"]
    try:
        cmd = accelerate_command(train_arguments(out / "train-config.json", str(data), str(tok), str(out)))
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    live.stack.run(cmd, timeout=600)
    return (out / "final" / "model.safetensors").read_bytes()


def _run_dir(root: Path) -> Path | None:
    """The one run folder under `root`, once training has written its metrics."""
    found = list(root.glob("*/metrics.jsonl"))
    assert len(found) <= 1, found
    return found[0].parent if found else None


def _train_steps(root: Path) -> int:
    run_dir = _run_dir(root)
    if run_dir is None:
        return -1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(line)["step"] for line in lines if line.endswith("}") and '"train"' in line), default=-1)


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]


def test_prefect_deploy_creates_the_deployments(live: Live) -> None:
    assert "Skipping" not in live.deploy_output, live.deploy_output
    with live.client() as client:
        pools = {name: client.read_work_pool(name) for name in ("cpu-pool", "gpu-pool", "gpu-k8s")}
        assert {name: pool.type for name, pool in pools.items()} == {"cpu-pool": "process", "gpu-pool": "process", "gpu-k8s": "kubernetes"}
        assert pools["gpu-k8s"].base_job_template == json.loads(K8S_TEMPLATE.read_text())

        deployments = {d.name: d for d in client.read_deployments(deployment_filter=DeploymentFilter())}
        assert set(deployments) >= {"dataset-refresh", "tokenizer", "train-spot", "train-k8s"}
        refresh = deployments["dataset-refresh"]
        assert refresh.work_pool_name == "cpu-pool"
        [schedule] = refresh.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 3 * * 1", "UTC", True)
        assert refresh.global_concurrency_limit is not None and refresh.global_concurrency_limit.limit == 1
        # Resolved from the variables setup.py wrote: no credentials in this environment, so none named.
        assert refresh.parameters["export"] == {"bucket": "codeparrot-exports"}
        assert refresh.parameters["gcp_credentials_block"] == refresh.parameters["hub_token_block"] == ""
        assert {"export", "download", "curate", "publish"} <= set(refresh.parameter_openapi_schema["properties"])

        for name, pool in (("train-spot", "gpu-pool"), ("train-k8s", "gpu-k8s")):
            train = deployments[name]
            assert train.work_pool_name == pool
            assert automations.DEFAULT_TAG in train.tags
            assert train.job_variables["command"] == "prefect flow-run execute"
            assert train.job_variables["env"]["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
            # The UI renders `config` as a TrainConfig form; data and tokenizer are required fields.
            schema = train.parameter_openapi_schema
            assert set(schema["required"]) == {"data", "tokenizer"}
            assert "TrainConfig" in json.dumps(schema["properties"]["config"])
            assert {"preset", "max_steps", "lr", "save_every"} <= set(schema["definitions"]["TrainConfig"]["properties"])
            # Pulled as written: CODEPARROT_SRC was set in the deploying shell and must not be baked in.
            assert str(REPO) not in json.dumps(train.pull_steps)

        names = {a.name: a for a in client.read_automations()}
        assert names["tokenizer-after-dataset-refresh"].enabled
        assert not names["train-after-tokenizer"].enabled

    # setup.py is idempotent: a rerun updates the pools and replaces the automations, never duplicates them.
    # With credentials in its environment it stores them as Secret blocks and names them in the variables.
    key = {"type": "service_account", "project_id": "codeparrot-test"}
    args = [sys.executable, "deployments/setup.py", "--max-restarts", str(CAP), "--heartbeat-window", str(HEARTBEAT_WINDOW_S)]
    out = live.stack.run(args, HF_TOKEN="hf_test_token", CODEPARROT_GCP_CREDENTIALS_JSON=json.dumps(key))
    assert "work pool gpu-k8s: kubernetes (updated)" in out
    assert "hf_test_token" not in out, "a secret in the output"
    with live.client() as client:
        assert len(client.read_automations_by_name(automations.NAME)) == 1
        assert len(client.read_automations_by_name(automations.SILENT_NAME)) == 1
        assert client.read_variable_by_name("codeparrot_hub_token_block").value == "hf-token"
        assert client.read_variable_by_name("codeparrot_gcp_credentials_block").value == "gcp-credentials"
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: live.url}):
        assert Secret.load("hf-token").get() == "hf_test_token"
        stored = Secret.load("gcp-credentials").get()  # tasks/gcp.py accepts the JSON text or its object
        assert (json.loads(stored) if isinstance(stored, str) else stored) == key


def test_automation_stops_resubmitting_at_its_cap(live: Live, tmp_path: Path) -> None:
    with live.client():
        applied = automations.apply(CAP, heartbeat_window_s=HEARTBEAT_WINDOW_S)
    assert [a.name for a in applied] == [automations.NAME, automations.SILENT_NAME]
    spec = tmp_path / "crash.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "crash-test",
                "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
                "deployments": [
                    {
                        "name": "always-crash",
                        "entrypoint": "tests/deployments/crashing_flow.py:always_crash",
                        "tags": [automations.DEFAULT_TAG],
                        "work_pool": {"name": "gpu-pool", "job_variables": {"command": "prefect flow-run execute"}},
                    }
                ],
            }
        )
    )
    live.prefect("deploy", "--prefect-file", str(spec), "--all")
    run_id = live.run_deployment("always-crash/always-crash")

    def crashed_at_cap() -> bool:
        run = live.flow_run(run_id)
        return run.state.is_crashed() and run.run_count >= CAP + 1

    wait_until(crashed_at_cap, timeout=240, interval=1, what=f"{CAP + 1} crashes; states {live.state_names(run_id)}")
    # Several worker polls later it is still Crashed and was never started again.
    time.sleep(10)
    run = live.flow_run(run_id)
    names = live.state_names(run_id)
    assert run.state.is_crashed() and run.run_count == CAP + 1, names
    assert names.count("AwaitingRetry") == CAP and names.count("Crashed") == CAP + 1, names
    assert names[-1] == "Crashed"


def test_sigterm_reschedules_the_same_flow_run_which_resumes_byte_identical(live: Live, corpus, reference: bytes) -> None:
    """Issue 8's acceptance: a spot VM's SIGTERM to the flow-run process mid-training."""
    data, tok = corpus
    root = live.home / "runs"
    params = {"data": str(data), "tokenizer": str(tok), "config": TRAIN_PARAMS, "evaluate": False}
    run_id = live.run_deployment("training/train-spot", params)

    wait_until(lambda: _train_steps(root) >= 10, timeout=300, interval=0.05, what=f"training steps under {root}")
    # The run folder derives from the config and inputs, not the flow run: a resubmission finds it.
    run_dir = _run_dir(root)
    assert run_dir == default_run_dir(TRAIN, data, tok, root)
    pid = int(live.flow_run(run_id).infrastructure_pid)
    flow_run_process = psutil.Process(pid)
    assert "flow-run" in flow_run_process.cmdline() and "execute" in flow_run_process.cmdline()
    flow_run_process.send_signal(signal.SIGTERM)
    signalled_at = _train_steps(root)

    run = live.wait_final(run_id, timeout=400)
    names = live.state_names(run_id)
    assert run.state.is_completed(), (names, run.state.message, live.stack.log("gpu-worker")[-3000:])
    assert run.run_count == 2
    assert names.index("AwaitingRetry") > names.index("Running"), names
    assert names.count("Running") == 2 and "Crashed" not in names, names
    with live.client() as client:
        same_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[run.deployment_id]))
        assert [r.id for r in client.read_flow_runs(deployment_filter=same_deployment)] == [run_id], "no new run"

    events = _events(run_dir)
    [stop] = [e for e in events if e["event"] == "preempted"]
    assert signalled_at <= stop["step"] < TRAIN.max_steps
    assert [(e["resumed"], e["step"]) for e in events if e["event"] == "start"] == [(False, 0), (True, stop["step"])]
    assert (run_dir / "final" / "model.safetensors").read_bytes() == reference


def test_a_vanished_machine_is_crashed_by_the_heartbeat_automation_and_resumed(live: Live, corpus, reference: bytes, tmp_path: Path) -> None:
    """No SIGTERM at all: the worker and everything under it die; a new worker resumes the same run."""
    data, tok = corpus
    root = tmp_path / "runs"
    params = {"data": str(data), "tokenizer": str(tok), "config": TRAIN_PARAMS, "evaluate": False, "output_root": str(root)}
    run_id = live.run_deployment("training/train-spot", params)

    # Past the first periodic checkpoint (step 50): the resumed run must start at the last committed one.
    wait_until(lambda: _train_steps(root) >= 60, timeout=300, interval=0.05, what=f"training steps under {root}")
    run_dir = _run_dir(root)
    assert run_dir == default_run_dir(TRAIN, data, tok, root)
    assert live.stack.kill_tree("gpu-worker") >= 4, "worker, flow-run process, engine and trainer"
    committed = max(e["step"] for e in _events(run_dir) if e["event"] == "checkpoint")
    live.start_worker("replacement-worker")

    run = live.wait_final(run_id, timeout=HEARTBEAT_WINDOW_S + 300)
    names = live.state_names(run_id)
    assert run.state.is_completed(), (names, run.state.message)
    with live.client() as client:
        messages = [s.message or "" for s in client.read_flow_run_states(run_id)]
    assert any("No heartbeat" in m for m in messages), names
    assert names[names.index("Crashed") + 1] == "AwaitingRetry", names
    assert run.run_count == 2

    events = _events(run_dir)
    assert not [e for e in events if e["event"] == "preempted"], "a SIGKILL leaves no time to checkpoint"
    assert [(e["resumed"], e["step"]) for e in events if e["event"] == "start"] == [(False, 0), (True, committed)]
    assert (run_dir / "final" / "model.safetensors").read_bytes() == reference
