"""Prefect tasks of pre-tokenization: plan the shards, tokenize each (mapped, Dask-capable), commit the set."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from codeparrot.publish import dataset_lineage
from codeparrot.storage import open_store
from codeparrot.tokens import (
    PretokenizeConfig,
    ShardJob,
    TokenSet,
    TokenShard,
    commit,
    manifest_for,
    plan,
    tokenize_and_upload,
)
from codeparrot.train.data import load_tokenizer
from tasks._common import explained, io_task_options
from tasks.hub import resolver

# The token set's manifest is the cache: a committed set is found by its location, so tasks keep no
# Prefect cache of their own (a result cached on one machine would point at nothing on another).
_OPTIONS = {**io_task_options(), "cache_policy": NO_CACHE, "persist_result": False}


@task(name="plan-token-shards", **_OPTIONS)
@explained
def plan_task(dataset: str, hub_token_block: str | None = None) -> list[ShardJob]:
    """The Parquet shards of a pinned dataset, one job each (the dataset is fetched to this machine once)."""
    jobs = plan(resolver(hub_token_block).resolve(dataset).path)
    get_run_logger().info("%s: %d shards to tokenize", dataset, len(jobs))
    return jobs


@task(name="tokenize-shard", **_OPTIONS)
@explained
def tokenize_shard_task(
    dataset: str, tokenizer: str, job: ShardJob, store_uri: str, cfg: PretokenizeConfig, hub_token_block: str | None = None
) -> TokenShard:
    """Tokenize one shard and upload it to the token set's store (on whichever worker runs it)."""
    res = resolver(hub_token_block)
    data, tok = res.resolve(dataset), res.resolve(tokenizer)
    return tokenize_and_upload(data.path, job, load_tokenizer(tok.path), open_store(store_uri),
                               batch_size=cfg.batch_size, threads=cfg.threads)  # fmt: skip


@task(name="commit-token-set", **_OPTIONS)
@explained
def commit_task(dataset: str, tokenizer: str, shards: list[TokenShard], store_uri: str, hub_token_block: str | None = None) -> TokenSet:
    """Write the manifest last: only now does the token set exist for the trainer."""
    res = resolver(hub_token_block)
    data, tok = res.resolve(dataset), res.resolve(tokenizer)
    manifest = manifest_for(data, tok, load_tokenizer(tok.path), shards, dataset_lineage(data.path))
    return commit(open_store(store_uri), manifest)
