"""Two machines that share only the Prefect API and a bucket: the chain by events alone, and a lost spot VM.

A real `prefect server` (SQLite), `deployments/setup.py` and `prefect deploy --all`, then two process
workers standing in for two VMs: one on cpu-pool (it reaches BigQuery, as the data pool does), one on
gpu-pool (CPU hardware standing in). Each has its own empty CODEPARROT_HOME, TMPDIR, PREFECT_HOME and
working folder; they share the Prefect API and the GCS emulator, where the Hub stand-in, the token sets
and the checkpoints live. The module runs:

1. one `prefect deployment run` of dataset-refresh, which leads through the events alone to a completed
   training run on the GPU worker, whose parameters name exact revisions, and a published model;
2. the same training started as from the UI, its GPU worker SIGKILLed mid-run with its flow-run process
   tree and its home deleted (the VM is gone); a new worker with a new empty home resumes the same flow
   run from the gs:// checkpoints, and the final weights equal the uninterrupted run's byte for byte.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
)

from codeparrot.artifacts import Resolver
from codeparrot.gcp import GCPConfig
from codeparrot.hub import HubSettings, open_hub
from codeparrot.services.emulators import EmbeddedServices
from codeparrot.storage import GCSStore
from tests.builders import SRC_PROJECT, load_source, python_source
from tests.deployments.helpers import PREFECT_YAML, REPO, Live, live_stack, wait_until

pytestmark = pytest.mark.slow

CAP = 2
HEARTBEAT_WINDOW_S = 60  # Prefect's floor for the silent-run automation (two 30 s heartbeats)
# A tiny run: long enough (200 steps) that a kill lands after the first checkpoint (step 50) and well before the end.
TRAIN = {"preset": "tiny", "max_steps": 200, "warmup_steps": 5, "batch_size": 4, "seq_length": 64, "save_every": 50,
         "log_every": 1, "eval_every": 100}  # fmt: skip
EVAL = {"run_humaneval": False, "max_perplexity_blocks": 8}
TOKENIZER = {"vocab_size": 600, "baseline_vocab_size": 300}
# A run's flow-run parameters must reproduce it: every reference pinned to a revision.
PINNED_DATASET = re.compile(r"^hf://datasets/codeparrot/codeparrot-clean@[0-9a-f]{12}$")
PINNED_TOKENIZER = re.compile(r"^hf://codeparrot/codeparrot-tokenizer@[0-9a-f]{12}$")
TOKEN_SET = re.compile(r"^gs://codeparrot-artifacts/tokens/[0-9a-f]{12}-[0-9a-f]{12}$")


@dataclass
class Machine:
    """One VM: its own disk (home, temp, Prefect home, working folder) and environment."""

    name: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @classmethod
    def new(cls, live: Live, name: str, **shared: str) -> Machine:
        root = live.root / "machines" / name
        for sub in ("home", "tmp", "prefect", "work"):
            (root / sub).mkdir(parents=True)
        env = {k: v for k, v in live.stack.env.items() if not k.startswith(("CODEPARROT_", "STORAGE_EMULATOR"))}
        env.update(CODEPARROT_HOME=str(root / "home"), TMPDIR=str(root / "tmp"), PREFECT_HOME=str(root / "prefect"),
                   CODEPARROT_SRC=str(REPO), OMP_NUM_THREADS="1", **shared)  # fmt: skip
        return cls(name, root, env)

    def home_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*") if p.is_file())


@dataclass
class Cluster:
    live: Live
    gcs: str
    storage_env: dict[str, str]
    cpu: Machine
    gpu: Machine
    gpu_files_before: list[str]


def _deployment_id(live: Live, name: str) -> uuid.UUID:
    with live.client() as client:
        [dep] = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
    return dep.id


def _set_parameters(live: Live, name: str, **updates: Any) -> None:
    """What a user does in the UI's deployment edit: change some default parameters, keep the rest."""
    from prefect.client.schemas.actions import DeploymentUpdate

    with live.client() as client:
        [dep] = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
        client.update_deployment(dep.id, DeploymentUpdate(parameters={**dep.parameters, **updates}))


