"""The intermediate files of curation: one typed schema shared by the stage that writes them and the stages
that read them, so nothing is read back by position.

A shard's folder (written once by `filter_shard`, complete when its `_DONE.json` exists) holds
`keys.jsonl` (`[repo_name, path, crc32, line length, local id]`, sorted: the canonical order of the
shard) and `arrays.bin`, every array below in one file (a JSON header of names, dtypes, shapes and
offsets, then the raw arrays), for the shard's survivors in input order (local ids 0..n-1):

- `source`: each survivor's ordinal among the shard's lines, so the output stage re-reads the input
  instead of keeping a copy of it (as datatrove does); `redacted_ids`, `redacted_offsets` and
  `redacted_bytes` hold the few lines that redaction changed;
- `line_len`, `copies`, `digest` (the exact-dedup digest, n x 16 bytes);
- with near-dedup: `setdig` (a digest of each token set), `tokens` + `tok_offsets` (the sorted
  token-set hashes, CSR), `signed` (the survivors with a signature) with `sig` (their MinHash rows),
  and the LSH band table `band_hash` / `band_row`, sorted by hash, with `band_slots` (where each of
  `SLOTS` equal hash ranges starts) so that a partition reads only its slice.

One file, not one per array: creating a file costs ~0.5 ms here, which made 2,000 tiny shards take 20 s
longer. Every read opens, reads and closes it: a stage holds a constant number of open files whatever
the number of shards (`ulimit -n`), and only the slices it needs in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

DONE = "_DONE.json"
KEYS = "keys.jsonl"
REDACTED = "redacted.bin"
#: Hash slots of the partitioned stages: partition p of P holds slots [p*SLOTS//P, (p+1)*SLOTS//P), so P
#: can be anything up to SLOTS without rewriting the shards' files.
SLOTS = 1 << 12
_SLOT_SHIFT = np.uint64(64 - 12)


def slot_of(hashes: np.ndarray) -> np.ndarray:
    """The slot of each uint64 hash: its top 12 bits."""
    return (hashes >> _SLOT_SHIFT).astype(np.int64)


def slot_range(p: int, partitions: int) -> tuple[int, int]:
    """Slots [lo, hi) of partition `p` of `partitions`."""
    return p * SLOTS // partitions, (p + 1) * SLOTS // partitions


def save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


ARRAYS = "arrays.bin"
_ALIGN = 64


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays in one file: an 8-byte header length, the JSON header, then each array's bytes (aligned)."""
    entries, offset = {}, 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        entries[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    header = orjson.dumps(entries)
    start = -(-(8 + len(header)) // _ALIGN) * _ALIGN
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        for name, a in arrays.items():
            fh.seek(start + entries[name]["offset"])
            fh.write(np.ascontiguousarray(a).tobytes())
        fh.truncate(start + offset)


@dataclass
class ShardWork:
    """The survivors of one shard, as the filter stage builds them (arrays in local-id order)."""

    source: np.ndarray
    line_len: np.ndarray
    copies: np.ndarray
    digest: np.ndarray  # n x 16 uint8 (n x 0 when no step needs it)
    keys: list[tuple[str, str, int, int]]  # repo_name, path, crc32 of the line, line length
    redacted: dict[int, bytes] = field(default_factory=dict)  # local id -> its redacted line
    near: dict[str, np.ndarray] | None = None  # setdig, tokens, tok_offsets, signed, sig, bands

    def write(self, folder: Path) -> None:
        n = len(self.keys)
        order = sorted(range(n), key=lambda i: self.keys[i])
        with open(folder / KEYS, "wb") as fh:
            fh.writelines(orjson.dumps([*self.keys[i], i]) + b"\n" for i in order)
        ids = sorted(self.redacted)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(self.redacted[i]) for i in ids], out=offsets[1:])
        arrays: dict[str, np.ndarray] = {
            "source": self.source.astype(np.int64),
            "line_len": self.line_len.astype(np.int64),
            "copies": self.copies.astype(np.int64),
            "digest": self.digest,
            "redacted_ids": np.asarray(ids, dtype=np.int64),
            "redacted_offsets": offsets,
            "redacted_bytes": np.frombuffer(b"".join(self.redacted[i] for i in ids), dtype=np.uint8),
        }
        if self.near is not None:
            near = self.near
            arrays |= {name: near[name] for name in ("setdig", "tokens", "tok_offsets", "signed", "sig")}
            bands = near["bands"]  # signed rows x bands; band k's hashes are seeded with k: one table for all
            flat = bands.reshape(-1)
            rows = np.repeat(np.arange(len(bands), dtype=np.uint32), bands.shape[1])
            order_ = np.argsort(flat, kind="stable")
            flat = flat[order_]
            arrays |= {
                "band_hash": flat,
                "band_row": rows[order_],  # row of `signed`
                "band_slots": np.searchsorted(slot_of(flat), np.arange(SLOTS + 1)).astype(np.int64),
            }
        write_arrays(folder / ARRAYS, arrays)


