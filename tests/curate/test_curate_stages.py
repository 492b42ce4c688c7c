"""Each curation stage alone: the step runner, the shard schema, ranks, the partitioned dedup stages,
the output plan and the input re-reader, and the local executor."""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from codeparrot.curate import dedup_stages as dd
from codeparrot.curate import output, steps
from codeparrot.curate.config import CurateConfig
from codeparrot.curate.executors import LocalExecutor
from codeparrot.curate.fastgz import read_shard_lines
from codeparrot.curate.filter_stage import filter_shard
from codeparrot.curate.filters import Doc
from codeparrot.curate.work import SLOTS, ShardReader, ShardWork, slot_range


def test_the_runner_counts_the_first_reason_and_sets_the_line_aside(tmp_path: Path) -> None:
    cfg = CurateConfig(licenses="permissive", few_assignments=2, decontamination={"enabled": False})
    sink = steps.Dropped(tmp_path / "dropped", "s", enabled=True)
    runner = steps.StepRunner(steps.build_steps(cfg), sink)
    names = [type(s).__name__ for s in runner.steps]
    assert names[0] == "LicenseStep" and names[-1] == "RedactionStep"  # license first, redaction last here

    def rec(content: str, license: str = "mit") -> steps.Record:
        item = {"repo_name": "r", "path": "p.py", "content": content, "license": license}
        return steps.Record(item, orjson.dumps(item) + b"\n", Doc(content))

    assert runner.run(rec("x = 1\n", license="gpl-3.0")) == "license:gpl-3.0"
    assert runner.run(rec("def f():\n    return g(1)\n")) == "few-assignments"
    kept = rec("def f(a):\n    a = 1\n    b = 2\n    c = 3\n    return 'mail jane.doe@acme-corp.com'\n")
    assert runner.run(kept) is None
    assert b"<EMAIL>" in kept.line and kept.item["size"] == len(kept.item["content"].encode())
    sink.close()
    assert dict(runner.counts) == {"license:gpl-3.0": 1, "few-assignments": 1}
    assert sorted(p.parent.name for p in (tmp_path / "dropped").rglob("*.json.gz")) == ["few-assignments", "license_gpl-3.0"]
    assert runner.find(steps.RedactionStep).placeholders == {"email": 1}


def test_shard_arrays_read_back_by_name_slice_and_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 2**63, size=(5, 3), dtype=np.uint64) * np.uint64(2)
    near = {"setdig": np.arange(6, dtype=np.uint64), "tokens": np.arange(20, dtype=np.uint64),
            "tok_offsets": np.array([0, 3, 3, 8, 12, 15, 20]), "signed": np.array([0, 2, 3, 4, 5]),
            "sig": rng.integers(0, 2**32, size=(5, 8), dtype=np.uint32), "bands": bands}  # fmt: skip
    work = ShardWork(source=np.arange(6), line_len=np.full(6, 10), copies=np.zeros(6, np.int64),
                     digest=np.zeros((6, 16), np.uint8), keys=[("r", f"p{5 - i}", i, 10) for i in range(6)],
                     redacted={2: b'{"x": 1}\n'}, near=near)  # fmt: skip
    work.write(tmp_path)
    reader = ShardReader(tmp_path)
    assert reader.array("sig").tolist() == near["sig"].tolist()
    assert reader.rows("sig", np.array([4, 1])).tolist() == near["sig"][[4, 1]].tolist()
    assert [reader.token_sets(np.array([3, 0]))[i].tolist() for i in (0, 3)] == [[0, 1, 2], [8, 9, 10, 11]]
    assert reader.redacted() == {2: b'{"x": 1}\n'} and [k[1] for k in reader.key_rows()] == [f"p{i}" for i in range(6)]
    # the band table's slots split it into partitions that cover every (row, band) once
    for partitions in (1, 3, 7):
        got = []
        for p in range(partitions):
            h, rows = reader.band_slice(*slot_range(p, partitions))
            got += [(int(x), int(r)) for x, r in zip(h, rows, strict=True)]
        assert sorted(got) == sorted((int(bands[r, k]), r) for r in range(5) for k in range(3))
    assert slot_range(0, 1) == (0, SLOTS)


def shard_run(tools: SimpleNamespace, tmp_path: Path, recs: list[dict], partitions: int, cfg: CurateConfig) -> dd.Run:
    paths = tools.write_records(tmp_path / "in", recs, per_shard=9)
    summaries = sorted((filter_shard(p, cfg, tmp_path / "work") for p in paths), key=lambda s: (s.sha256, s.shard))
    folder = tmp_path / f"run-{partitions}"
    folder.mkdir()
    return dd.Run(folder, tuple(s.work for s in summaries), tuple(s.shard for s in summaries),
                  tuple(s.sha256 for s in summaries), tuple(s.survivors for s in summaries), cfg, partitions)  # fmt: skip


