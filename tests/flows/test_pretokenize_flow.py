"""The pre-tokenization flow: one mapped task per Parquet shard, the manifest last, a rerun finds the set."""

from __future__ import annotations

import pytest

from codeparrot.hub import StandIn
from codeparrot.publish import PublishConfig, build_dataset
from codeparrot.storage import LocalStore
from codeparrot.tokens import PretokenizeConfig, open_token_set
from codeparrot.train.sample import train_sample_tokenizer
from flows.pretokenize import pretokenize_flow
from tests.builders import stdlib_records, task_run_states


def test_pretokenize_maps_the_shards_commits_once_and_a_rerun_finds_the_set(prefect_harness, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CODEPARROT_HUB_ROOT", str(tmp_path / "hub"))
    hub = StandIn(LocalStore(tmp_path / "hub"))
    build_dataset(stdlib_records(120), tmp_path / "ds", PublishConfig(valid_fraction=0.2, max_shard_mib=0.3))
    dataset = hub.push(tmp_path / "ds", "dataset", "me/data")
    tokenizer = hub.push(train_sample_tokenizer(tmp_path / "ds", tmp_path / "tok", vocab_size=400), "model", "me/tok")
    cfg = PretokenizeConfig(root=str(tmp_path / "tokens"))

    first = pretokenize_flow(dataset="hf://datasets/me/data", tokenizer="hf://me/tok", cfg=cfg, return_state=True)
    assert first.is_completed(), first.message
    result = first.result()
    assert (result.dataset, result.tokenizer, result.new) == (dataset.uri, tokenizer.uri, True)
    assert result.tokens == str(tmp_path / "tokens" / f"{dataset.revision}-{tokenizer.revision}")
    manifest, splits = open_token_set(result.tokens)
    shards = len(manifest.shards)
    assert shards >= 3 and len(splits["train"]) == result.train_tokens > 0
    states = task_run_states(first)
    assert states["tokenize-shard"] == ["Completed"] * shards
    assert states["plan-token-shards"] == states["commit-token-set"] == states["announce"] == ["Completed"]

    second = pretokenize_flow(dataset=dataset.uri, tokenizer=tokenizer.uri, cfg=cfg, return_state=True)
    assert second.result().tokens == result.tokens and not second.result().new
    assert set(task_run_states(second)) == {"announce"}, "a committed set costs one read"


@pytest.mark.slow
def test_pretokenize_on_a_local_dask_cluster_builds_the_same_token_set(prefect_harness, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CODEPARROT_HUB_ROOT", str(tmp_path / "hub"))  # before the cluster starts: its workers inherit it
    hub = StandIn(LocalStore(tmp_path / "hub"))
    build_dataset(stdlib_records(120), tmp_path / "ds", PublishConfig(valid_fraction=0.2, max_shard_mib=0.3))
    dataset = hub.push(tmp_path / "ds", "dataset", "me/data")
    tokenizer = hub.push(train_sample_tokenizer(tmp_path / "ds", tmp_path / "tok", vocab_size=400), "model", "me/tok")
    threaded = pretokenize_flow(dataset=dataset.uri, tokenizer=tokenizer.uri, cfg=PretokenizeConfig(root=str(tmp_path / "a")))
    on_dask = pretokenize_flow(dataset=dataset.uri, tokenizer=tokenizer.uri, cfg=PretokenizeConfig(root=str(tmp_path / "b")),
                               dask_address="local")  # fmt: skip
    a, _ = open_token_set(threaded.tokens)
    b, _ = open_token_set(on_dask.tokens)
    assert on_dask.new and [s.sha256 for s in b.shards] == [s.sha256 for s in a.shards] and len(a.shards) >= 3
