"""Pre-tokenization flow (CPU pool): a dataset revision x a tokenizer revision -> token shards + manifest.

Runs after each newly published tokenizer (deployments/prefect.yaml) and, as a subflow, at the start of
training when no token set is given. A committed token set is found by its location, derived from both
revisions, so a rerun costs one read; otherwise one mapped task per Parquet shard tokenizes and uploads,
on a Dask cluster when `dask_address` is set, and the manifest is written last.
"""

from __future__ import annotations

import click
from prefect import flow, unmapped
from pydantic import BaseModel

from codeparrot.services import ensure_storage
from codeparrot.storage import open_store
from codeparrot.tokens import PretokenizeConfig, read_manifest, token_set_key
from flows._local import local_run
from flows._params import Text, param, text
from tasks.curate import on_dask
from tasks.events import TOKENS_PUBLISHED, announce
from tasks.hub import resolver
from tasks.pretokenize import commit_task, plan_task, tokenize_shard_task

DEFAULT_DATASET = "hf://datasets/codeparrot/codeparrot-clean"
DEFAULT_TOKENIZER = "hf://codeparrot/codeparrot-tokenizer"


class TokensResult(BaseModel):
    """The token set's URI and the exact references it was built from."""

    tokens: str
    dataset: str
    tokenizer: str
    train_tokens: int
    valid_tokens: int
    new: bool


def build_tokens(dataset: str, tokenizer: str, cfg: PretokenizeConfig, hub_token_block: str | None) -> TokensResult:
    """The call graph, in the calling flow: find a committed set, else map the shards and commit."""
    res = resolver(hub_token_block)
    data_ref, tok_ref = res.pin(dataset), res.pin(tokenizer)
    key = token_set_key(res.identity(data_ref), res.identity(tok_ref))
    store = open_store(cfg.root).child(key)
    manifest, new = read_manifest(store), False
    if manifest is None:
        jobs = plan_task(str(data_ref), hub_token_block)
        shards = tokenize_shard_task.map(
            unmapped(str(data_ref)), unmapped(str(tok_ref)), jobs, unmapped(store.uri), unmapped(cfg),
            unmapped(hub_token_block),
        ).result()  # fmt: skip
        manifest, new = commit_task(str(data_ref), str(tok_ref), shards, store.uri, hub_token_block), True
    return TokensResult(tokens=store.uri, dataset=manifest.dataset, tokenizer=manifest.tokenizer,
                        train_tokens=manifest.tokens("train"), valid_tokens=manifest.tokens("valid"), new=new)  # fmt: skip


@flow(name="pretokenize", description="Token shards of a dataset revision with a tokenizer revision, for training.")
def pretokenize_flow(
    dataset: str = param(DEFAULT_DATASET, "Dataset"),
    tokenizer: str = param(DEFAULT_TOKENIZER, "Tokenizer"),
    cfg: PretokenizeConfig = param(PretokenizeConfig(), "Token sets"),  # noqa: B008 - the UI form's defaults
    dask_address: Text = text("Dask scheduler"),
    hub_token_block: Text = text("Hub token block"),
) -> TokensResult:
    """Tokenize every Parquet shard of `dataset` with `tokenizer` into a token set under `cfg.root`.

    Args:
        dataset: The dataset, hf://datasets/OWNER/NAME[@REV] (no @REV: the newest published revision now).
        tokenizer: The tokenizer, hf://OWNER/NAME[@REV] (no @REV: the newest published revision now).
        cfg: Where token sets are stored (a gs:// prefix the pools share, or a folder) and how shards are read.
        dask_address: A Dask scheduler (tcp://host:8786) for the shard tasks, or "local"; empty: threads here.
        hub_token_block: Name of a Prefect Secret block holding a Hub token (never the token itself); empty:
            the worker's environment (HF_TOKEN).
    """
    with ensure_storage(dataset, tokenizer, cfg.root):
        if dask_address:
            result = on_dask(_on_dask, dask_address, dataset, tokenizer, cfg, hub_token_block)
        else:
            result = build_tokens(dataset, tokenizer, cfg, hub_token_block)
        # Only this flow announces: a training run that builds its own token set must not trigger another.
        announce(TOKENS_PUBLISHED, f"codeparrot.tokens.{result.tokens.rstrip('/').rsplit('/', 1)[-1]}",
                 {"tokens": result.tokens, "dataset": result.dataset, "tokenizer": result.tokenizer}, new=result.new)  # fmt: skip
    return result


@flow(name="pretokenize-shards")
def _on_dask(dataset: str, tokenizer: str, cfg: PretokenizeConfig, hub_token_block: str | None) -> TokensResult:
    """The shard tasks as a subflow, so they run on the Dask cluster."""
    return build_tokens(dataset, tokenizer, cfg, hub_token_block)


@click.command("pretokenize")
@click.argument("dataset", default=DEFAULT_DATASET)
@click.argument("tokenizer", default=DEFAULT_TOKENIZER)
@click.option("--root", default=None, help=f"Where token sets are stored (default {PretokenizeConfig().root}).")
@click.option("--dask-address", default=None, help="Dask scheduler for the shard tasks ('local' for a LocalCluster).")
def pretokenize_command(dataset: str, tokenizer: str, root: str | None, dask_address: str | None) -> None:
    """Tokenize DATASET (default: the stand-in's or Hub's head) with TOKENIZER into a token set; print its URI."""
    cfg = PretokenizeConfig(root=root) if root else PretokenizeConfig()
    with local_run():
        result = pretokenize_flow(dataset=dataset, tokenizer=tokenizer, cfg=cfg, dask_address=dask_address)
    click.echo(f"{result.tokens}  ({result.train_tokens:,} train / {result.valid_tokens:,} valid tokens)")
