"""Tokenizer flow: train, evaluate and (optionally) push a BPE tokenizer for a published dataset."""

from __future__ import annotations

from prefect import flow

from codeparrot.publish import PublishConfig, published_path
from codeparrot.tokenizer import TokenizerConfig, TokenizerResult
from tasks.tokenizer import push_tokenizer_task, tokenizer_stage


@flow(name="tokenizer", description="Byte-level BPE trained on the published train split, evaluated on valid.")
def tokenizer_flow(
    data: str | None = None,
    cfg: TokenizerConfig = TokenizerConfig(),  # noqa: B008 - the UI form's defaults
    push: bool = True,
    hub_repo: str | None = None,
    hub_token_block: str | None = None,
    force_refresh: bool = False,
) -> TokenizerResult:
    """`data`: a published dataset folder (default: the head of the local Hub stand-in)."""
    folder = data or str(published_path(PublishConfig()))
    result = tokenizer_stage(folder, cfg, force=force_refresh)
    if push:
        push_tokenizer_task(result, cfg, hub_repo, hub_token_block)
    return result
