"""Training flow: a supervised, preemption-safe training task, then evaluation of the final model.

Parameters are `TrainConfig` and `EvalConfig` (rendered by the Prefect UI as forms). Without `output`, the
run folder derives from a hash of the config and inputs (`<CODEPARROT_HOME>/runs/<hash12>`), not from the
flow run id, so a resubmitted or rescheduled run finds its checkpoints and resumes.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel

from codeparrot.evaluate.config import EvalConfig
from codeparrot.train.config import TrainConfig
from tasks.evaluate import evaluate_model_task
from tasks.train import train_model


class TrainingResult(BaseModel):
    model_dir: str
    evaluation: dict[str, Any] | None = None


@flow(name="training", description="GPT-2 from scratch with accelerate; resumes after preemption; then evaluation.")
def training(
    data: str,
    tokenizer: str,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen pydantic model, safe as a default
    output: str | None = None,
    output_root: str | None = None,
    num_processes: int = 1,
    evaluate: bool = True,
    eval_config: EvalConfig = EvalConfig(),  # noqa: B008
) -> TrainingResult:
    """Train a GPT-2 on a published dataset folder and tokenizer folder, then evaluate the final model."""
    model_dir = train_model(config, data, tokenizer, output=output, output_root=output_root, num_processes=num_processes)
    evaluation = evaluate_model_task(model_dir, data, eval_config) if evaluate else None
    return TrainingResult(model_dir=model_dir, evaluation=evaluation)
