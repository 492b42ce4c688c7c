"""Training flow: pin the inputs, make sure their token set exists, train (preemption-safe), evaluate, publish.

Inputs are references (`hf://...@REV`, `gs://...`), so a GPU worker with an empty disk can run it: the
trainer fetches the tokenizer and the token set, and with `checkpoint_root` on gs:// its checkpoints
outlive the machine. The run folder and the checkpoint prefix derive from a hash of the config and the
inputs' revisions, not from the flow run id, so a rescheduled run on a replacement VM resumes. The final
model is published with a model card (lineage and evaluation) to the Hub target.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import BaseModel, Field

from codeparrot.evaluate.config import EvalConfig
from codeparrot.services import ensure_storage
from codeparrot.tokens import PretokenizeConfig
from codeparrot.train.config import TrainConfig
from flows._params import Text, param, text
from flows.pretokenize import DEFAULT_DATASET, DEFAULT_TOKENIZER, build_tokens
from tasks.evaluate import evaluate_model_task
from tasks.events import MODEL_PUBLISHED, announce
from tasks.hub import pinned
from tasks.train import publish_model_task, summary_task, train_model


class TrainingResult(BaseModel):
    """The published model's URI and what it was trained on, all exact references."""

    model: str | None
    model_dir: str
    dataset: str
    tokenizer: str
    tokens: str
    resumed_at: list[int] = []
    evaluation: dict[str, Any] | None = None


@flow(name="training", description="GPT-2 from scratch with accelerate; resumes after preemption; evaluated and published.")
def training(
    data: str = param(DEFAULT_DATASET, "Dataset"),
    tokenizer: str = param(DEFAULT_TOKENIZER, "Tokenizer"),
    tokens: Text = text("Token set"),
    config: TrainConfig = param(TrainConfig(), "Training"),  # noqa: B008 - frozen pydantic model, safe as a default
    pretokenize: PretokenizeConfig = param(PretokenizeConfig(), "Token sets"),  # noqa: B008
    checkpoint_root: Text = text("Checkpoint store"),
    num_processes: Annotated[int, Field(ge=1, le=64)] = param(1, "Processes (GPUs)"),
    evaluate: bool = param(True, "Evaluate"),
    eval_config: EvalConfig | None = param(None, "Evaluation"),
    model_repo: Text = text("Model repo"),
    hub_token_block: Text = text("Hub token block"),
    restart: bool = param(False, "Restart damaged runs"),
    output: Text = text("Run folder"),
    output_root: Text = text("Run folders' parent"),
) -> TrainingResult:
    """Train a GPT-2 on a dataset revision with a tokenizer revision, evaluate it and publish it.

    Args:
        data: The dataset, hf://datasets/OWNER/NAME[@REV]; without @REV the newest published revision when
            the run starts (a refresh run's "dataset-reference" artifact shows the exact value to paste).
        tokenizer: The tokenizer, hf://OWNER/NAME[@REV]; without @REV the newest published (a tokenizer
            run's "tokenizer-reference" artifact shows the exact value).
        tokens: A token set built by pretokenize (gs://...); empty: found or built under pretokenize.root.
        config: The training run: model preset, batch arithmetic, schedule, checkpoint cadence. Fields left
            empty take the preset's values, so changing the preset brings its own context, warmup and lr.
        pretokenize: Where token sets live (and are built when `tokens` is empty).
        checkpoint_root: gs://BUCKET/PREFIX for checkpoints that outlive the machine (one folder per run
            hash); empty: the run folder's checkpoints/ on this machine.
        num_processes: Training processes (GPUs) on this machine.
        evaluate: Measure perplexity and HumanEval (per eval_config) before publishing.
        eval_config: What evaluation runs and how; empty: by the preset, the book's HumanEval (164 problems
            x 200 samples) for small and large, 8 problems x 4 samples for tiny.
        model_repo: owner/name the model is published as; empty: codeparrot/codeparrot-PRESET (the preset).
        hub_token_block: Name of a Prefect Secret block holding a Hub token (never the token itself);
            empty: the worker's environment (HF_TOKEN).
        restart: When checkpoints exist but none can be resumed (damaged), move them aside and start
            over from step 0; a valid checkpoint is still resumed.
        output: The run folder on the worker; empty: CODEPARROT_HOME/runs/RUN_HASH there.
        output_root: Parent of the derived run folder when `output` is empty (a folder on the worker).
    """
    with ensure_storage(data, tokenizer, tokens, checkpoint_root, pretokenize.root, hub=True):
        data, tokenizer = pinned(data, hub_token_block), pinned(tokenizer, hub_token_block)
        if tokens is None:
            tokens = build_tokens(data, tokenizer, pretokenize, hub_token_block).tokens
        model_dir = train_model(
            config, data, tokenizer, tokens, output=output, output_root=output_root,
            checkpoint_root=checkpoint_root, num_processes=num_processes, hub_token_block=hub_token_block,
            restart=restart,
        )  # fmt: skip
        eval_config = eval_config or EvalConfig.for_preset(config.preset)
        evaluation = evaluate_model_task(model_dir, tokens, eval_config, hub_token_block) if evaluate else None
        repo = model_repo or f"codeparrot/codeparrot-{config.preset}"
        pushed = publish_model_task(model_dir, repo, evaluation, hub_token_block)
        announce(MODEL_PUBLISHED, f"codeparrot.model.{repo}",
                 {"model": pushed.uri, "dataset": data, "tokenizer": tokenizer, "tokens": tokens}, new=not pushed.skipped)  # fmt: skip
        summary_task(model_dir, pushed.uri, evaluation)
    from codeparrot.model_card import read_summary

    return TrainingResult(model=pushed.uri, model_dir=model_dir, dataset=data, tokenizer=tokenizer, tokens=tokens,
                          resumed_at=read_summary(model_dir).get("resumed_at", []), evaluation=evaluation)  # fmt: skip
