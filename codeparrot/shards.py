"""Shard I/O: the BigQuery-export format every data stage reads and writes.

A shard is gzipped JSON Lines (`*.json.gz`), one file record a line, with at least `repo_name`, `path`,
`content` and normally `copies`, `size`, `license` (the seed query's SELECT list). BigQuery's JSON
export writes INT64 as strings; readers normalise `size` and `copies` to int.

Reading never drops a line silently: a line that cannot be used comes back as a `BadRecord` with a
reason (`bad-json`, `bad-utf8`, `missing-field`, `bad-field`, `truncated-shard`, `bad-gzip`) so the
caller counts it, or, with `strict=True`, raises a `DataError` naming the shard and line. A file that is
not gzip at all comes back as one `BadRecord` at line 1 with reason `not-gzip`: the whole shard is bad,
and callers count it as a shard, not as a record.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from codeparrot.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("repo_name", "path", "content")
EXPORT_FIELDS = ("repo_name", "path", "copies", "size", "content", "license")
SHARD_GLOB = "*.json.gz"
NOT_GZIP = "not-gzip"
_GZIP_MAGIC = b"\x1f\x8b"

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A line (or the rest of a shard) that could not be read as a record."""

    shard: str
    line: int
    reason: str
    detail: str

    def describe(self) -> str:
        return f"{self.shard}:{self.line}: {self.reason}: {self.detail}"


def list_shards(directory: str | os.PathLike[str]) -> list[Path]:
    """The shards of a directory in name order; a clear error when there are none."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory of shards: pass the folder that holds the *.json.gz files")
    shards = sorted(p for p in root.glob(SHARD_GLOB) if p.is_file())
    if not shards:
        raise DataError(f"no {SHARD_GLOB} shards in {root}: is this the download or curate output folder?")
    return shards


def _parse_line(raw: bytes, shard: str, lineno: int) -> Record | BadRecord:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        reason = "bad-utf8" if ("UTF-8" in msg or "surrogate" in msg) else "bad-json"
        return BadRecord(shard, lineno, reason, msg)
    if not isinstance(rec, dict):
        return BadRecord(shard, lineno, "bad-json", f"expected a JSON object, got {type(rec).__name__}")
    for name in REQUIRED_FIELDS:
        value = rec.get(name)
        if value is None:
            return BadRecord(shard, lineno, "missing-field", f"no {name!r}")
        if not isinstance(value, str):
            return BadRecord(shard, lineno, "bad-field", f"{name!r} is {type(value).__name__}, not a string")
    for name in ("size", "copies"):
        value = rec.get(name)
        if value is None or isinstance(value, int):
            continue
        try:
            rec[name] = int(value)
        except (TypeError, ValueError):
            return BadRecord(shard, lineno, "bad-field", f"{name!r} is not an integer: {value!r:.40}")
    return rec


def iter_shard(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[Record | BadRecord]:
    """Yield each line of one shard as a record dict or a `BadRecord`."""
    shard = str(path)
    lineno = 0
    try:
        with gzip.open(shard, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                item = _parse_line(raw, shard, lineno)
                if strict and isinstance(item, BadRecord):
                    raise DataError(f"{item.describe()} (rerun without --strict to count and skip such lines)")
                yield item
    except (EOFError, zlib.error) as exc:
        bad = BadRecord(shard, lineno + 1, "truncated-shard", f"gzip stream ends early ({exc}); re-download it")
        if strict:
            raise DataError(bad.describe()) from exc
        yield bad
    except gzip.BadGzipFile as exc:
        whole = lineno == 0 and not _starts_gzip(shard)
        reason, detail = (NOT_GZIP, "not a gzip file: re-download or remove it") if whole else ("bad-gzip", f"not a gzip stream ({exc})")
        bad = BadRecord(shard, lineno + 1, reason, detail)
        if strict:
            raise DataError(bad.describe()) from exc
        yield bad


def _starts_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def iter_records(paths: Iterable[str | os.PathLike[str]], *, strict: bool = False) -> Iterator[Record | BadRecord]:
    for path in paths:
        yield from iter_shard(path, strict=strict)


def dumps(record: Record) -> bytes:
    """One JSON line, UTF-8, key order as given (so input fields pass through unchanged)."""
    return orjson.dumps(record) + b"\n"


class ShardWriter:
    """Writes records into `{stem}-00000.json.gz`, ... atomically and byte-reproducibly.

    Each shard is written to a temporary name and renamed when complete, so a crash never leaves a
    half-written shard under a final name. The gzip header carries no time or name, so the same records
    give the same bytes.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        stem: str = "part",
        *,
        max_records: int = 10_000,
        max_bytes: int = 256 * 2**20,
        compresslevel: int = 3,
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.compresslevel = compresslevel
        self.paths: list[Path] = []
        self.records = 0
        self._fh: gzip.GzipFile | None = None
        self._raw: Any = None
        self._tmp: Path | None = None
        self._n = 0
        self._bytes = 0

    def _open(self) -> None:
        final = self.out_dir / f"{self.stem}-{len(self.paths):05d}.json.gz"
        self._tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 - closed in _close
        self._fh = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=self.compresslevel, mtime=0)
        self.paths.append(final)
        self._n = 0
        self._bytes = 0

    def _close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.paths[-1])
        self._fh = None

    def write(self, record: Record) -> None:
        self.write_line(dumps(record))

    def write_line(self, line: bytes) -> None:
        if self._fh is None or self._n >= self.max_records or self._bytes >= self.max_bytes:
            self._close()
            self._open()
        self._fh.write(line)
        self._n += 1
        self._bytes += len(line)
        self.records += 1

    def close(self) -> list[Path]:
        self._close()
        return self.paths

    def abort(self) -> None:
        """Drop the shard being written (on error): finished shards stay, no temp file is left."""
        if self._fh is not None:
            self._fh.close()
            self._raw.close()
            self._tmp.unlink(missing_ok=True)
            self.paths.pop()
            self._fh = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shards(records: Iterable[Record], out_dir: str | os.PathLike[str], stem: str = "part", **kw: Any) -> list[Path]:
    with ShardWriter(out_dir, stem, **kw) as writer:
        for rec in records:
            writer.write(rec)
    return writer.paths
