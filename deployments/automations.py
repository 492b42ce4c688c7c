"""Create (or update) the automation that resumes crashed training runs, capped per flow run.

A spot VM that disappears (SIGKILL, node loss) leaves its flow run Crashed, and flow `retries` never apply
to Crashed runs. This automation moves such a run back to AwaitingRetry, under the same flow run id, so a
worker picks it up again and training resumes from its last checkpoint (its location derives from the
config hash, not the run id). Crash events carry the run's `prefect.run-count` label; the trigger only
matches counts 1..max_restarts, so a run that keeps crashing stops after `max_restarts` resubmissions
and stays Crashed for a person to look at.

Only runs tagged `auto-resume` (the training deployments in prefect.yaml) are touched.

    python deployments/automations.py [--max-restarts 3] [--tag auto-resume]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture

NAME = "resume-crashed-training"


def resume_crashed(max_restarts: int = 3, tag: str = "auto-resume") -> Automation:
    """The automation: Crashed run with the tag and run count <= max_restarts -> AwaitingRetry."""
    if max_restarts < 1:
        raise ValueError("max_restarts must be >= 1 (0 would never resume; delete the automation instead)")
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
                message="Crashed (likely preempted): resubmitted by the resume-crashed-training automation",
            )
        ],
    )


def apply(max_restarts: int = 3, tag: str = "auto-resume") -> Automation:
    """Create the automation, replacing an earlier one of the same name (idempotent)."""
    from prefect.client.orchestration import get_client

    automation = resume_crashed(max_restarts, tag)

    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(NAME):
            client.delete_automation(old.id)
    return automation.create()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-restarts", type=int, default=3, help="resubmissions per flow run before giving up")
    ap.add_argument("--tag", default="auto-resume", help="only runs with this tag are resubmitted")
    args = ap.parse_args()
    created = apply(args.max_restarts, args.tag)
    print(f"automation {created.name} ({created.id}): resubmits crashed '{args.tag}' runs up to {args.max_restarts} times")


if __name__ == "__main__":
    main()
