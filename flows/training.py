"""The training flow: one supervised, preemption-safe training task. Evaluation is added after it later."""

from __future__ import annotations

from prefect import flow

from codeparrot.train.config import TrainConfig
from tasks.train import train_model


@flow(name="training")
def training(
    data: str,
    tokenizer: str,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen pydantic model, safe as a default
    output: str | None = None,
    output_root: str | None = None,
    num_processes: int = 1,
) -> str:
    """Train a GPT-2 on a published dataset folder and tokenizer folder; returns the final model folder.

    Without `output`, the run folder is `<output_root or CODEPARROT_HOME/runs>/<hash12 of config and
    inputs>`, so a resubmitted run finds its checkpoints and resumes.
    """
    return train_model(
        config, data, tokenizer, output=output, output_root=output_root, num_processes=num_processes
    )
