from __future__ import annotations

import numpy as np
import pytest

from codeparrot.dataset import iter_texts
from codeparrot.errors import DataError
from codeparrot.tokens import MANIFEST, open_token_set
from codeparrot.train.data import PackedLoader, check_blocks, load_tokenizer, validation_batches
from tests.train.helpers import prebuild_tokens


def test_token_set_holds_every_file_followed_by_eos(corpus) -> None:
    tok = load_tokenizer(corpus.tokenizer)
    manifest, splits = open_token_set(prebuild_tokens(corpus.data, corpus.tokenizer, corpus.token_cache))
    texts = list(iter_texts(corpus.data, "valid"))
    expected: list[int] = []
    for text in texts:
        expected += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    valid = splits["valid"][0 : len(splits["valid"])]
    assert valid.tolist() == expected
    assert int((valid == tok.eos_token_id).sum()) == len(texts) == sum(s.files for s in manifest.split("valid"))
    assert manifest.tokens("valid") == len(expected) and manifest.vocab_size == len(tok)


def test_the_token_set_is_built_once_per_dataset_and_tokenizer(corpus) -> None:
    folder = prebuild_tokens(corpus.data, corpus.tokenizer, corpus.token_cache)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert prebuild_tokens(corpus.data, corpus.tokenizer, corpus.token_cache) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    manifest, _ = open_token_set(folder)
    assert folder.name == f"{manifest.dataset_identity}-{manifest.tokenizer_identity}"
    assert manifest.dataset == str(corpus.data) and manifest.tokenizer == str(corpus.tokenizer)


def test_a_token_set_without_its_manifest_is_rebuilt_and_a_damaged_shard_is_named(corpus, tmp_path) -> None:
    cache = tmp_path / "cache"
    folder = prebuild_tokens(corpus.data, corpus.tokenizer, cache)
    shard = folder / "valid-00000.bin"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"valid-00000.bin has .* bytes, the manifest says"):
        open_token_set(folder)
    (folder / MANIFEST).unlink()  # a crash before the commit: the set does not exist yet
    assert prebuild_tokens(corpus.data, corpus.tokenizer, cache) == folder
    assert shard.read_bytes() == good


def _tokens(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)


def test_loader_serves_each_block_once_per_epoch_in_a_seeded_order() -> None:
    tokens = _tokens(10 * 4 + 3)  # 10 blocks of 4, a 3-token tail never used
    a = PackedLoader(tokens, 4, 2, seed=7)
    firsts = [row[0] // 4 for _ in range(5) for row in a.next_batch()]
    assert sorted(firsts) == list(range(10))
    assert firsts != list(range(10))  # shuffled
    b = PackedLoader(tokens, 4, 2, seed=7)
    assert [row[0] // 4 for _ in range(5) for row in b.next_batch()] == firsts
    c = PackedLoader(tokens, 4, 2, seed=8)
    assert [row[0] // 4 for _ in range(5) for row in c.next_batch()] != firsts
    # the next epoch is a fresh permutation of the same blocks
    second = [row[0] // 4 for _ in range(5) for row in a.next_batch()]
    assert sorted(second) == list(range(10)) and second != firsts
    assert a.epoch == 2.0


def test_loader_resumes_at_the_next_unseen_sequence() -> None:
    tokens = _tokens(64 * 16)
    straight = PackedLoader(tokens, 16, 3, seed=1)
    expected = [straight.next_batch() for _ in range(30)]
    first = PackedLoader(tokens, 16, 3, seed=1)
    got = [first.next_batch() for _ in range(11)]
    state = first.state_dict()
    resumed = PackedLoader(tokens, 16, 3, seed=1)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(19)]
    assert all(np.array_equal(x, y) for x, y in zip(expected, got, strict=True))


def test_loader_refuses_state_of_other_data() -> None:
    state = PackedLoader(_tokens(640), 16, 2, seed=1).state_dict()
    with pytest.raises(DataError, match="token data changed"):
        PackedLoader(_tokens(1280), 16, 2, seed=1).load_state_dict(state)


def test_ranks_split_each_global_batch_without_overlap() -> None:
    tokens = _tokens(16 * 40)
    single = PackedLoader(tokens, 16, 4, seed=3)
    ranks = [PackedLoader(tokens, 16, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        whole = single.next_batch()
        parts = np.concatenate([r.next_batch() for r in ranks])
        assert np.array_equal(whole, parts)
    assert single.consumed == ranks[0].consumed == ranks[1].consumed == 20


def test_validation_batches_cover_the_first_blocks_across_ranks() -> None:
    tokens = _tokens(16 * 10)
    seen = [row[0] // 16 for r in range(3) for b in validation_batches(tokens, 16, 2, 7, rank=r, world_size=3) for row in b]
    assert sorted(seen) == list(range(7))


def test_training_needs_one_full_sequence() -> None:
    with pytest.raises(DataError, match="the train split of X holds 3 tokens, fewer than one sequence of 64"):
        check_blocks(_tokens(3), 64, "the train split of X")
    assert len(check_blocks(_tokens(64), 64, "X")) == 64
