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
from codeparrot.train.config import TrainConfig
from deployments import automations
from tests.deployments.helpers import REPO, deployments_by_name, prefect_yaml

TRAINING = ("train-spot", "train-k8s")


def test_the_four_deployments_point_at_existing_flows() -> None:
    deployments = deployments_by_name()
    assert set(deployments) == {"dataset-refresh", "tokenizer", *TRAINING}
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
    for name in TRAINING:
        params = deployments_by_name()[name]["parameters"]
        config = TrainConfig(**params["config"])
        assert config.preset == "small" and config.context_length == 1024, name
        assert config.peak_lr == 5e-4, f"{name}: CodeParrot-small's learning rate"
        assert config.tokens_per_step() == 12 * 16 * 1024, f"{name}: the book's 192-sequence step on one GPU"
        EvalConfig(**params.get("eval_config", {}))


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


def _completed_event(deployment: str) -> ReceivedEvent:
    return ReceivedEvent(
        id=uuid.uuid4(),
        occurred=datetime.now(UTC),
        event="prefect.flow-run.Completed",
        resource={"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"},
        related=[
            {"prefect.resource.id": f"prefect.deployment.{uuid.uuid4()}", "prefect.resource.role": "deployment",
             "prefect.resource.name": deployment},
        ],
    )


def test_event_chain_tokenizer_after_refresh_and_training_after_tokenizer() -> None:
    def trigger(name: str) -> tuple[DeploymentEventTrigger, ServerEventTrigger]:
        [spec] = deployments_by_name()[name]["triggers"]
        client_side = DeploymentEventTrigger.model_validate(spec)
        fields = client_side.model_dump(mode="json", include=set(ServerEventTrigger.model_fields) - {"id"})
        return client_side, ServerEventTrigger.model_validate(fields)

    tokenizer, tokenizer_server = trigger("tokenizer")
    assert tokenizer.enabled
    assert tokenizer_server.covers(_completed_event("dataset-refresh"))
    assert not tokenizer_server.covers(_completed_event("tokenizer"))

    train, train_server = trigger("train-spot")
    # Off until the pools share storage: the parameters name paths on the cpu-pool worker.
    assert not train.enabled
    assert train_server.covers(_completed_event("tokenizer"))
    assert not train_server.covers(_completed_event("dataset-refresh"))
    assert set(train.parameters) == {"data", "tokenizer"}
