"""The events that chain the deployments: each stage announces the exact reference it produced.

A flow-run Completed event carries no result, so each stage emits its own event whose payload holds the
references; the next deployment's trigger (deployments/prefect.yaml) templates its parameters from it
(`"{{ event.payload.dataset }}"`). The resource label `codeparrot.new` is "true" when the stage produced
something it had not produced before, and the triggers fire on those only, so an unchanged weekly refresh
does not retrain a model.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks._common import explained

DATASET_PUBLISHED = "codeparrot.dataset.published"
TOKENIZER_PUBLISHED = "codeparrot.tokenizer.published"
TOKENS_PUBLISHED = "codeparrot.tokens.published"
MODEL_PUBLISHED = "codeparrot.model.published"

# Where each announced reference goes in a run form (the value a person pastes), by the form's titles.
PASTE_INTO = {
    "dataset": "the Dataset field of a training, tokenizer or pretokenize run",
    "tokenizer": "the Tokenizer field of a training or pretokenize run",
    "tokens": "the Token set field of a training run (skips pre-tokenization)",
    "model": "the model to evaluate or fetch (`hf://OWNER/NAME@REV`)",
}


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
    what = event.split(".")[1]
    create_markdown_artifact(
        references_markdown(what, payload, new=new), key=f"{what}-reference",
        description=f"The exact {what} reference this run {'published' if new else 'found unchanged'}: the value to paste into a run form",
    )  # fmt: skip


def references_markdown(what: str, payload: dict[str, str], *, new: bool) -> str:
    """Each reference in a code block (one click selects it) with the form field it goes in."""
    said = "published" if new else "unchanged: the newest published revision is still"
    lines = [f"## {what.capitalize()} {said}", ""]
    for key, value in payload.items():
        lines += [f"**{key}**, for {PASTE_INTO.get(key, 'the next stage')}:", "", "```", value, "```", ""]
    return "\n".join(lines)
