"""deployments/ against a real `prefect server` (SQLite) and a process worker, as users run them.

One server, one setup (`python deployments/setup.py`) and one `prefect deploy --all` for the module; a
process worker polls gpu-pool. The tests then: read the deployments back; let a flow that always crashes hit
the automation's cap; and preempt a training run with SIGTERM (the acceptance test of issue 8). A whole
machine lost (SIGKILL, an empty disk after) is tests/deployments/test_two_machines.py's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from codeparrot.artifacts import local_identity
from codeparrot.train.config import TrainConfig
from codeparrot.train.identity import default_run_dir
from codeparrot.train.launch import accelerate_command, train_arguments
from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset
from deployments import automations
from tests.deployments.helpers import K8S_TEMPLATE, PREFECT_YAML, REPO, Live, live_stack, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CAP = 2
# Prefect's floor for the silent-run window (two 30 s heartbeats): the shortest a test can wait.
HEARTBEAT_WINDOW_S = 60
# Small enough for seconds on 2 cores, long enough (200 steps) that a signal lands mid-run.
TRAIN = TrainConfig(max_steps=200, warmup_steps=5, batch_size=4, seq_length=64, save_every=50, log_every=1, eval_every=100)
TRAIN_PARAMS = {k: getattr(TRAIN, k) for k in ("max_steps", "warmup_steps", "batch_size", "seq_length", "save_every", "log_every", "eval_every")}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live-deployments")
    # The same arithmetic in the deployment's trainer and the reference run.
    with live_stack(root, CODEPARROT_HOME=str(root / "home"), OMP_NUM_THREADS="1") as live:
        live.stack.run([sys.executable, "deployments/setup.py", "--max-restarts", str(CAP), "--heartbeat-window", str(HEARTBEAT_WINDOW_S)])
        live.deploy_output = live.prefect("deploy", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)), "--all")
        live.start_worker("gpu-worker")
        yield live


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
        cmd = accelerate_command(train_arguments(out / "train-config.json", str(tok), str(out), data=str(data)))
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
        assert set(deployments) >= {"dataset-refresh", "tokenizer", "pretokenize", "train-spot", "train-k8s"}
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
            # The UI renders `config` as a TrainConfig form; data and tokenizer default to the Hub heads.
            schema = train.parameter_openapi_schema
            assert schema["properties"]["data"]["default"] == "hf://datasets/codeparrot/codeparrot-clean"
            assert train.parameters["checkpoint_root"] == "gs://codeparrot-artifacts/checkpoints"
            assert "TrainConfig" in json.dumps(schema["properties"]["config"])
            assert {"preset", "max_steps", "lr", "save_every"} <= set(schema["definitions"]["TrainConfig"]["properties"])
            # Pulled as written: CODEPARROT_SRC was set in the deploying shell and must not be baked in.
            assert str(REPO) not in json.dumps(train.pull_steps)

        names = {a.name: a for a in client.read_automations()}
        assert all(names[n].enabled for n in ("tokenizer-after-dataset-refresh", "pretokenize-after-tokenizer", "train-after-pretokenize"))

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
    assert run_dir == default_run_dir(TRAIN, local_identity(data), local_identity(tok), root)
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
