"""Prefect task of the training stage: launch `accelerate launch -m codeparrot.train`, supervise, report.

A preempted child (SIGTERM: it checkpointed and stopped) fails the task with `Preempted`, which the
task's retry condition accepts, and the retry reruns the same command, which resumes. Any other failure
is final and shows the tail of the child's log.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from codeparrot.evaluate.passk import BOOK_PASS_AT_K
from codeparrot.hub import PushResult
from codeparrot.model_card import publish_model, read_summary
from codeparrot.train import report
from codeparrot.train.config import TrainConfig
from codeparrot.train.errors import Preempted, TrainingFailed
from codeparrot.train.identity import checkpoint_uri, default_run_dir
from codeparrot.train.launch import (
    MetricsTail,
    accelerate_command,
    supervise,
    train_arguments,
    trainer_environment,
)
from tasks._common import explained, io_task_options
from tasks.hub import hub_token, resolver

METRICS_FILE = "metrics.jsonl"  # codeparrot.train.loop.METRICS_FILE, without importing torch here
# A preempted child has committed its checkpoint, so a retry can start at once; the count bounds a
# run that keeps being preempted.
TRAIN_RETRIES = 5
TRAIN_RETRY_DELAY_S = 2
# The chart is redrawn at each validation and at most this often between them: each redraw re-reads the
# whole metrics file and sends the API a new SVG, and a minute is as fresh as a person watching needs.
CHART_EVERY_S = 60.0


def retry_if_preempted(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry only a run stopped by preemption (it resumes); a crash or bad config fails at once."""
    try:
        state.result(raise_on_failure=True)
    except Preempted:
        return True
    except BaseException:  # classifying the failure, not handling it
        return False
    return False


