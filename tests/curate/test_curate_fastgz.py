"""fastgz.read_shard yields what codeparrot.shards.iter_shard yields, on good and broken shards alike."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import orjson
import pytest

from codeparrot.curate import fastgz
from codeparrot.errors import DataError
from codeparrot.shards import BadRecord, iter_shard


def shape(items: list) -> list:
    return [(i.line, i.reason) if isinstance(i, BadRecord) else i for i in items]


def cases() -> dict[str, bytes]:
    rng = random.Random(0)
    lines = [orjson.dumps({"repo_name": "r", "path": f"p{i}", "content": "x" * rng.randint(0, 3000), "size": "12"}) for i in range(300)]
    lines[5], lines[7], lines[9] = b"{bad json", b"", orjson.dumps({"repo_name": "r", "path": "p"})
    raw = b"\n".join(lines) + b"\n"
    good = gzip.compress(raw)
    crc = bytearray(good)
    crc[-6] ^= 1
    return {
        "good": good,
        "no-final-newline": gzip.compress(raw.rstrip(b"\n")),
        "two-members": gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not-gzip": b"hello world\n",
        "bad-crc": bytes(crc),
        "zero-padding": good + b"\0" * 10,
        "garbage-after": good + b"xyz",
    }


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_read_shard_matches_iter_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(fastgz, "_READ_CHUNK", chunk)
    for name, data in cases().items():
        path = tmp_path / f"{name}.json.gz"
        path.write_bytes(data)
        assert shape(list(fastgz.read_shard(path))) == shape(list(iter_shard(path))), name


def test_strict_mode_raises_like_iter_shard(tmp_path: Path) -> None:
    data = cases()
    for name in ("good", "truncated", "not-gzip"):
        path = tmp_path / f"{name}.json.gz"
        path.write_bytes(data[name])
        with pytest.raises(DataError) as ours:
            list(fastgz.read_shard(path, strict=True))
        with pytest.raises(DataError) as theirs:
            list(iter_shard(path, strict=True))
        assert str(ours.value).split(": ")[:2] == str(theirs.value).split(": ")[:2]


def test_write_shard_is_atomic_and_reproducible(tmp_path: Path) -> None:
    lines = [orjson.dumps({"i": i, "text": "abc" * i}) + b"\n" for i in range(5000)]
    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    assert fastgz.write_shard(a, iter(lines)) == sum(map(len, lines))
    fastgz.write_shard(b, iter(lines))
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()) == b"".join(lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json.gz", "b.json.gz"]

    def broken() -> object:
        yield lines[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fastgz.write_shard(tmp_path / "c.json.gz", broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json.gz", "b.json.gz"]