def _runs(live: Live, deployment: str) -> list[Any]:
    with live.client() as client:
        deployment_id = _deployment_id(live, deployment)
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def _one_final_run(live: Live, deployment: str, timeout: float) -> Any:
    def done() -> Any:
        runs = _runs(live, deployment)
        final = [r for r in runs if r.state.is_completed() or r.state.is_failed() or r.state.is_cancelled()]
        return final[0] if final else None

    run = wait_until(done, timeout=timeout, interval=2, what=f"a finished {deployment} run")
    assert run.state.is_completed(), (deployment, run.state.message, live.stack.log("cpu-worker")[-3000:], live.stack.log("gpu-worker")[-3000:])
    return run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("two-machines")
    # The shared bucket's service (and, for the CPU pool only, BigQuery) run outside both machines.
    with EmbeddedServices(root / "shared-services") as endpoints, live_stack(root) as live:
        gcp = GCPConfig(project=endpoints.project, bigquery_endpoint=endpoints.bigquery, storage_endpoint=endpoints.storage)
        load_source(endpoints, gcp, "two-machines", python_source())
        storage_env = {"STORAGE_EMULATOR_HOST": endpoints.storage, "CODEPARROT_GCP_PROJECT": endpoints.project}
        live.stack.run([sys.executable, "deployments/setup.py", "--max-restarts", str(CAP), "--heartbeat-window", str(HEARTBEAT_WINDOW_S)])
        live.prefect("deploy", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)), "--all")
        # The deployments' defaults, edited as a user would for a quick run: a small source and tokenizer,
        # a tiny model, perplexity only.
        _set_parameters(live, "dataset-refresh", export={"bucket": "codeparrot-exports", "source_project": SRC_PROJECT})
        _set_parameters(live, "tokenizer", cfg=TOKENIZER)
        _set_parameters(live, "train-spot", config=TRAIN, eval_config=EVAL)

        cpu = Machine.new(live, "cpu-vm", CODEPARROT_BIGQUERY_ENDPOINT=endpoints.bigquery, **storage_env)
        gpu = Machine.new(live, "gpu-vm-1", **storage_env)
        live.start_worker("cpu-worker", "cpu-pool", env=cpu.env, cwd=cpu.root / "work")
        live.start_worker("gpu-worker", "gpu-pool", env=gpu.env, cwd=gpu.root / "work")
        yield Cluster(live, endpoints.storage, storage_env, cpu, gpu, gpu.home_files())


@pytest.fixture(scope="module")
def chained(cluster: Cluster) -> dict[str, Any]:
    """One run of dataset-refresh; everything after it follows from the events alone."""
    live = cluster.live
    out = live.prefect("deployment", "run", "dataset-refresh/dataset-refresh")
    assert re.search(r"UUID: ([0-9a-f-]{36})", out), out
    runs = {name: _one_final_run(live, name, timeout) for name, timeout in
            (("dataset-refresh", 300), ("tokenizer", 300), ("pretokenize", 300), ("train-spot", 600))}  # fmt: skip
    return runs


def _resolver(cluster: Cluster, cache: Path) -> Resolver:
    """The test's own view of the bucket: a third machine reading what the others published."""
    gcp = GCPConfig(project=cluster.storage_env["CODEPARROT_GCP_PROJECT"], storage_endpoint=cluster.gcs)
    return Resolver(open_hub(HubSettings(standin_root="gs://codeparrot-hub"), gcp=gcp), cache, gcp=gcp)


def test_one_refresh_leads_through_the_events_to_a_model_trained_on_the_gpu_worker(cluster: Cluster, chained, tmp_path: Path) -> None:
    live = cluster.live
    assert cluster.gpu_files_before == [], "the GPU machine's home holds no dataset or tokenizer before the run"
    tokenizer_run, pretokenize_run, train_run = chained["tokenizer"], chained["pretokenize"], chained["train-spot"]
    # Each stage ran once, on its pool, triggered by the event of the one before, with exact revisions.
    for name in ("dataset-refresh", "tokenizer", "pretokenize", "train-spot"):
        ran = [r for r in _runs(live, name) if not r.state.is_scheduled()]  # the weekly cron has scheduled more
        assert len(ran) == 1, (name, [r.state.name for r in ran])
    assert tokenizer_run.work_pool_name == pretokenize_run.work_pool_name == "cpu-pool"
    assert train_run.work_pool_name == "gpu-pool"
    dataset = tokenizer_run.parameters["data"]
    assert PINNED_DATASET.match(dataset), dataset
    assert pretokenize_run.parameters["dataset"] == dataset and PINNED_TOKENIZER.match(pretokenize_run.parameters["tokenizer"])
    params = train_run.parameters
    assert (params["data"], params["tokenizer"]) == (dataset, pretokenize_run.parameters["tokenizer"])
    assert TOKEN_SET.match(params["tokens"]), params["tokens"]
    assert params["config"] == TRAIN and params["checkpoint_root"] == "gs://codeparrot-artifacts/checkpoints"

    # The GPU machine fetched what it trained on and trained it; nothing of the CPU pool's work is on its disk.
    gpu_home = cluster.gpu.home
    assert list((gpu_home / "runs").glob("*/final/model.safetensors"))
    assert not (gpu_home / "curated").exists() and not (gpu_home / "tokenizers").exists() and not (gpu_home / "downloads").exists()
    fetched = {p.relative_to(gpu_home / "artifacts").parts[0] for p in (gpu_home / "artifacts").rglob("*.artifact.json")}
    assert fetched == {"hf", "gs"}, "the tokenizer from the stand-in, the token set from the bucket"
    assert not list((gpu_home / "artifacts").glob("hf/datasets/*")), "training reads the token set, not the dataset"
    # The checkpoints outlive the VM: they are in the bucket.
    ckpts = GCSStore("gs://codeparrot-artifacts/checkpoints", gcp=GCPConfig(storage_endpoint=cluster.gcs)).list()
    assert any(o.key.endswith("/step-00000200/COMMITTED") for o in ckpts)

    # The model is published with its card; any machine loads it by its URI.
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    resolver = _resolver(cluster, tmp_path / "reader")
    model = resolver.resolve("hf://codeparrot/codeparrot-tiny")
    assert AutoModelForCausalLM.from_pretrained(model.path).config.n_layer == 2
    card = ModelCard.load(model.path / "README.md")
    lineage = card.data.to_dict()["codeparrot"]
    assert (lineage["dataset"], lineage["tokenizer"], lineage["tokens"]) == (dataset, params["tokenizer"], params["tokens"])
    assert lineage["export_snapshot"] and lineage["licenses"] and lineage["resumed_at"] == []
    assert {r.metric_type for r in card.data.eval_results} == {"perplexity"}