def test_ranks_merge_with_a_small_fan_in_equal_a_sort(tools: SimpleNamespace, tmp_path: Path, dup_corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = dup_corpus(seed=1, n=50, n_forks=5)
    random.Random(1).shuffle(recs)
    run = shard_run(tools, tmp_path, recs, 1, CurateConfig.dedup_only())
    monkeypatch.setattr(dd, "MERGE_FAN_IN", 2)  # 7 shards: three levels of merging
    dd.rank_keys(run)
    keys = [tuple(k[:4]) for s in range(len(run.shards)) for k in sorted(run.reader(s).key_rows(), key=lambda k: k[4])]
    order = np.asarray(run.array("order"))
    assert [keys[g] for g in order.tolist()] == sorted(keys)
    assert not list(run.folder.glob("keys-*"))  # the merge's runs are removed


@pytest.mark.parametrize("partitions", [2, 5])
def test_partitioned_dedup_stages_find_what_one_partition_finds(tools: SimpleNamespace, tmp_path: Path, dup_corpus, partitions: int) -> None:
    recs = dup_corpus(seed=3, n=60, n_forks=12)
    recs += [{**r, "repo_name": "copy/" + r["repo_name"]} for r in recs[:4]]
    cfg = CurateConfig(licenses="any", few_assignments=None)

    def groups(p_count: int) -> tuple[list, list]:
        run = shard_run(tools, tmp_path / str(p_count), recs, p_count, cfg)
        dd.rank_keys(run)
        exact = [dd.exact_partition(run, p) for p in range(p_count)]
        removed = np.concatenate([dd.Groups(**dd.load_npz(run.output("exact", p))).removed() for p in range(p_count)])
        alive = np.ones(run.n, dtype=bool)
        alive[removed] = False
        dd._save_global(run, "alive-exact", alive)
        info = [dd.identical_partition(run, p) for p in range(p_count)]
        lsh = alive.copy()
        for p in range(p_count):
            lsh[dd.load_npz(run.output("identical", p))["b"]] = False
        dd._save_global(run, "lsh", lsh)
        info += [dd.lsh_partition(run, p) for p in range(p_count)]
        near = dd.components(run, [run.output(st, p) for st in ("identical", "lsh") for p in range(p_count)])
        assert sum(e["removed"] for e in exact) == len(removed) == 5  # 4 copies and a whitespace copy
        assert dd.near_info(info)["signed"] == int(alive.sum())
        # as keys: the ids depend on the shards' order (their sha256, and gzip headers hold a time)
        name = {int(run.base[s]) + k[4]: k[1] for s in range(len(run.shards)) for k in run.reader(s).key_rows()}
        exact_groups = sorted(sorted(name[i] for i in g.tolist()) for p in range(p_count) for g in dd.Groups(**dd.load_npz(run.output("exact", p))))
        return exact_groups, sorted([name[i] for i in g.tolist()] for g in near)

    one = groups(1)
    assert groups(partitions) == one
    assert len(one[1]) == 12


def test_plan_cuts_shards_like_the_shard_writer_and_ranges_on_shard_bounds(tools: SimpleNamespace, tmp_path: Path, dup_corpus) -> None:
    recs = dup_corpus(seed=2, n=30, n_forks=0)
    cfg = CurateConfig.dedup_only(shard_max_records=4)
    run = shard_run(tools, tmp_path, recs, 1, cfg)
    dd.rank_keys(run)
    alive = np.ones(run.n, dtype=bool)
    alive[::3] = False
    dd._save_global(run, "alive", alive)
    plan = output.plan(run, range_bytes=8000)  # ~2 shards of 4 records a range
    kept_ranks = np.flatnonzero(alive[np.asarray(run.array("order"))])
    per_shard = np.diff(np.searchsorted(kept_ranks, plan.cuts))
    assert per_shard[:-1].tolist() == [4] * (len(per_shard) - 1) and 1 <= per_shard[-1] <= 4
    assert plan.shard_of_range[0] == 0 and plan.shard_of_range[-1] == len(plan.cuts) - 1
    assert plan.ranges > 1  # a range holds whole shards
    empty = np.zeros(run.n, dtype=bool)
    dd._save_global(run, "alive", empty)
    assert output.plan(run, 1 << 20).ranges == 0


def test_the_input_reread_numbers_lines_as_the_reader_does(tmp_path: Path) -> None:
    lines = [b'{"a": 1}', b"", b"   ", b'{"b": 2}', b"\t", b'["odd"]', b'  {"c": 3}', b'{"d": 4}']
    path = tmp_path / "s.json.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines)))  # no newline after the last line
    import hashlib

    got = output._InputLines(str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    assert [got.line(k) for k in range(len(got.starts))] == [line for _, line in read_shard_lines(path)]
    with pytest.raises(Exception, match="changed after it was filtered"):
        output._InputLines(str(path), "0" * 64)


def _square(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * x


def test_local_executor_keeps_order_and_raises_the_first_failure_in_item_order() -> None:
    with LocalExecutor(2) as ex:
        assert ex.map(_square, [5, 1, 2], desc="t", sizes=[1, 9, 3]) == [25, 1, 4]
        with pytest.raises(ValueError, match="three"):
            ex.map(_square, [1, 3, 2], desc="t")
    assert LocalExecutor(1).map(_square, [2], desc="t") == [4]
