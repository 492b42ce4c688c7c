"""Prefect tasks of the tokenizer stage."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from codeparrot.tokenizer import (
    TOKENIZER_VERSION,
    TokenizerConfig,
    TokenizerResult,
    default_output,
    load_result,
    push_tokenizer,
    train_tokenizer,
)
from tasks._common import cached_call, content_cache, explained, io_task_options
from tasks.hub import resolver


@task(name="tokenizer", cache_policy=content_cache("tokenizer", TOKENIZER_VERSION, ignore=("hub_token_block",)), persist_result=True)
@explained
def tokenizer_task(dataset: str, cfg: TokenizerConfig, hub_token_block: str | None = None) -> TokenizerResult:
    """Train and evaluate the tokenizer on a pinned dataset reference (cached on the reference + config)."""
    data = resolver(hub_token_block).resolve(dataset)
    out = default_output(data.identity, cfg)
    result = train_tokenizer(data.path, out, cfg, dataset=str(data.ref), dataset_identity=data.identity, progress=False)
    report = (Path(result.path) / "eval.md").read_text()
    get_run_logger().info("tokenizer %s: %.3f chars/token on valid", result.path, result.chars_per_token)
    create_markdown_artifact(key="tokenizer-eval", markdown=f"## Tokenizer evaluation\n\n{report}", description=f"Chars per token, round trips and keyword coverage of the tokenizer in {result.path}")
    return result


@task(name="push-tokenizer", **io_task_options())
@explained
def push_tokenizer_task(result: TokenizerResult, cfg: TokenizerConfig, hub_token_block: str | None) -> TokenizerResult:
    """Publish to the Hub target (token from the Secret block or HF_TOKEN); the result with its hf:// URI."""
    pushed = push_tokenizer(result, cfg, resolver(hub_token_block).hub)
    get_run_logger().info("tokenizer published: %s", pushed.uri)
    return pushed


def tokenizer_stage(dataset: str, cfg: TokenizerConfig, hub_token_block: str | None = None, *, force: bool = False) -> TokenizerResult:
    """The tokenizer task keyed on the pinned dataset reference, recomputed if its local folder is gone."""
    present = load_result(default_output(resolver(hub_token_block).identity(dataset), cfg)) is not None
    return cached_call(tokenizer_task, dataset, cfg, hub_token_block, force=force, outputs_present=present)
