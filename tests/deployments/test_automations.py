"""The automations' triggers, evaluated by Prefect's own server-side matching on synthesised events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.schemas.objects import StateType
from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger
from prefect.server.events.schemas.automations import Posture
from prefect.server.events.schemas.events import ReceivedEvent

from deployments import automations


def _server_trigger(automation) -> ServerEventTrigger:
    """The trigger as the Prefect server evaluates it (what `Automation.create` sends)."""
    return ServerEventTrigger.model_validate(automation.trigger.model_dump(mode="json"))


def _state_event(state: str, run_count: int, tags: tuple[str, ...] = ("codeparrot", "auto-resume")) -> ReceivedEvent:
    """A flow-run state event shaped as the server emits it (resource labels, tag related resources)."""
    return ReceivedEvent(
        id=uuid.uuid4(),
        occurred=datetime.now(UTC),
        event=f"prefect.flow-run.{state}",
        resource={
            "prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}",
            "prefect.run-count": str(run_count),
            "prefect.state-name": state,
        },
        related=[{"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"} for t in tags],
    )


def test_resume_matches_crashed_tagged_runs_up_to_the_cap() -> None:
    trigger = _server_trigger(automations.resume_crashed(max_restarts=2))
    assert trigger.posture == Posture.Reactive and trigger.immediate
    # run_count counts entries into Running: 1 and 2 are resubmitted, the third crash is final.
    assert [trigger.covers(_state_event("Crashed", n)) for n in (1, 2, 3, 7)] == [True, True, False, False]
    # Crashed before it ever ran (count 0): never resubmitted, or it would loop without bound.
    assert not trigger.covers(_state_event("Crashed", 0))
    assert not trigger.covers(_state_event("Crashed", 1, tags=("codeparrot", "data")))
    assert not trigger.covers(_state_event("Failed", 1))
    assert not trigger.covers(_state_event("Completed", 1))


def test_resume_action_reschedules_the_same_run() -> None:
    [action] = automations.resume_crashed(3).actions
    assert action.type == "change-flow-run-state"
    assert (action.state, action.name) == (StateType.SCHEDULED, "AwaitingRetry")


def test_resume_follows_a_custom_tag_and_cap() -> None:
    trigger = _server_trigger(automations.resume_crashed(max_restarts=5, tag="night-train"))
    assert trigger.covers(_state_event("Crashed", 5, tags=("night-train",)))
    assert not trigger.covers(_state_event("Crashed", 6, tags=("night-train",)))
    assert not trigger.covers(_state_event("Crashed", 1))


def test_silent_runs_are_crashed_after_the_heartbeat_window() -> None:
    automation = automations.crash_silent(window_s=90)
    trigger = _server_trigger(automation)
    assert trigger.posture == Posture.Proactive and trigger.within == timedelta(seconds=90)
    assert trigger.for_each == {"prefect.resource.id"}, "one window per flow run"
    assert trigger.starts_after("prefect.flow-run.heartbeat")
    # Any event of the run shows it alive or finished, so none of these may let the window fire.
    for event in ("heartbeat", "Completed", "Failed", "Crashed", "Cancelled", "AwaitingRetry"):
        assert trigger.expects(f"prefect.flow-run.{event}"), event
    assert not trigger.expects("prefect.task-run.Completed")
    heartbeat = _state_event("heartbeat", 1)
    assert trigger.covers_resources(heartbeat.resource, heartbeat.related)
    untagged = _state_event("heartbeat", 1, tags=("data",))
    assert not trigger.covers_resources(untagged.resource, untagged.related)
    [action] = automation.actions
    assert action.state == StateType.CRASHED


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: automations.resume_crashed(max_restarts=0), "max_restarts must be >= 1"),
        (lambda: automations.resume_crashed(tag=""), "tag must not be empty"),
        (lambda: automations.crash_silent(window_s=30), "window_s 30 is too short"),
        (lambda: automations.crash_silent(tag=""), "tag must not be empty"),
    ],
)
def test_bad_settings_say_what_to_change(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
