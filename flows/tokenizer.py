"""Tokenizer flow: train, evaluate and publish a BPE tokenizer for a published dataset revision."""

from __future__ import annotations

from prefect import flow

from codeparrot.services import ensure_storage
from codeparrot.tokenizer import TokenizerConfig, TokenizerResult
from flows._params import Text, param, text
from flows.pretokenize import DEFAULT_DATASET
from tasks.events import TOKENIZER_PUBLISHED, announce
from tasks.hub import pinned
from tasks.tokenizer import push_tokenizer_task, tokenizer_stage


@flow(name="tokenizer", description="Byte-level BPE trained on the published train split, evaluated on valid.")
def tokenizer_flow(
    data: str = param(DEFAULT_DATASET, "Dataset"),
    cfg: TokenizerConfig = param(TokenizerConfig(), "Tokenizer"),  # noqa: B008 - the UI form's defaults
    push: bool = param(True, "Publish"),
    hub_token_block: Text = text("Hub token block"),
    force_refresh: bool = param(False, "Force refresh"),
) -> TokenizerResult:
    """Train the tokenizer on a dataset revision and publish it as `cfg.name`; returns its hf://...@REV URI.

    Args:
        data: The dataset, hf://datasets/OWNER/NAME[@REV] (no @REV: the newest published revision when the
            run starts) or a published folder.
        cfg: How the tokenizer is trained and evaluated, and the repo it is published as.
        push: Publish the tokenizer to the Hub target (the stand-in unless the Hub is configured).
        hub_token_block: Name of a Prefect Secret block holding a Hub token (never the token itself); empty:
            the worker's environment (HF_TOKEN).
        force_refresh: Train again even when a tokenizer of this dataset revision and config exists.
    """
    with ensure_storage(data, hub=push):
        dataset = pinned(data, hub_token_block)
        result = tokenizer_stage(dataset, cfg, hub_token_block, force=force_refresh)
        if push:
            result = push_tokenizer_task(result, cfg, hub_token_block)
            announce(TOKENIZER_PUBLISHED, f"codeparrot.tokenizer.{cfg.name}",
                     {"tokenizer": str(result.uri), "dataset": dataset}, new=result.new)  # fmt: skip
    return result
