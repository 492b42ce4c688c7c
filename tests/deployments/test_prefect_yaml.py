"""deployments/prefect.yaml read as `prefect deploy` reads it; the live test deploys it to a real server."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.deployments.steps import core as steps_core
from prefect.deployments.steps.core import StepExecutionError, run_steps
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.schemas.schedules import CronSchedule

from codeparrot.evaluate.config import EvalConfig
from codeparrot.tokens import PretokenizeConfig
from codeparrot.train.config import TrainConfig
from deployments import automations
from tasks import events
from tests.deployments.helpers import REPO, SETUP_VARIABLES, deployments_by_name, prefect_yaml

TRAINING = ("train-spot", "train-k8s")


def test_the_deployments_point_at_existing_flows() -> None:
    deployments = deployments_by_name()
    assert set(deployments) == {"dataset-refresh", "tokenizer", "pretokenize", "train-smoke", *TRAINING}
    for name, spec in deployments.items():
        path, _, func = spec["entrypoint"].partition(":")
        assert (REPO / path).is_file(), f"{name}: {path} does not exist"
        assert f"\ndef {func}(" in (REPO / path).read_text(), f"{name}: no flow function {func} in {path}"


def test_dataset_refresh_runs_weekly_in_utc_one_at_a_time() -> None:
    spec = deployments_by_name()["dataset-refresh"]
    [schedule] = spec["schedules"]
    assert schedule["timezone"] == "UTC" and schedule.get("active", True)
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    dates = cron.get_dates(n=4, start=start)
    if inspect.isawaitable(dates):  # sync_compatible: a coroutine where an event loop may be running
        dates = asyncio.run(dates)
    assert [b - a for a, b in itertools.pairwise(dates)] == [timedelta(days=7)] * 3
    assert spec["concurrency_limit"] == 1
    assert spec["work_pool"]["name"] == "cpu-pool"


def test_training_deployments_reschedule_on_sigterm_and_carry_the_resume_tag() -> None:
    deployments = deployments_by_name()
    assert deployments["train-spot"]["work_pool"]["name"] == "gpu-pool"
    assert deployments["train-k8s"]["work_pool"]["name"] == "gpu-k8s"
    for name in TRAINING:
        spec = deployments[name]
        job = spec["work_pool"]["job_variables"]
        # Only `prefect flow-run execute` honours the SIGTERM behaviour; a process worker's default doesn't.
        assert job["command"] == "prefect flow-run execute", name
        assert job["env"]["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule", name
        heartbeat = int(job["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
        assert 30 <= heartbeat <= automations.DEFAULT_HEARTBEAT_WINDOW_S / 2, f"{name}: the silent-run window must cover two heartbeats"
        assert automations.DEFAULT_TAG in spec["tags"], name


def test_deployment_parameters_are_valid_configs() -> None:
    """The defaults a UI form shows must validate, or every scheduled or triggered run fails at start."""
    deployments = deployments_by_name(SETUP_VARIABLES)
    for name in TRAINING:
        params = deployments[name]["parameters"]
        config = TrainConfig(**params["config"])
        assert config.preset == "small" and config.context_length == 1024, name
        assert config.peak_lr == 5e-4, f"{name}: CodeParrot-small's learning rate"
        assert config.tokens_per_step() == 12 * 16 * 1024, f"{name}: the book's 192-sequence step on one GPU"
        EvalConfig(**params.get("eval_config", {}))
        # Checkpoints and token sets in the shared bucket: a replacement VM with an empty disk resumes.
        assert params["checkpoint_root"] == "gs://codeparrot-artifacts/checkpoints", name
        assert PretokenizeConfig(**params["pretokenize"]).root == "gs://codeparrot-artifacts/tokens", name
    assert PretokenizeConfig(**deployments["pretokenize"]["parameters"]["cfg"]).root == "gs://codeparrot-artifacts/tokens"
    # Every flow run of every deployment finds the Hub stand-in in the one place setup.py configured.
    for name, spec in deployments.items():
        if name != "train-k8s":
            assert spec["work_pool"]["job_variables"]["env"]["CODEPARROT_HUB_ROOT"] == "gs://codeparrot-hub", name


def test_train_smoke_is_a_minutes_long_check_of_the_gpu_pool_off_the_chain() -> None:
    spec = deployments_by_name(SETUP_VARIABLES)["train-smoke"]
    assert spec["entrypoint"] == deployments_by_name()["train-spot"]["entrypoint"]
    assert spec["work_pool"]["name"] == "gpu-pool" and not spec.get("triggers") and not spec.get("schedules")
    config = TrainConfig(**spec["parameters"]["config"])
    assert (config.preset, config.max_steps, config.warmup_steps) == ("tiny", 60, 6)  # the warmup follows the short run
    evaluation = EvalConfig(**spec["parameters"]["eval_config"])
    assert evaluation.limit <= 8 and evaluation.n_samples <= 4 and evaluation.run_perplexity and evaluation.run_humaneval
    # Its model never replaces a real one.
    assert spec["parameters"]["model_repo"] != "codeparrot/codeparrot-tiny"


def test_pull_steps_change_into_the_workers_source_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pull steps run on the worker: they read $CODEPARROT_SRC there, and fail clearly without it."""
    pull = prefect_yaml()["pull"]
    # A `{{ $VAR }}` in a pull step is filled in from the deploying shell by `prefect deploy`.
    assert "{{ $" not in str(pull)
    # Without block or variable placeholders the steps need no Prefect API; skip those lookups, which
    # would otherwise start a temporary server.
    assert "prefect.blocks" not in str(pull) and "prefect.variables" not in str(pull)

    async def unchanged(template, *_args, **_kwargs):
        return template

    monkeypatch.setattr(steps_core, "resolve_block_document_references", unchanged)
    monkeypatch.setattr(steps_core, "resolve_variables", unchanged)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CODEPARROT_SRC", str(tmp_path))
    asyncio.run(run_steps(pull, {}, print_function=lambda *_: None))
    assert Path(os.getcwd()) == tmp_path

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("CODEPARROT_SRC")
    with pytest.raises(StepExecutionError) as err:
        asyncio.run(run_steps(pull, {}, print_function=lambda *_: None))
    assert "CODEPARROT_SRC" in str(err.value.__cause__)
    assert Path(os.getcwd()) == REPO


