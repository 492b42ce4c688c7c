"""The events that chain the deployments: each stage announces the exact reference it produced.

A flow-run Completed event carries no result, so each stage emits its own event whose payload holds the
references; the next deployment's trigger (deployments/prefect.yaml) templates its parameters from it
(`"{{ event.payload.dataset }}"`). The resource label `codeparrot.new` is "true" when the stage produced
something it had not produced before, and the triggers fire on those only, so an unchanged weekly refresh
does not retrain a model.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._common import explained

DATASET_PUBLISHED = "codeparrot.dataset.published"
TOKENIZER_PUBLISHED = "codeparrot.tokenizer.published"
TOKENS_PUBLISHED = "codeparrot.tokens.published"
MODEL_PUBLISHED = "codeparrot.model.published"


@task(name="announce", cache_policy=NO_CACHE)
@explained
def announce(event: str, resource: str, payload: dict[str, str], *, new: bool) -> None:
    """Emit `event` about `resource` (e.g. codeparrot.dataset.OWNER/NAME) with the references in `payload`."""
    from prefect.events import emit_event

    labels = {
        "prefect.resource.id": resource,
        "prefect.resource.name": resource.split(".", 2)[-1],
        "codeparrot.new": "true" if new else "false",
    }
    emit_event(event=event, resource=labels, payload=payload)