class ShardReader:
    """Reads one shard folder's arrays on demand (no file stays open between calls)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._header: dict[str, Any] | None = None
        self._start = 0

    def _entry(self, name: str) -> tuple[dict[str, Any], np.dtype, tuple[int, ...]]:
        if self._header is None:
            with open(self.folder / ARRAYS, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                self._header = orjson.loads(fh.read(size))
            self._start = -(-(8 + size) // _ALIGN) * _ALIGN
        entry = self._header[name]
        return entry, np.dtype(entry["dtype"]), tuple(entry["shape"])

    def array(self, name: str) -> np.ndarray:
        return self.rows(name, slice(None))

    def rows(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Rows of an array (a slice, or sorted or unsorted indices), reading only what they span."""
        entry, dtype, shape = self._entry(name)
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        if isinstance(rows, slice):
            a, b, _ = rows.indices(shape[0])
            b = max(a, b)
            with open(self.folder / ARRAYS, "rb") as fh:
                fh.seek(self._start + entry["offset"] + a * row_bytes)
                data = fh.read((b - a) * row_bytes)
            return np.frombuffer(data, dtype=dtype).reshape((b - a, *shape[1:])).copy()
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, *shape[1:]), dtype=dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.rows(name, slice(lo, hi))[rows - lo]

    def key_rows(self) -> list[list[Any]]:
        """`[repo_name, path, crc32, line length, local id]` in the shard's canonical order."""
        with open(self.folder / KEYS, "rb") as fh:
            return [orjson.loads(line) for line in fh]

    def redacted(self) -> dict[int, bytes]:
        ids = self.array("redacted_ids")
        if not len(ids):
            return {}
        offsets = self.array("redacted_offsets")
        data = self.array("redacted_bytes").tobytes()
        return {int(i): data[offsets[k] : offsets[k + 1]] for k, i in enumerate(ids.tolist())}

    def band_slice(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Band hashes of slots [lo, hi) and the `signed` row each belongs to."""
        starts = self.rows("band_slots", slice(lo, hi + 1))
        a, b = int(starts[0]), int(starts[-1])
        return self.rows("band_hash", slice(a, b)), self.rows("band_row", slice(a, b))

    def token_sets(self, local_ids: np.ndarray) -> dict[int, np.ndarray]:
        """The token sets of some survivors (one read of the span their sets cover)."""
        out: dict[int, np.ndarray] = {}
        if not len(local_ids):
            return out
        ids = np.unique(local_ids)
        offsets = self.array("tok_offsets")
        lo, hi = int(offsets[ids[0]]), int(offsets[ids[-1] + 1])
        span = self.rows("tokens", slice(lo, hi))
        for i in ids.tolist():  # copies: a view would keep the whole span (most of the shard's sets) alive
            out[i] = span[offsets[i] - lo : offsets[i + 1] - lo].copy()
        return out