def _published(event: str, resource: str, *, new: bool) -> ReceivedEvent:
    """An event as tasks/events.py emits it from inside a flow run."""
    return ReceivedEvent(
        id=uuid.uuid4(),
        occurred=datetime.now(UTC),
        event=event,
        resource={"prefect.resource.id": resource, "codeparrot.new": "true" if new else "false"},
        payload={},
    )


def _trigger(name: str) -> tuple[DeploymentEventTrigger, ServerEventTrigger]:
    [spec] = deployments_by_name()[name]["triggers"]
    client_side = DeploymentEventTrigger.model_validate(spec)
    fields = client_side.model_dump(mode="json", include=set(ServerEventTrigger.model_fields) - {"id"})
    return client_side, ServerEventTrigger.model_validate(fields)


@pytest.mark.parametrize(
    ("deployment", "event", "resource", "payload"),
    [
        ("tokenizer", events.DATASET_PUBLISHED, "codeparrot.dataset.codeparrot/codeparrot-clean", {"data": "dataset"}),
        ("pretokenize", events.TOKENIZER_PUBLISHED, "codeparrot.tokenizer.codeparrot/codeparrot-tokenizer",
         {"dataset": "dataset", "tokenizer": "tokenizer"}),
        ("train-spot", events.TOKENS_PUBLISHED, "codeparrot.tokens.abc-def",
         {"data": "dataset", "tokenizer": "tokenizer", "tokens": "tokens"}),
    ],
)  # fmt: skip
def test_the_event_chain_hands_each_stage_the_exact_references(deployment, event, resource, payload) -> None:
    client_side, server_side = _trigger(deployment)
    assert client_side.enabled
    assert server_side.covers(_published(event, resource, new=True))
    # An unchanged upstream (nothing new published) triggers nothing; neither does another stage's event.
    assert not server_side.covers(_published(event, resource, new=False))
    others = {events.DATASET_PUBLISHED, events.TOKENIZER_PUBLISHED, events.TOKENS_PUBLISHED} - {event}
    assert not any(server_side.covers(_published(e, resource, new=True)) for e in others)
    # Parameters come from the event's payload (the revisions published), not from whatever is head now.
    assert client_side.parameters == {param: f"{{{{ event.payload.{key} }}}}" for param, key in payload.items()}


def test_train_k8s_is_off_the_chain_so_one_model_is_trained_per_token_set() -> None:
    assert "triggers" not in deployments_by_name()["train-k8s"]