@task(
    name="train",
    retries=TRAIN_RETRIES,
    retry_delay_seconds=TRAIN_RETRY_DELAY_S,
    retry_condition_fn=retry_if_preempted,
    cache_policy=NO_CACHE,  # the run folder is the cache: a finished run returns at once
)
@explained
def train_model(
    config: TrainConfig,
    data: str,
    tokenizer: str,
    tokens: str | None = None,
    output: str | None = None,
    output_root: str | None = None,
    checkpoint_root: str | None = None,
    num_processes: int = 1,
    hub_token_block: str | None = None,
    restart: bool = False,
) -> str:
    """Train (or resume) the run; returns the folder of the final model.

    The run folder (metrics, logs, final model) and, with `checkpoint_root`, the checkpoint prefix derive
    from the config and the inputs' identities, so a resubmitted run finds them on any machine that
    reaches the checkpoint store.
    """
    logger = get_run_logger()
    res = resolver(hub_token_block)
    dataset_identity, tokenizer_identity = res.identity(data), res.identity(tokenizer)
    out = Path(output) if output else default_run_dir(config, dataset_identity, tokenizer_identity, output_root)
    if checkpoint_root and not config.checkpoint_dir:
        config = config.model_copy(update={"checkpoint_dir": checkpoint_uri(checkpoint_root, config, dataset_identity, tokenizer_identity)})
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "train-config.json"
    tmp = config_file.with_name(f".{config_file.name}.{os.getpid()}")
    tmp.write_text(config.model_dump_json(indent=1))
    os.replace(tmp, config_file)

    cmd = accelerate_command(train_arguments(config_file, tokenizer, str(out), data=data, tokens=tokens, restart=restart), num_processes=num_processes)
    logger.info("launching %s (checkpoints: %s)", " ".join(cmd), config.checkpoint_dir or out / "checkpoints")
    # The trainer resolves the references itself; a token from a Secret block reaches it like HF_TOKEN would.
    token = hub_token(hub_token_block) if hub_token_block else None
    env = trainer_environment({"HF_TOKEN": token} if token else None)
    progress = create_progress_artifact(0.0, key="training-progress", description=f"Optimizer steps done of {config.max_steps} ({out})")
    chart = Chart(out / METRICS_FILE, f"Training {config.preset}: {out.name}", config.max_steps)

    def on_event(event: dict[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step")
        if kind == "train":
            logger.info("step %s loss %.4f lr %.3g %s tok/s", step, event["loss"], event["lr"], event["tokens_per_s"])
            update_progress_artifact(progress, 100.0 * step / config.max_steps)
            chart.maybe_draw()
        elif kind == "eval":
            logger.info("step %s validation loss %.4f perplexity %.2f", step, event["val_loss"], event["perplexity"])
            chart.draw()
        elif kind in ("skipped", "diverged"):
            logger.warning("%s at step %s: %s", kind, step, event.get("reason"))
        elif kind in ("start", "checkpoint", "preempted", "completed"):
            logger.info("%s: %s", kind, {k: v for k, v in event.items() if k not in ("event", "time")})

    # SIGTERM stays with Prefect's engine: `prefect flow-run execute` (SIGTERM behaviour "reschedule")
    # acknowledges a reschedule only while the engine's own handler is installed, and otherwise SIGKILLs the
    # engine, orphaning the trainer. That handler raises TerminationSignal inside `supervise`, which then
    # forwards SIGTERM to the training processes and waits for their checkpoint.
    outcome = supervise(
        cmd,
        metrics_path=out / METRICS_FILE,
        log_path=out / "logs" / "train.log",
        on_event=on_event,
        forward_signals=(signal.SIGINT,),
        env=env,
    )
    chart.draw()
    if outcome.completed and outcome.final:
        update_progress_artifact(progress, 100.0)
        return outcome.final
    if outcome.preempted:
        stopped = [e for e in outcome.events if e.get("event") == "preempted"]
        where = f"at step {stopped[-1]['step']}" if stopped else "before its first checkpoint"
        raise Preempted(f"training in {out} was stopped {where}; the task retry resumes from the last checkpoint")
    # The trainer's own one-line error (diverged, locked, no valid checkpoint, ...) heads the message.
    said = [line.removeprefix("error: ") for line in outcome.log_tail.splitlines() if line.startswith("error: ")]
    headline = said[-1] if said else f"training in {out} exited with code {outcome.returncode}"
    raise TrainingFailed(f"{headline}\nlast lines of {out / 'logs' / 'train.log'}:\n{outcome.log_tail}")


class Chart:
    """The run's loss/validation/lr chart: one markdown artifact, redrawn in place from the whole metrics file
    (a new artifact per redraw would list the chart a dozen times on the run's page)."""

    def __init__(self, metrics: Path, title: str, max_steps: int | None) -> None:
        self.metrics, self.title, self.max_steps = metrics, title, max_steps
        self.drawn = 0.0
        self.artifact: Any = None

    def maybe_draw(self) -> None:
        if time.monotonic() - self.drawn >= CHART_EVERY_S:
            self.draw()

    def draw(self) -> None:
        tail = MetricsTail(self.metrics)
        tail.offset = 0
        markdown = report.chart_markdown(report.curve(tail.read()), self.title, self.max_steps)
        if self.artifact is None:
            self.artifact = create_markdown_artifact(
                markdown, key="training-chart",
                description="Train and validation loss and the learning rate by step, redrawn as the run goes",
            )  # fmt: skip
        else:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.actions import ArtifactUpdate

            with get_client(sync_client=True) as client:
                client.update_artifact(self.artifact, ArtifactUpdate(data=markdown))
        self.drawn = time.monotonic()


@task(name="publish-model", cache_policy=NO_CACHE, **{k: v for k, v in io_task_options().items() if k != "persist_result"})
@explained
def publish_model_task(model_dir: str, repo: str, evaluation: dict[str, Any] | None, hub_token_block: str | None = None) -> PushResult:
    """The final model with its card (lineage, evaluation) to the Hub target; its hf://OWNER/NAME@REV."""
    pushed = publish_model(model_dir, repo, resolver(hub_token_block).hub, evaluation=evaluation)
    get_run_logger().info("model published: %s", pushed.uri)
    create_link_artifact(key="model", link=pushed.url, link_text=pushed.uri, description="The published model")
    return pushed


@task(name="training-summary", cache_policy=NO_CACHE)
@explained
def summary_task(model_dir: str, model: str | None, evaluation: dict[str, Any] | None) -> str:
    """The run summary artifact: model URI, final validation loss and perplexity, tokens, resumes, HumanEval."""
    markdown = report.summary_markdown(model=model, summary=read_summary(model_dir), evaluation=evaluation, references=BOOK_PASS_AT_K)
    create_markdown_artifact(markdown, key="training-summary", description=f"What the training run produced and reached ({model or model_dir})")
    return markdown
