"""The output stages of curation: kept records in canonical order, cut into shards, from the re-read input.

`plan` (serial, over 8-byte arrays) cuts the kept ids, in canonical rank order, into output shards the
way `ShardWriter` rolls over, and groups consecutive output shards into writer ranges of at most
`range_bytes`. `write_range(r)` writes the shards of range r: it gathers the range's lines, sorts them by
rank and compresses each shard. Its lines come from the input shards themselves (re-read, not copied;
redacted lines from the shard's work folder), directly when there is one range, else through
`route_shard`, which re-reads each input once and hands every range its lines (one compressed section
per range), so no range reads the whole input. The bytes are the same whichever way and whatever P.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeparrot.curate.dedup_stages import Run, _save_npz, load_npz
from codeparrot.curate.fastgz import _inflate, _StreamError, write_shard
from codeparrot.errors import DataError

try:  # ISA-L's zlib is ~4x faster at level 1 (seen: 370 vs 80 MB/s); both read each other's output
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency, but a plain zlib works the same
    import zlib as _zlib

OUTPUT_STEM = "part"


@dataclass(frozen=True)
class Plan:
    """Output shard k holds the kept ids of ranks [cuts[k], cuts[k+1]) (in rank space); writer range r
    holds output shards [shard_of_range[r], shard_of_range[r+1])."""

    cuts: np.ndarray
    shard_of_range: np.ndarray

    @property
    def ranges(self) -> int:
        return len(self.shard_of_range) - 1

    def key(self) -> str:
        """Names the route files of this plan (another memory budget routes to other ranges)."""
        return hashlib.sha256(self.cuts.tobytes() + self.shard_of_range.tobytes()).hexdigest()[:12]

    def range_ranks(self, r: int) -> tuple[int, int]:
        return int(self.cuts[self.shard_of_range[r]]), int(self.cuts[self.shard_of_range[r + 1]])


def plan(run: Run, range_bytes: int) -> Plan:
    """Cut the kept ids into output shards (max records, max bytes) and the shards into writer ranges."""
    cfg = run.cfg
    order, alive, line_len = run.array("order"), run.array("alive"), run.array("line_len")
    ranks = np.flatnonzero(np.asarray(alive[order]))  # ranks of the kept ids, ascending
    lengths = np.asarray(line_len[order[ranks]]) if len(ranks) else np.zeros(0, np.int64)
    starts: list[int] = []  # index into `ranks` of each output shard's first record
    n = size = 0
    for k, length in enumerate(lengths.tolist()):
        if not starts or n >= cfg.shard_max_records or size >= cfg.shard_max_bytes:
            starts.append(k)
            n = size = 0
        n += 1
        size += length
    if not starts:  # nothing kept: no shard, no range
        return Plan(cuts=np.zeros(1, np.int64), shard_of_range=np.zeros(1, np.int64))
    bounds = np.asarray([*starts, len(ranks)], dtype=np.int64)
    cuts = np.append(ranks[bounds[:-1]], run.n).astype(np.int64)
    shard_bytes = np.add.reduceat(lengths, bounds[:-1])
    groups, total = [0], 0
    for k, b in enumerate(shard_bytes.tolist()):
        if total >= range_bytes:  # a range may pass its size by one shard: fewer ranges, fewer input reads
            groups.append(k)
            total = 0
        total += b
    groups.append(len(shard_bytes))
    return Plan(cuts=cuts, shard_of_range=np.asarray(groups, dtype=np.int64))


def _inflate_all(path: str, sha256: str) -> bytes:
    """The whole decompressed content of an input shard that the filter stage read (same sha256), in
    one call per gzip member (GIL-free, so writer threads inflate shards side by side)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"{path} changed after it was filtered (sha256 differs): rerun the curation from the start")
    out = []
    try:
        while raw.strip(b"\0"):
            d = _zlib.decompressobj(31)
            out.append(d.decompress(raw))
            raw = d.unused_data
            if not d.eof:  # truncated: what came out is what the filter stage read
                break
    except Exception:  # a corrupt member: the lines before it, as the filter stage's reader handed them out
        return b"".join(_readable_prefix(path))
    return b"".join(out)


def _readable_prefix(path: str) -> Iterator[bytes]:
    try:
        yield from _inflate(path)
    except _StreamError:
        return


_PREFETCHED: dict[tuple[str, str], Future[bytes]] = {}


