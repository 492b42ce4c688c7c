"""Create (or replace) the automations that resubmit crashed training runs, capped per flow run.

A run whose process dies without a word (SIGKILL, a VM gone before its SIGTERM handler ran, node loss)
ends Crashed, and flow `retries` never apply to Crashed runs. This automation moves such a run back to
AwaitingRetry under the same flow run id, so a worker picks it up again and training resumes from its last
checkpoint (the run folder derives from the config hash, not the run id). The SIGTERM path needs no
automation: `prefect flow-run execute` with PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule (the
training deployments' job variables) proposes AwaitingRetry itself.

The cap: a flow-run state event carries the run's `prefect.run-count` (how many times it entered Running).
The trigger matches counts 1..max_restarts only, so a run that keeps crashing is resubmitted
`max_restarts` times, ends with run_count == max_restarts + 1 and stays Crashed for a person to look at.
Count 0 (crashed before it ever ran: bad image, no capacity) is never resubmitted, or it would loop
unbounded, as its count never grows.

A machine that vanishes (a spot VM lost with its worker) leaves nothing to report the crash: its run would
stay Running forever. A second automation marks a tagged run Crashed once its heartbeats stop (the training
deployments set PREFECT_FLOWS_HEARTBEAT_FREQUENCY), and the first one then resubmits it.

Both count on `prefect flow-run execute` as the flow-run command (the training deployments' job variables):
with a plain `python -m prefect.engine`, a Prefect 3.9 process worker reports the same dead process Crashed a
second time, after the automation has already resubmitted it, and so crashes the new attempt.

Only runs tagged `auto-resume` (the training deployments in prefect.yaml) are touched.

    python deployments/automations.py [--max-restarts 3] [--tag auto-resume] [--heartbeat-window 120]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import codeparrot  # noqa: F401 - the offline / telemetry defaults before Prefect is imported
from codeparrot.errors import ConfigError

# isort: split
from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture

NAME = "resume-crashed-training"
SILENT_NAME = "crash-silent-training"
DEFAULT_TAG = "auto-resume"
# Four heartbeats at the 30 s the training deployments send (Prefect's minimum): one late heartbeat on a
# busy host is not a lost machine, and a lost one is resubmitted within ~2 minutes.
DEFAULT_HEARTBEAT_WINDOW_S = 120
# The count is of runs, so SIGTERM reschedules use it up too: 3 covers the few hard losses of a multi-day
# spot run and stops a crash loop (a bug, not a preemption) after three wasted starts. Raise it for long
# runs on busy spot capacity.
DEFAULT_MAX_RESTARTS = 3


def resume_crashed(max_restarts: int = DEFAULT_MAX_RESTARTS, tag: str = DEFAULT_TAG) -> Automation:
    """The automation: a Crashed run with the tag and run count in 1..max_restarts -> AwaitingRetry."""
    if max_restarts < 1:
        raise ConfigError("max_restarts must be >= 1 (0 would never resume: delete the automation instead)")
    if not tag:
        raise ConfigError("tag must not be empty: it limits the automation to the training deployments' runs")
    return Automation(
        name=NAME,
        description=(
            f"Resubmit crashed runs tagged {tag!r} (spot preemption) under the same flow run id, at most "
            f"{max_restarts} times per run; training resumes from its last checkpoint."
        ),
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.run-count": [str(n) for n in range(1, max_restarts + 1)],
            },
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message=f"Crashed (likely preempted): resubmitted by the {NAME} automation",
            )
        ],
    )


def crash_silent(tag: str = DEFAULT_TAG, window_s: float = DEFAULT_HEARTBEAT_WINDOW_S) -> Automation:
    """The automation: a run with the tag and no event of its own for `window_s` after a heartbeat -> Crashed."""
    if window_s < 60:
        raise ConfigError(f"window_s {window_s} is too short: flows send a heartbeat every 30 s at most; allow >= 60")
    if not tag:
        raise ConfigError("tag must not be empty: it limits the automation to the training deployments' runs")
    return Automation(
        name=SILENT_NAME,
        description=(
            f"Mark a running {tag!r} run Crashed when it has sent no heartbeat or state change for {window_s:g} s "
            f"(its machine is gone); {NAME} then resubmits it."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            # Any event of the run (heartbeat, state change) shows it alive or finished.
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {window_s:g} s: the machine running this flow run is gone",
            )
        ],
    )


def apply(
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    tag: str = DEFAULT_TAG,
    heartbeat_window_s: float | None = DEFAULT_HEARTBEAT_WINDOW_S,
) -> list[Automation]:
    """Create both automations (the silent-run one unless the window is None), replacing earlier ones of the same names."""
    from prefect.client.orchestration import get_client

    wanted = [resume_crashed(max_restarts, tag)]
    if heartbeat_window_s is not None:
        wanted.append(crash_silent(tag, heartbeat_window_s))
    with get_client(sync_client=True) as client:
        for name in (NAME, SILENT_NAME):
            for old in client.read_automations_by_name(name):
                client.delete_automation(old.id)
    return [automation.create() for automation in wanted]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS, help="resubmissions per flow run before giving up")
    ap.add_argument("--tag", default=DEFAULT_TAG, help="only runs with this tag are resubmitted")
    ap.add_argument("--heartbeat-window", type=float, default=DEFAULT_HEARTBEAT_WINDOW_S,
                    help="seconds without a heartbeat before a running tagged run is marked Crashed; 0 disables it")
    args = ap.parse_args(argv)
    try:
        created = apply(args.max_restarts, args.tag, args.heartbeat_window or None)
    except ConfigError as exc:
        raise SystemExit(f"automations: {exc}") from None
    for automation in created:
        print(f"automation {automation.name} ({automation.id}): {automation.description}")


if __name__ == "__main__":
    main()
