"""Token sets: one shard per Parquet shard, read back as the one stream a single token file would hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from codeparrot.artifacts import Resolver
from codeparrot.dataset import iter_text_batches, split_files
from codeparrot.hub import StandIn
from codeparrot.packing import open_token_file, write_token_file
from codeparrot.publish import PublishConfig, build_dataset
from codeparrot.storage import LocalStore
from codeparrot.tokens import (
    MANIFEST,
    ShardedTokens,
    TokenSet,
    build_token_set,
    commit,
    open_token_set,
    plan,
    tokenize_shard,
)
from codeparrot.train.data import PackedLoader, load_tokenizer
from codeparrot.train.sample import train_sample_tokenizer
from tests.builders import stdlib_records


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, Path]:
    """A published dataset whose train split has several Parquet shards, and a tokenizer."""
    root = tmp_path_factory.mktemp("sharded")
    data = root / "data"
    build_dataset(stdlib_records(150), data, PublishConfig(valid_fraction=0.2, max_shard_mib=0.4, row_group_rows=20))
    return data, train_sample_tokenizer(data, root / "tok", vocab_size=600)


@pytest.fixture(scope="module")
def token_set(sharded, tmp_path_factory) -> tuple[TokenSet, Path]:
    data, tok = sharded
    resolver = Resolver(StandIn(LocalStore(tmp_path_factory.mktemp("unused"))), tmp_path_factory.mktemp("cache"))
    store = LocalStore(tmp_path_factory.mktemp("tokens") / "set")
    manifest = build_token_set(resolver.resolve(data), resolver.resolve(tok), store, threads=3)
    return manifest, store.local_path()


def test_one_token_shard_per_parquet_shard_in_loader_order(sharded, token_set) -> None:
    data, _ = sharded
    manifest, folder = token_set
    train_shards = split_files(data, "train")
    assert len(train_shards) >= 3, "the fixture must span several shards"
    assert [j.source for j in plan(data)] == [p.relative_to(data).as_posix() for s in ("train", "valid") for p in split_files(data, s)]
    assert [s.name for s in manifest.split("train")] == [f"train-{i:05d}.bin" for i in range(len(train_shards))]
    objects = sorted(o.key for o in LocalStore(folder).list())  # the store's lock files are not objects
    assert objects == sorted([MANIFEST, *(s.name for s in manifest.shards)])
    assert sum(s.files for s in manifest.shards) == 150


def test_shards_concatenate_to_exactly_the_single_file_stream(sharded, token_set, tmp_path) -> None:
    data, tok_dir = sharded
    _, splits = open_token_set(token_set[1])
    tok = load_tokenizer(tok_dir)
    for split in ("train", "valid"):
        single = tmp_path / f"{split}.bin"
        batches = ([e.ids for e in tok.backend_tokenizer.encode_batch_fast(b, add_special_tokens=False)]
                   for b in iter_text_batches(data, split, batch_size=64))  # fmt: skip
        write_token_file(batches, single, eos_id=tok.eos_token_id, vocab_size=len(tok))
        whole = open_token_file(single)
        assert whole is not None and len(splits[split]) == len(whole)
        assert np.array_equal(splits[split][0 : len(whole)], whole)


def test_the_loader_position_means_the_same_across_shards(token_set) -> None:
    """Resuming on the sharded view serves exactly what an uninterrupted run on one array serves."""
    _, splits = open_token_set(token_set[1])
    sharded = splits["train"]
    whole = sharded[0 : len(sharded)]
    reference = PackedLoader(whole, 64, 4, seed=3)
    expected = [reference.next_batch() for _ in range(40)]
    first = PackedLoader(sharded, 64, 4, seed=3)
    got = [first.next_batch() for _ in range(17)]
    resumed = PackedLoader(sharded, 64, 4, seed=3)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.next_batch() for _ in range(23)]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_sharded_slices_cross_boundaries_and_skip_empty_shards() -> None:
    parts = [np.arange(0, 5, dtype=np.uint16), np.zeros(0, dtype=np.uint16), np.arange(5, 7, dtype=np.uint16),
             np.arange(7, 20, dtype=np.uint16)]  # fmt: skip
    tokens = ShardedTokens(parts)
    whole = np.arange(20, dtype=np.uint16)
    assert len(tokens) == 20
    for start in range(21):
        for stop in range(start, 22):
            assert np.array_equal(tokens[start:stop], whole[start:stop]), (start, stop)
    with pytest.raises(TypeError, match="contiguous"):
        tokens[::2]


def test_the_first_commit_wins_and_a_rebuild_reuses_the_committed_set(sharded, token_set, tmp_path) -> None:
    manifest, folder = token_set
    store = LocalStore(folder)
    other = manifest.model_copy(update={"lineage": {"note": "a concurrent writer"}})
    assert commit(store, other) == manifest
    data, tok = sharded
    resolver = Resolver(StandIn(LocalStore(tmp_path / "unused")), tmp_path / "cache")
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert build_token_set(resolver.resolve(data), resolver.resolve(tok), store) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps, "nothing tokenized again"


def test_a_shards_bytes_do_not_depend_on_the_thread_count(sharded, tmp_path) -> None:
    _, tok_dir = sharded
    data = tmp_path / "data"
    build_dataset(stdlib_records(120), data, PublishConfig(valid_fraction=0.2, row_group_rows=10))
    tok = load_tokenizer(tok_dir)
    [job] = [j for j in plan(data) if j.split == "train"]
    assert pq.ParquetFile(data / job.source).num_row_groups >= 5, "one shard of several row groups"
    one = tokenize_shard(data, job, tok, tmp_path / "one.bin", threads=1)
    four = tokenize_shard(data, job, tok, tmp_path / "four.bin", threads=4, batch_size=3)
    assert one.sha256 == four.sha256 and one.files == four.files == pq.ParquetFile(data / job.source).metadata.num_rows


def test_a_corrupt_parquet_shard_or_a_full_disk_names_the_file(sharded, tmp_path, monkeypatch) -> None:
    import errno
    import shutil

    from codeparrot import tokens
    from codeparrot.errors import DataError, DiskFull

    data, tok = sharded
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    job = plan(broken)[1]
    source = broken / job.source
    source.write_bytes(source.read_bytes()[:-100])  # the footer is gone
    with pytest.raises(DataError, match=rf"^{source} is not a readable Parquet file \(.*fetch or publish the dataset again$"):
        tokenize_shard(broken, job, load_tokenizer(tok), tmp_path / "out.bin", threads=2)

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokens, "write_tokens", no_space)
    out = tmp_path / "full.bin"
    with pytest.raises(DiskFull, match=rf"^no space left on device writing {out}: free space or point TMPDIR elsewhere$"):
        tokenize_shard(data, plan(data)[0], load_tokenizer(tok), out)