def prefetch(run: Run, threads: int = 1) -> ThreadPoolExecutor:
    """Start inflating every input shard in background threads of this process, for a writer range that
    will run here (the local executor's single range): the inflating overlaps the dedup stages, which
    keep one core busy. The caller shuts the pool down; `forget()` drops what was not used."""
    pool = ThreadPoolExecutor(max(1, threads))
    for path, sha in zip(run.inputs, run.hashes, strict=True):
        _PREFETCHED[(path, sha)] = pool.submit(_inflate_all, path, sha)
    return pool


def forget() -> None:
    _PREFETCHED.clear()


class _InputLines:
    """An input shard inflated once, its non-blank lines numbered as `read_shard_lines` numbers its
    records; `line(k)` is the k-th with its newline (a slice: only the lines asked for are copied)."""

    def __init__(self, path: str, sha256: str) -> None:
        ahead = _PREFETCHED.pop((path, sha256), None)
        self.data = data = ahead.result() if ahead is not None else _inflate_all(path, sha256)
        starts, ends = [], []
        pos, find = 0, data.find
        while pos < len(data):  # one C-level search per line: records are lines of several KB
            end = find(b"\n", pos)
            end = len(data) if end < 0 else end
            if data[pos : pos + 1] in (b"{", b"[") or data[pos:end].strip():  # blank lines are not records
                starts.append(pos)
                ends.append(end)
            pos = end + 1
        self.starts, self.ends = starts, ends

    def line(self, k: int) -> bytes:
        a, b = self.starts[k], self.ends[k]
        return self.data[a:b] + b"\n"


def _kept_of_shard(run: Run, s: int, lo: int, hi: int) -> tuple[np.ndarray, list[bytes]]:
    """Ranks and lines of shard s's kept records with ranks in [lo, hi), sorted by rank."""
    base = run.base
    rank = np.asarray(run.array("rank")[base[s] : base[s + 1]])
    alive = np.asarray(run.array("alive")[base[s] : base[s + 1]])
    mine = np.flatnonzero(alive & (rank >= lo) & (rank < hi))
    if not len(mine):
        return np.zeros(0, np.int64), []
    reader = run.reader(s)
    source = reader.array("source")
    redacted = reader.redacted()
    lines = _InputLines(run.inputs[s], run.hashes[s])
    mine = mine[np.argsort(rank[mine], kind="stable")]
    return rank[mine], [redacted.get(i) or lines.line(source[i]) for i in mine.tolist()]


def route_shard(run: Run, s: int, plan_: Plan) -> None:
    """Re-read input shard s once and write its kept lines as one compressed section per writer range;
    a no-op when its files are there for this plan."""
    folder = run.path("route")
    if (folder / f"{s:06d}-{plan_.key()}.npz").is_file():
        return
    ranks, lines = _kept_of_shard(run, s, 0, run.n)
    bounds = [plan_.range_ranks(r)[0] for r in range(plan_.ranges)] + [run.n]
    cut = np.searchsorted(ranks, bounds)
    blobs = [_zlib.compress(b"".join(lines[cut[r] : cut[r + 1]]), 1) for r in range(plan_.ranges)]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    folder.mkdir(exist_ok=True)
    name = f"{s:06d}-{plan_.key()}"
    tmp = folder / f".tmp-{os.getpid()}-{name}.bin"
    tmp.write_bytes(b"".join(blobs))
    os.replace(tmp, folder / f"{name}.bin")
    lens = np.asarray([len(x) for x in lines], dtype=np.int64)
    _save_npz(folder / f"{name}.npz", ranks=ranks, lens=lens, cut=cut, offsets=offsets)  # last: the shard is routed


def _routed(run: Run, s: int, r: int, plan_: Plan) -> tuple[np.ndarray, list[bytes]]:
    folder, name = run.path("route"), f"{s:06d}-{plan_.key()}"
    meta = load_npz(folder / f"{name}.npz")
    a, b = int(meta["cut"][r]), int(meta["cut"][r + 1])
    if a == b:
        return np.zeros(0, np.int64), []
    with open(folder / f"{name}.bin", "rb") as fh:
        fh.seek(int(meta["offsets"][r]))
        data = _zlib.decompress(fh.read(int(meta["offsets"][r + 1] - meta["offsets"][r])))
    ends = np.cumsum(meta["lens"][a:b]).tolist()
    starts = [0, *ends[:-1]]
    return meta["ranks"][a:b], [data[x:y] for x, y in zip(starts, ends, strict=True)]


