import gzip
import json

import pytest

from codeparrot.errors import DataError
from codeparrot.shards import BadRecord, ShardWriter, iter_shard, list_shards, write_shards


def _write(path, lines: list[bytes]) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(b"".join(lines))


def rec(i: int, **kw) -> dict:
    return {"repo_name": f"o/r{i}", "path": f"p{i}.py", "copies": 1, "size": 10, "content": f"x = {i}\n", "license": "mit", **kw}


def test_reads_records_and_normalises_bigquery_int64_strings(tmp_path):
    shard = tmp_path / "file-0.json.gz"
    _write(shard, [json.dumps({**rec(1), "size": "1234", "copies": "3"}).encode() + b"\n"])
    (r,) = list(iter_shard(shard))
    assert r["size"] == 1234 and r["copies"] == 3 and r["content"] == "x = 1\n"


def test_bad_lines_come_back_with_reasons_and_line_numbers(tmp_path):
    shard = tmp_path / "file-0.json.gz"
    _write(
        shard,
        [
            json.dumps(rec(1)).encode() + b"\n",
            b'{"repo_name": "a", "path": \n',
            b'{"repo_name": "a", "path": "b", "content": "\xff\xfe"}\n',
            json.dumps({"repo_name": "a", "path": "b"}).encode() + b"\n",
            json.dumps({**rec(2), "size": "big"}).encode() + b"\n",
            b"[1, 2]\n",
            b"\n",
            json.dumps(rec(3)).encode() + b"\n",
        ],
    )
    items = list(iter_shard(shard))
    good = [i for i in items if not isinstance(i, BadRecord)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [g["repo_name"] for g in good] == ["o/r1", "o/r3"]
    assert [(b.line, b.reason) for b in bad] == [
        (2, "bad-json"),
        (3, "bad-utf8"),
        (4, "missing-field"),
        (5, "bad-field"),
        (6, "bad-json"),
    ]
    assert all(b.shard == str(shard) for b in bad)


def test_strict_mode_names_shard_and_line(tmp_path):
    shard = tmp_path / "file-0.json.gz"
    _write(shard, [json.dumps(rec(1)).encode() + b"\n", b"not json\n"])
    with pytest.raises(DataError, match=r"file-0\.json\.gz:2: bad-json"):
        list(iter_shard(shard, strict=True))


def test_truncated_and_non_gzip_shards_are_reported_not_raised(tmp_path):
    full = tmp_path / "full.json.gz"
    _write(full, [json.dumps(rec(i)).encode() + b"\n" for i in range(200)])
    data = full.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    items = list(iter_shard(cut))
    assert isinstance(items[-1], BadRecord) and items[-1].reason == "truncated-shard"
    assert all(not isinstance(i, BadRecord) for i in items[:-1])
    plain = tmp_path / "plain.json.gz"
    plain.write_bytes(b'{"a": 1}\n')
    (only,) = list(iter_shard(plain))
    assert (only.line, only.reason) == (1, "not-gzip")  # the whole shard, not a record
    empty = tmp_path / "empty.json.gz"
    empty.write_bytes(b"")
    assert list(iter_shard(empty)) == []


def test_writer_is_atomic_sharded_and_byte_reproducible(tmp_path):
    records = [rec(i) for i in range(25)]
    a = write_shards(records, tmp_path / "a", max_records=10)
    b = write_shards(records, tmp_path / "b", max_records=10)
    assert [p.name for p in a] == ["part-00000.json.gz", "part-00001.json.gz", "part-00002.json.gz"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    back = [r for p in a for r in iter_shard(p)]
    assert back == records
    assert not list((tmp_path / "a").glob("*.tmp-*"))


def test_writer_abort_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_records=5) as w:
        for i in range(7):
            w.write(rec(i))
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.json.gz"]


def test_list_shards_explains_missing_input(tmp_path):
    with pytest.raises(DataError, match=r"no \*\.json\.gz shards"):
        list_shards(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        list_shards(tmp_path / "nope")
