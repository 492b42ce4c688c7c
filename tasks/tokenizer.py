"""Prefect tasks of the tokenizer stage."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from codeparrot.dataset import dataset_revision
from codeparrot.hub import PushResult
from codeparrot.tokenizer import (
    TOKENIZER_VERSION,
    TokenizerConfig,
    TokenizerResult,
    default_output,
    load_result,
    push_tokenizer,
    train_tokenizer,
)
from tasks._common import cached_call, content_cache, io_task_options
from tasks.hub import hub_token


@task(name="tokenizer", cache_policy=content_cache("tokenizer", TOKENIZER_VERSION, ignore=("data",)), persist_result=True)
def tokenizer_task(data: str, revision: str, cfg: TokenizerConfig) -> TokenizerResult:
    """Train and evaluate the tokenizer on a published dataset revision (cached on revision + config)."""
    out = default_output(Path(data), cfg)
    result = train_tokenizer(data, out, cfg, progress=False)
    report = (Path(result.path) / "eval.md").read_text()
    get_run_logger().info("tokenizer %s: %.3f chars/token on valid", result.path, result.chars_per_token)
    create_markdown_artifact(key="tokenizer-eval", markdown=f"## Tokenizer evaluation\n\n{report}", description=result.path)
    return result


@task(name="push-tokenizer", **io_task_options())
def push_tokenizer_task(result: TokenizerResult, cfg: TokenizerConfig, hub_repo: str | None, token_block: str | None) -> PushResult:
    """Push to the Hub repo (token from the Secret block or HF_TOKEN) or to the local stand-in."""
    pushed = push_tokenizer(result, cfg, hub_repo=hub_repo, token=hub_token(token_block) if hub_repo else None)
    get_run_logger().info("tokenizer pushed to %s", pushed.url)
    return pushed


def tokenizer_stage(data: str, cfg: TokenizerConfig, *, force: bool = False) -> TokenizerResult:
    """The tokenizer task keyed on the dataset's revision, recomputed if its folder is gone."""
    revision = dataset_revision(data)
    present = load_result(default_output(Path(data), cfg)) is not None
    return cached_call(tokenizer_task, data, revision, cfg, force=force, outputs_present=present)