def write_range(run: Run, r: int, plan_: Plan, out_dir: Path, *, routed: bool, threads: int = 1) -> list[tuple[str, str]]:
    """The output shards of writer range r, atomically; each one's name and sha256."""
    lo, hi = plan_.range_ranks(r)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # inflate and deflate run without the GIL
        if routed:
            parts = list(pool.map(lambda s: _routed(run, s, r, plan_), range(len(run.shards))))
        else:
            parts = list(pool.map(lambda s: _kept_of_shard(run, s, lo, hi), range(len(run.shards))))
        ranks = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        lines = [line for p in parts for line in p[1]]
        del parts
        order = np.argsort(ranks, kind="stable")
        ranks = ranks[order]
        k0, k1 = int(plan_.shard_of_range[r]), int(plan_.shard_of_range[r + 1])
        cut = np.searchsorted(ranks, plan_.cuts[k0 : k1 + 1])

        def one(k: int) -> tuple[str, str]:
            final = out_dir / f"{OUTPUT_STEM}-{k:05d}.json.gz"
            a, b = int(cut[k - k0]), int(cut[k - k0 + 1])
            write_shard(final, (lines[i] for i in order[a:b].tolist()), level=run.cfg.compresslevel)
            with open(final, "rb") as fh:
                return final.name, hashlib.file_digest(fh, "sha256").hexdigest()

        return list(pool.map(one, range(k0, k1)))


def removed_lines(run: Run, s: int, removed: np.ndarray) -> list[bytes]:
    """Lines of some removed ids of shard s (sorted by rank), for `dropped/`."""
    base = run.base
    reader = run.reader(s)
    source = reader.array("source")
    redacted = reader.redacted()
    lines = _InputLines(run.inputs[s], run.hashes[s])
    local = removed - base[s]
    local = local[np.argsort(np.asarray(run.array("rank")[removed]), kind="stable")]
    return [redacted.get(i) or lines.line(source[i]) for i in local.tolist()]


def cluster_partition(run: Run, p: int, exact_files: list[Path], near_file: Path | None) -> Path:
    """Lines of duplicate_clusters.jsonl for the exact groups of partition p's file and the near groups
    k with k % P == p: survivor first, near members with their Jaccard to it; sorted by the survivor's rank.
    Only this partition's members' keys and token sets are read."""
    import orjson

    from codeparrot.curate.dedup_stages import Groups, _token_sets
    from codeparrot.curate.minhash import jaccard

    exact = list(Groups(**load_npz(exact_files[p]))) if exact_files else []
    near = [g for k, g in enumerate(Groups(**load_npz(near_file))) if k % run.partitions == p] if near_file else []
    ids = np.unique(np.concatenate(exact + near)) if exact or near else np.zeros(0, np.int64)
    keys: dict[int, tuple[str, str]] = {}
    base = run.base
    shard = np.searchsorted(base, ids, side="right") - 1
    for s in np.unique(shard).tolist():
        want = set((ids[shard == s] - base[s]).tolist())
        for entry in run.reader(s).key_rows():
            if entry[4] in want:
                keys[entry[4] + int(base[s])] = (entry[0], entry[1])
    tokens = _token_sets(run, np.unique(np.concatenate(near))) if near else {}
    rank = run.array("rank")
    entries: list[tuple[int, bytes]] = []
    for kind, groups in (("exact", exact), ("near", near)):
        for group in groups:
            kept = int(group[0])
            members = []
            for g in group.tolist():
                m: dict[str, object] = {"repo_name": keys[g][0], "path": keys[g][1], "kept": g == kept}
                if kind == "near":
                    m["jaccard"] = 1.0 if g == kept else round(jaccard(tokens[g], tokens[kept]), 4)
                members.append(m)
            line = {"kind": kind, "kept": f"{keys[kept][0]}/{keys[kept][1]}", "size": len(group), "members": members}
            entries.append((int(rank[kept]), orjson.dumps(line) + b"\n"))
    entries.sort(key=lambda e: (e[0], e[1]))
    path = run.path(f"clusters-{run.partitions}-{p:04d}.bin")
    with open(path, "wb") as fh:
        fh.writelines(b"%016x " % r + line for r, line in entries)  # the rank, fixed width: sorts as text
    return path


def merge_clusters(paths: list[Path], dest: Path) -> None:
    """One sorted duplicate_clusters.jsonl from the partitions' sorted files (bounded fan-in of P files)."""
    import heapq
    from contextlib import ExitStack

    tmp = dest.with_name(f".tmp-{dest.name}")
    with ExitStack() as stack, open(tmp, "wb") as out:
        files = [stack.enter_context(open(p, "rb")) for p in paths]
        out.writelines(raw[17:] for raw in heapq.merge(*files))
    os.replace(tmp, dest)
