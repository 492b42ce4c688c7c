import json
import tracemalloc
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from codeparrot.cli import main
from codeparrot.publish import PublishConfig, build_dataset
from codeparrot.tokenizer import (
    EOS,
    TokenizerConfig,
    keyword_report,
    sample_keys,
    train_bpe,
    train_tokenizer,
    training_batches,
)
from tests.builders import tiny_dataset

SMALL = TokenizerConfig(vocab_size=600, baseline_vocab_size=400)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("tok") / "data", limit=120)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokout") / "tok"
    return out, train_tokenizer(data, out, SMALL, progress=False)


def test_saved_tokenizer_loads_with_autotokenizer_and_round_trips_every_valid_file(trained, data):
    out, result = trained
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == tok.bos_token == tok.unk_token == EOS
    assert len(tok) == 600 and tok.convert_tokens_to_ids(EOS) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["round_trip"]["failures"] == 0 and report["round_trip"]["files"] > 0 and result.round_trip_ok
    tricky = "x = 'caf\u00e9 \u2603 \U0001f40d'\r\n\tif a:  \n\t\treturn b\u00a0# \x00 trailing   \n\n"
    assert tok.decode(tok(tricky)["input_ids"]) == tricky
    assert report["baseline_vocab_size"] == 400 and result.chars_per_token > result.baseline_chars_per_token > 1.0
    assert len(report["longest_tokens"]) == 20
    assert "| characters per token (valid) |" in (out / "eval.md").read_text()
    # curation's redaction placeholders are one token each, and decode back to themselves
    for placeholder in ("<EMAIL>", "<IP_ADDRESS>", "<KEY>", "<PASSWORD>"):
        ids = tok(f'KEY = "{placeholder}"')["input_ids"]
        assert tok.convert_tokens_to_ids(placeholder) in ids and tok.decode(ids) == f'KEY = "{placeholder}"'


def test_keyword_coverage_is_reported_as_the_tokenizer_encodes(tmp_path):
    frequent = ["def f(x):\n    return x\n", "class A:\n    pass\n", "for i in y:\n    while z:\n        import os\n"]
    tok = train_bpe([frequent * 300], 350, min_frequency=2)
    report = keyword_report(tok.backend_tokenizer)
    assert report["def"]["single_token"] and report["return"]["single_token"] and report["import"]["single_token"]
    assert not report["nonlocal"]["single_token"] and report["nonlocal"]["kind"] == "hard"
    assert report["match"]["kind"] == "soft"
    assert report["nonlocal"]["bare_tokens"] == len(tok.backend_tokenizer.encode("nonlocal").ids) > 1


def test_a_rerun_reuses_the_finished_folder_and_refuses_a_foreign_one(trained, data, tmp_path):
    out, first = trained
    again = train_tokenizer(data, out, SMALL, progress=False)
    assert again.reused and again.tokenizer_hash() == first.tokenizer_hash()
    foreign = tmp_path / "busy"
    foreign.mkdir()
    (foreign / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="not a finished tokenizer"):
        train_tokenizer(data, foreign, SMALL, progress=False)


def test_sample_is_exact_and_seeded(data):
    a = sample_keys(data, 20, seed=1)
    assert len(a) == 20 and a == sample_keys(data, 20, seed=1) and a != sample_keys(data, 20, seed=2)
    batches, n = training_batches(data, TokenizerConfig(max_files=20, seed=1, batch_size=7), progress=False)
    texts = [t for b in batches for t in b]
    assert n == 20 and len(texts) == 20 and max(len(b) for b in training_batches(data, TokenizerConfig(batch_size=7), progress=False)[0]) <= 7


def test_training_feed_streams_in_bounded_memory(tmp_path):
    # ~12 MiB of text; the feed must never hold more than a few batches of it.
    recs = [{"repo_name": f"o/r{i % 40}", "path": f"m{i}.py", "copies": 1, "size": 30_000,
             "content": (f"def f{i}(a):\n    return a + {i}\n" * 1200)[:30_000], "license": "mit"} for i in range(400)]  # fmt: skip
    folder = tmp_path / "big"
    build_dataset(recs, folder, PublishConfig(valid_fraction=0.2, row_group_rows=10))
    total = sum(len(r["content"]) for r in recs)
    tracemalloc.start()
    try:
        batches, n = training_batches(folder, TokenizerConfig(batch_size=10), progress=False)
        seen = 0
        for batch in batches:
            assert len(batch) <= 10
            seen += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n > 250
    assert peak < total / 10, f"peak {peak} bytes for {total} bytes of text"


def test_cli_trains_evaluates_and_reuses(data, tmp_path, capsys):
    out = tmp_path / "cli-tok"
    args = ["tokenizer", str(data), str(out), "--vocab-size", "500", "--baseline-vocab-size", "300"]
    assert main(args) == 0
    assert "characters per token" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused tokenizer" in capsys.readouterr().out
    assert main(["tokenizer", str(data), str(tmp_path / "x"), "--vocab-size", "300", "--baseline-vocab-size", "400"]) == 2
    assert "must be smaller than vocab_size" in capsys.readouterr().err


def one_error(stderr: str) -> str:
    """The one `error:` line of a failed command, with no traceback."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    return line


def test_a_vocab_size_alone_derives_the_baseline_and_file_uris_are_local_paths(data, tmp_path, capsys):
    assert TokenizerConfig(vocab_size=2048).baseline_vocab_size == 512  # a quarter, as 8,192 of 32,768
    assert TokenizerConfig().baseline_vocab_size == 8192 and TokenizerConfig(vocab_size=300).baseline_vocab_size == 257
    out = tmp_path / "tok2048"
    # the localhost form of a file:// URI (RFC 8089), as some tools print it
    assert main(["tokenizer", f"file://localhost{data}", str(out), "--vocab-size", "2048"]) == 0
    assert "saved tokenizer" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["baseline_vocab_size"] == 512


def test_a_corrupt_parquet_shard_is_one_line_naming_the_file(data, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (shard,) = sorted((broken / "data").glob("train-*.parquet"))[:1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # the footer is gone
    assert main(["tokenizer", str(broken), str(tmp_path / "out"), "--vocab-size", "400"]) == 2
    err = one_error(capsys.readouterr().err)
    assert err.startswith(f"error: {shard} is not a readable Parquet file (") and "fetch or publish the dataset again" in err


def test_a_push_removes_staging_folders_of_killed_pushes_but_not_of_live_ones(trained, tmp_path):
    import fcntl
    import os
    import time

    from codeparrot.hub import STAGING_LOCK, StandIn
    from codeparrot.storage import LocalStore
    from codeparrot.tokenizer import push_tokenizer

    _, result = trained
    staging = tmp_path / "staging"
    dead = staging / "tokenizer-dead"  # its push was killed: the lock file is there, nobody holds it
    (dead / "tok").mkdir(parents=True)
    (dead / STAGING_LOCK).touch()
    old = staging / "tokenizer-old"  # made by a release without locks, two hours ago
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = staging / "publish-young"  # the same, but a minute old: maybe still in use
    young.mkdir()
    live = staging / "model-live"  # a concurrent push: holds its lock
    live.mkdir()
    with open(live / STAGING_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        pushed = push_tokenizer(result, SMALL, StandIn(LocalStore(tmp_path / "hub")), staging=staging)
    assert pushed.uri.startswith("hf://codeparrot/codeparrot-tokenizer@")
    assert sorted(p.name for p in staging.iterdir()) == ["model-live", "publish-young"]