def _events(runs: Path) -> tuple[Path | None, list[dict[str, Any]]]:
    """The one run folder under `runs` and its metrics events so far."""
    found = list(runs.glob("*/metrics.jsonl")) if runs.exists() else []
    if not found:
        return None, []
    return found[0].parent, [json.loads(x) for x in found[0].read_text().splitlines() if x.endswith("}")]


def _last(events: list[dict[str, Any]], kind: str) -> int:
    return max((e["step"] for e in events if e["event"] == kind), default=-1)


def test_a_lost_spot_vm_with_its_disk_is_resumed_from_the_bucket_by_a_new_one(cluster: Cluster, chained, tmp_path: Path) -> None:
    live = cluster.live
    first = chained["train-spot"]
    resolver = _resolver(cluster, tmp_path / "reader")
    uninterrupted = resolver.resolve("hf://codeparrot/codeparrot-tiny")
    reference = (uninterrupted.path / "model.safetensors").read_bytes()

    # The same training started from the UI, with its checkpoints under another prefix and its run folder
    # elsewhere, so it starts from step 0 (the first run's folder holds a finished model of this config).
    runs = cluster.gpu.root / "preempted-runs"
    params = {k: first.parameters[k] for k in ("data", "tokenizer", "tokens")}
    params.update(checkpoint_root="gs://codeparrot-artifacts/checkpoints-preempted", output_root=str(runs))
    run_id = live.run_deployment("training/train-spot", params)
    # Past the first periodic checkpoint (step 50): the resumed run must start at the last committed one.
    wait_until(lambda: _last(_events(runs)[1], "train") >= 60, timeout=300, interval=0.05, what=f"training steps under {runs}")
    assert live.stack.kill_tree("gpu-worker") >= 4, "worker, flow-run process, engine and trainer"
    committed = _last(_events(runs)[1], "checkpoint")
    assert 50 <= committed < TRAIN["max_steps"]
    shutil.rmtree(cluster.gpu.root)  # the VM is gone, and its disk with it

    # A new VM: a new empty disk (the run folder's path is recreated on it), the same bucket.
    replacement = Machine.new(live, "gpu-vm-2", **cluster.storage_env)
    live.start_worker("gpu-worker-2", "gpu-pool", env=replacement.env, cwd=replacement.root / "work")
    run = live.wait_final(run_id, timeout=HEARTBEAT_WINDOW_S + 420)
    names = live.state_names(run_id)
    assert run.state.is_completed(), (names, run.state.message, live.stack.log("gpu-worker-2")[-3000:])
    assert names[names.index("Crashed") + 1] == "AwaitingRetry" and run.run_count == 2, names

    run_dir, events = _events(runs)
    assert run_dir is not None
    starts = [(e["resumed"], e["step"]) for e in events if e["event"] == "start"]
    assert starts == [(True, committed)], "the new VM resumed from the bucket's last committed checkpoint"
    assert (run_dir / "final" / "model.safetensors").read_bytes() == reference
    published = resolver.resolve("hf://codeparrot/codeparrot-tiny")  # the head is this run's model now
    assert (published.path / "model.safetensors").read_bytes() == reference
    from huggingface_hub import ModelCard

    lineage = ModelCard.load(published.path / "README.md").data.to_dict()["codeparrot"]
    assert lineage["resumed_at"] == [committed] and lineage["checkpoints"].startswith("gs://codeparrot-artifacts/checkpoints-preempted/")
    assert published.ref.revision != uninterrupted.ref.revision, "the card says it resumed: another revision"
