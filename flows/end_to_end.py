"""The whole DAG in one flow: dataset refresh -> tokenizer -> training -> evaluation -> sample completions.

`codeparrot run` runs it on the embedded defaults (local emulators, the seed from this machine's Python
files, the local Hub stand-in, a tiny GPT-2 on CPU) and prints where every output is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from prefect import flow
from pydantic import BaseModel

from codeparrot.curate.config import CurateConfig
from codeparrot.evaluate.config import EvalConfig
from codeparrot.export import ExportConfig
from codeparrot.hub import HubSettings
from codeparrot.publish import PublishConfig
from codeparrot.services import ensure_services
from codeparrot.tokenizer import TokenizerConfig
from codeparrot.train.config import TrainConfig
from flows._local import local_run
from flows.dataset_refresh import RefreshResult, dataset_refresh
from flows.tokenizer import tokenizer_flow
from flows.training import training
from tasks.evaluate import samples_task

# The seed's interactive check (chapter 10, "Results and Analysis").
PROMPT = "def area_of_rectangle(a: float, b: float):\n    "
# A quick HumanEval for the one-command demo; a deployment evaluates all 164 problems x 200 samples.
DEMO_EVAL = EvalConfig.for_preset("tiny")


class EndToEndResult(BaseModel):
    dataset: RefreshResult
    tokenizer: str  # hf://OWNER/NAME@REV
    tokenizer_dir: str
    tokenizer_chars_per_token: float
    tokens: str
    model: str | None  # hf://OWNER/NAME@REV
    model_dir: str
    evaluation: dict[str, Any] | None
    completions: list[str]


@flow(name="end-to-end", description="Dataset refresh, tokenizer, training and evaluation in one run.")
def end_to_end(
    export: ExportConfig = ExportConfig(),  # noqa: B008 - the UI form's defaults
    curate: CurateConfig = CurateConfig(),  # noqa: B008
    publish: PublishConfig = PublishConfig(),  # noqa: B008
    tokenizer: TokenizerConfig = TokenizerConfig(),  # noqa: B008
    train: TrainConfig = TrainConfig(),  # noqa: B008
    evaluation: EvalConfig = DEMO_EVAL,
    prompt: str = PROMPT,
    force_refresh: bool = False,
) -> EndToEndResult:
    """Every stage with its defaults, each handing the next the exact reference it published; each is cached,
    so a rerun only redoes what changed."""
    data = dataset_refresh(export=export, curate=curate, publish=publish, force_refresh=force_refresh)
    tok = tokenizer_flow(data=data.dataset, cfg=tokenizer, push=True, force_refresh=force_refresh)
    assert tok.uri is not None, "the tokenizer flow publishes when push=True"
    trained = training(data=data.dataset, tokenizer=tok.uri, config=train, eval_config=evaluation)
    completions = samples_task(trained.model_dir, prompt, n=3)
    return EndToEndResult(
        dataset=data,
        tokenizer=tok.uri,
        tokenizer_dir=tok.path,
        tokenizer_chars_per_token=tok.chars_per_token,
        tokens=trained.tokens,
        model=trained.model,
        model_dir=trained.model_dir,
        evaluation=trained.evaluation,
        completions=completions,
    )


def summary_lines(result: EndToEndResult, seconds: float) -> list[str]:
    """Where every output is, the headline numbers, and the completions."""
    d, ev = result.dataset, result.evaluation or {}
    run_dir = Path(result.model_dir).parent
    lines = [
        f"finished in {seconds / 60:.1f} min; outputs:",
        f"  export     {d.export_uri} ({d.rows} rows)",
        f"  download   {d.download_dir}",
        f"  curated    {d.curated_dir} ({d.kept} kept; stats.md, duplicate_clusters.jsonl)",
        f"  dataset    {d.dataset}  ({d.url})",
        f"  tokenizer  {result.tokenizer}  ({result.tokenizer_chars_per_token:.2f} chars/token; {result.tokenizer_dir}/eval.md)",
        f"  tokens     {result.tokens}",
        f"  training   {run_dir}  (metrics.jsonl, tensorboard/, checkpoints)",
        f"  model      {result.model}  (trained in {result.model_dir})",
    ]
    if "perplexity" in ev:
        lines.append(f"  perplexity {ev['perplexity']:.1f} (loss {ev['loss']:.3f}) on the valid split")
    passes = {k: v for k, v in ev.items() if k.startswith("pass@")}
    if passes:
        shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in passes.items())
        lines.append(f"  humaneval  {shown} on {ev.get('humaneval_problems')} problems (a tiny CPU model: expect ~0)")
    hub = HubSettings.from_env()
    lines.append(f"  hub        {'the Hugging Face Hub' if hub.use_hub else f'the stand-in at {hub.standin_root}'}")
    lines.append("")
    lines.append("completions of the seed's prompt:")
    for i, c in enumerate(result.completions, 1):
        lines.append(f"--- {i}")
        lines.append(PROMPT + c)
    lines += ["", f"model: {result.model}  (`codeparrot fetch` gives a local copy on any machine)"]
    return lines


@click.command("run")
@click.option("--max-steps", type=int, default=None, help="Training steps (default 400).")
@click.option("--vocab-size", type=int, default=None, help="Tokenizer vocabulary (default 32768).")
@click.option("--humaneval-limit", type=int, default=DEMO_EVAL.limit, show_default=True, help="HumanEval problems.")
@click.option("--force-refresh", is_flag=True, help="Recompute every stage, ignoring caches.")
def run_command(max_steps: int | None, vocab_size: int | None, humaneval_limit: int, force_refresh: bool) -> None:
    """Run the whole DAG on the embedded defaults and print where every output is."""
    train = TrainConfig(max_steps=max_steps) if max_steps else TrainConfig()
    tok = TokenizerConfig(vocab_size=vocab_size, baseline_vocab_size=min(8192, vocab_size // 4)) if vocab_size else TokenizerConfig()
    evaluation = DEMO_EVAL.model_copy(update={"limit": humaneval_limit})
    t0 = time.monotonic()
    # One start of the embedded services (and the seed) for every stage; nothing starts where GCP is configured.
    with local_run(), ensure_services():
        result = end_to_end(tokenizer=tok, train=train, evaluation=evaluation, force_refresh=force_refresh)
    click.echo("\n".join(summary_lines(result, time.monotonic() - t0)))
