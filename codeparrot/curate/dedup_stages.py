"""The dedup stages of curation, each pure over its inputs, with its own output file, mapped over partitions.

Survivors of every shard are numbered by global id (shard by shard, shards in content order). The
driver (`pipeline.finalize`) runs, in order:

1. `rank_keys` (serial, streaming): the canonical rank of each id, by (repo_name, path, crc, length),
   in a merge of the shards' sorted keys with a bounded fan-in (open files do not grow with shards);
2. `exact_partition(p)`: ids grouped by exact-dedup digest, for the digests in hash range p;
3. `identical_partition(p)`: identical token sets (J = 1) linked outright, for set digests in range p;
   one of each goes on to LSH;
4. `lsh_partition(p)`: band buckets in hash range p -> candidate pairs -> signature estimate -> exact
   Jaccard, giving verified edges;
5. `components` (serial, over the verified edges only): connected components -> the kept member of each.

A partition reads only its hash range of each shard's tables (`codeparrot.curate.work`), so its memory is
its share of the corpus: with P partitions no process holds the corpus's signatures, keys or tokens. The
driver's global state is a few 8-byte arrays per file (`Run`), memory-mapped from the run folder. Every
stage's output is a deterministic function of the data, not of P, the worker count or the input order.
"""

from __future__ import annotations

import functools
import heapq
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from codeparrot.curate.clusters import UnionFind, bucket_pairs, unique_pairs, verify_pairs
from codeparrot.curate.config import CurateConfig
from codeparrot.curate.minhash import band_hashes
from codeparrot.curate.work import ShardReader, save, slot_of, slot_range

#: Files merged at once by `rank_keys`: open files stay below any common `ulimit -n`.
MERGE_FAN_IN = 64


@dataclass(frozen=True)
class Run:
    """What every stage of one finalize shares: picklable, small (paths and per-shard counts)."""

    folder: Path  # the run's own files (global arrays, stage outputs)
    shards: tuple[str, ...]  # shard work folders, in global-id order
    inputs: tuple[str, ...]  # the input shard each came from (re-read by the output stage)
    hashes: tuple[str, ...]  # and its sha256 when it was filtered
    counts: tuple[int, ...]  # survivors per shard
    cfg: CurateConfig
    partitions: int

    @property
    def base(self) -> np.ndarray:
        out = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out

    @property
    def n(self) -> int:
        return int(sum(self.counts))

    def reader(self, s: int) -> ShardReader:
        return ShardReader(self.shards[s])

    def path(self, name: str) -> Path:
        return self.folder / name

    def array(self, name: str) -> np.ndarray:
        """A global array of the run, memory-mapped (pages are read as a stage touches them)."""
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")

    def output(self, stage: str, p: int) -> Path:
        return self.folder / f"{stage}-{self.partitions}-{p:04d}.npz"


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != _INFO}


_INFO = "_info"


def partition_stage(stage: str) -> Callable[[Callable[[Run, int], tuple[dict[str, np.ndarray], dict[str, int]]]], Callable[[Run, int], dict[str, int]]]:
    """A stage over partitions with its own output file per partition, complete once that file exists
    (written atomically, its counts inside): a rerun after a crash or a lost worker redoes only the
    partitions that have no file."""

    def wrap(fn: Callable[[Run, int], tuple[dict[str, np.ndarray], dict[str, int]]]) -> Callable[[Run, int], dict[str, int]]:
        @functools.wraps(fn)
        def run_partition(run: Run, p: int) -> dict[str, int]:
            path = run.output(stage, p)
            if path.is_file():
                with np.load(path) as data:
                    return orjson.loads(data[_INFO].tobytes())
            arrays, info = fn(run, p)
            _save_npz(path, **arrays, **{_INFO: np.frombuffer(orjson.dumps(info), dtype=np.uint8)})
            return info

        return run_partition

    return wrap


def _save_global(run: Run, name: str, array: np.ndarray) -> None:
    tmp = run.path(f".tmp-{name}.npy")
    save(tmp, array)
    os.replace(tmp, run.path(f"{name}.npy"))


# ---------------------------------------------------------------------------------------------- 1. rank


def _read_keys(path: Path, base: int) -> Iterator[list[Any]]:
    """Key rows of one shard (`[repo, path, crc, length, local id]`) with the id made global."""
    with open(path, "rb") as fh:
        for line in fh:
            entry = orjson.loads(line)
            entry[4] += base
            yield entry


def _read_merged(path: Path) -> Iterator[list[Any]]:
    with open(path, "rb") as fh:
        for line in fh:
            yield orjson.loads(line)


def _merge(sources: list[Iterator[list[Any]]]) -> Iterator[list[Any]]:
    return heapq.merge(*sources, key=lambda e: e[:4])


RANK_ARRAYS = ("rank", "order", "skey", "line_len")


def rank_keys(run: Run) -> None:
    """`rank.npy` (id -> canonical rank), `order.npy` (rank -> id), `skey.npy` (the keep rule's sort key:
    smaller survives) and `line_len.npy`, all per global id; a no-op when they are there."""
    if all(run.path(f"{name}.npy").is_file() for name in RANK_ARRAYS):
        return
    base = run.base
    keys = [run.reader(s).folder / "keys.jsonl" for s in range(len(run.shards))]
    level: list[tuple[Path, int | None]] = [(k, int(base[s])) for s, k in enumerate(keys)]
    depth = 0
    while len(level) > MERGE_FAN_IN:  # merge groups into sorted runs until one merge can take them all
        nxt: list[tuple[Path, int | None]] = []
        for g in range(0, len(level), MERGE_FAN_IN):
            out = run.path(f"keys-{depth}-{g // MERGE_FAN_IN:05d}.jsonl")
            sources = [_read_keys(p, b) if b is not None else _read_merged(p) for p, b in level[g : g + MERGE_FAN_IN]]
            with open(out, "wb") as fh:
                fh.writelines(orjson.dumps(e) + b"\n" for e in _merge(sources))
            nxt.append((out, None))
        for p, b in level:
            if b is None:
                p.unlink()
        level, depth = nxt, depth + 1
    n = run.n
    rank = np.empty(n, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    line_len = np.empty(n, dtype=np.int64)
    sources = [_read_keys(p, b) if b is not None else _read_merged(p) for p, b in level]
    for r, entry in enumerate(_merge(sources)):
        g = entry[4]
        rank[g] = r
        order[r] = g
        line_len[g] = entry[3]
    for p, b in level:
        if b is None:
            p.unlink()
    if run.cfg.dedup.keep == "min-key":
        skey = rank
    else:  # most copies first, then the smallest key: -copies * n + rank orders lexicographically
        copies = np.concatenate([run.reader(s).array("copies") for s in range(len(run.shards))]) if n else np.zeros(0, np.int64)
        skey = -copies * max(n, 1) + rank
    for name, array in zip(RANK_ARRAYS, (rank, order, skey, line_len), strict=True):
        _save_global(run, name, array)


# ---------------------------------------------------------------------------------------------- groups


@dataclass
class Groups:
    """Groups of ids, survivor first, flattened: `members[starts[k]:starts[k+1]]` is group k."""

    members: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, groups: list[np.ndarray]) -> Groups:
        if not groups:
            return cls()
        return cls(np.concatenate(groups).astype(np.int64), np.array([len(g) for g in groups], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[np.ndarray]:
        start = 0
        for size in self.sizes.tolist():
            yield self.members[start : start + size]
            start += size

    def removed(self) -> np.ndarray:
        """Every member but the first of each group."""
        if not len(self.sizes):
            return np.zeros(0, np.int64)
        first = np.zeros(len(self.members), dtype=bool)
        first[np.concatenate(([0], np.cumsum(self.sizes)[:-1]))] = True
        return self.members[~first]


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of equal rows in sorted `values` (1-d, or 2-d compared row-wise)."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    diff = values[1:] != values[:-1]
    if diff.ndim == 2:
        diff = diff.any(axis=1)
    starts = np.flatnonzero(np.concatenate(([True], diff)))
    return starts, np.concatenate((starts[1:], [len(values)]))


# ---------------------------------------------------------------------------------------------- 2. exact


@partition_stage("exact")
def exact_partition(run: Run, p: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Exact copies among the ids whose digest falls in partition p; the groups go to its output file."""
    lo, hi = slot_range(p, run.partitions)
    base, skey = run.base, run.array("skey")
    ids, words = [], []
    for s in range(len(run.shards)):
        digest = run.reader(s).array("digest")
        if not digest.size:
            continue
        w = digest.view(">u8").reshape(len(digest), 2).astype(np.uint64)
        slot = slot_of(w[:, 0])
        mine = np.flatnonzero((slot >= lo) & (slot < hi))
        ids.append(mine + base[s])
        words.append(w[mine])
    gid = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    w = np.concatenate(words) if words else np.zeros((0, 2), np.uint64)
    order = np.lexsort((np.asarray(skey[gid]), w[:, 1], w[:, 0]))
    starts, ends = _runs(w[order])
    groups = [gid[order[a:b]] for a, b in zip(starts.tolist(), ends.tolist(), strict=True) if b - a > 1]
    g = Groups.of(groups)
    return {"members": g.members, "sizes": g.sizes}, {"groups": len(g), "removed": int(g.sizes.sum() - len(g))}


# ---------------------------------------------------------------------------------------------- 3. identical sets


def _token_sets(run: Run, gids: np.ndarray) -> dict[int, np.ndarray]:
    """Token sets of some ids, read shard by shard."""
    out: dict[int, np.ndarray] = {}
    base = run.base
    shard = np.searchsorted(base, gids, side="right") - 1
    for s in np.unique(shard).tolist():
        mine = gids[shard == s]
        for local, tokens in run.reader(s).token_sets(mine - base[s]).items():
            out[local + int(base[s])] = tokens
    return out


@partition_stage("identical")
def identical_partition(run: Run, p: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Alive signed ids of partition p whose token sets are identical: linked (J = 1) without LSH, and
    all but the first of each set (in canonical order) left out of the LSH stage."""
    lo, hi = slot_range(p, run.partitions)
    base, rank, alive = run.base, run.array("rank"), run.array("alive-exact")
    ids, digests = [], []
    for s in range(len(run.shards)):
        reader = run.reader(s)
        signed = reader.array("signed")
        if not len(signed):
            continue
        gid = signed + base[s]
        setdig = reader.array("setdig")[signed]
        slot = slot_of(setdig)
        mine = (slot >= lo) & (slot < hi) & np.asarray(alive[gid])
        ids.append(gid[mine])
        digests.append(setdig[mine])
    gid = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    d = np.concatenate(digests) if digests else np.zeros(0, np.uint64)
    order = np.lexsort((np.asarray(rank[gid]), d))
    gid, d = gid[order], d[order]
    starts, ends = _runs(d)
    linked_a, linked_b = [], []
    multi = [(a, b) for a, b in zip(starts.tolist(), ends.tolist(), strict=True) if b - a > 1]
    tokens = _token_sets(run, np.unique(np.concatenate([gid[a:b] for a, b in multi]))) if multi else {}
    for a, b in multi:
        head = int(gid[a])
        for k in range(a + 1, b):
            other = int(gid[k])
            if np.array_equal(tokens[head], tokens[other]):
                linked_a.append(head)
                linked_b.append(other)
            # else: a 64-bit digest collision: both stay in the LSH
    edges = {"a": np.asarray(linked_a, np.int64), "b": np.asarray(linked_b, np.int64)}
    return edges, {"signed": len(gid), "identical_sets": len(linked_a)}


# ---------------------------------------------------------------------------------------------- 4. LSH


@partition_stage("lsh")
def lsh_partition(run: Run, p: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Candidate pairs from the band buckets of partition p, verified by exact Jaccard; the verified
    edges go to its output file. Only the LSH representatives (`lsh.npy`) take part."""
    d = run.cfg.dedup
    lo, hi = slot_range(p, run.partitions)
    base, rank, rep = run.base, run.array("rank"), run.array("lsh")
    hashes, gids, shard_of, sig_rows = [], [], [], []
    for s in range(len(run.shards)):
        reader = run.reader(s)
        h, row = reader.band_slice(lo, hi)
        if not len(h):
            continue
        gid = reader.array("signed")[row.astype(np.int64)] + base[s]
        mine = np.asarray(rep[gid])
        hashes.append(h[mine])
        gids.append(gid[mine])
        shard_of.append(np.full(int(mine.sum()), s, dtype=np.int32))
        sig_rows.append(row[mine])
    if not hashes:
        none = {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)}
        return none, {"candidate_pairs": 0, "after_estimate": 0, "verified_pairs": 0, "edges": 0}
    h, gid, shard, sig_row = (np.concatenate(x) for x in (hashes, gids, shard_of, sig_rows))
    # rows = this partition's ids in canonical order, so pairs and bucket caps match the one-process run
    uniq, first = np.unique(gid, return_index=True)
    by_rank = np.argsort(np.asarray(rank[uniq]), kind="stable")
    ids = uniq[by_rank]
    row_of = np.empty(len(uniq), dtype=np.int64)
    row_of[by_rank] = np.arange(len(uniq))
    rows = row_of[np.searchsorted(uniq, gid)]
    pairs, made_by = bucket_pairs(h, rows, d.max_bucket)
    del h, rows
    # Signatures of the rows in a pair only (a partition sees most ids through one band or another, but
    # few of them are in a pair), read shard by shard; pairs are renumbered over those rows.
    needed = np.unique(pairs) if len(pairs) else np.zeros(0, np.int64)
    sig = np.zeros((len(needed), d.num_perm), dtype=np.uint32)
    src = first[by_rank][needed]  # an occurrence of each needed row in the concatenated slices
    for s in np.unique(shard[src]).tolist():
        at = np.flatnonzero(shard[src] == s)
        sig[at] = run.reader(s).rows("sig", sig_row[src[at]])
    ids = ids[needed]
    pairs = np.searchsorted(needed, pairs)
    pairs = unique_pairs(pairs[_owned(sig, pairs, made_by, d.bands, d.rows)], len(ids))
    edges: list[tuple[int, int]] = []
    tokens = _LazyTokens(run, ids)
    stats = verify_pairs(UnionFind(len(ids)), np.arange(len(ids)), sig, pairs, tokens, threshold=d.threshold, edges=edges,
                         on_candidates=tokens.expect)  # fmt: skip
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return {"a": ids[e[:, 0]], "b": ids[e[:, 1]]}, {"candidate_pairs": stats.candidates, "after_estimate": stats.after_estimate,
                                                   "verified_pairs": stats.verified, "edges": stats.edges}  # fmt: skip


def _owned(sig: np.ndarray, pairs: np.ndarray, made_by: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Which generated pairs this partition verifies: those made by the bucket of the lowest band in which
    the two collide. Every candidate pair is then verified in exactly one partition whatever P (pairs of
    similar files share most bands, so without this P partitions would verify each up to P times), and
    the rule does not depend on P: with one partition it drops the same pairs."""
    if not len(pairs):
        return np.zeros(0, dtype=bool)
    rows_needed, inverse = np.unique(pairs, return_inverse=True)
    b = band_hashes(sig[rows_needed], bands, rows)
    left, right = b[inverse.reshape(-1, 2)[:, 0]], b[inverse.reshape(-1, 2)[:, 1]]
    first = np.argmax(left == right, axis=1)
    return left[np.arange(len(pairs)), first] == made_by


class _LazyTokens:
    """Token sets by row: those of the pairs left after the signature estimate, read in one pass over the
    shards the first time one is asked for."""

    def __init__(self, run: Run, ids: np.ndarray) -> None:
        self.run, self.ids = run, ids
        self.rows = np.zeros(0, np.int64)
        self.sets: dict[int, np.ndarray] | None = None

    def expect(self, pairs: np.ndarray) -> None:
        self.rows = np.unique(pairs)

    def __call__(self, row: int) -> np.ndarray:
        if self.sets is None:
            by_gid = _token_sets(self.run, self.ids[self.rows])
            self.sets = {int(r): by_gid[int(self.ids[r])] for r in self.rows.tolist()}
        return self.sets[row]


# ---------------------------------------------------------------------------------------------- 5. components


def components(run: Run, edge_files: list[Path]) -> Groups:
    """Connected components of the verified edges, each sorted by the keep rule (survivor first) and
    ordered by their smallest id; only the ids on an edge are held."""
    a_parts, b_parts = [], []
    for path in edge_files:
        e = load_npz(path)
        a_parts.append(e["a"])
        b_parts.append(e["b"])
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    if not len(a):
        return Groups()
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    uf = UnionFind(len(nodes))
    for x, y in zip(inverse[: len(a)].tolist(), inverse[len(a) :].tolist(), strict=True):
        uf.union(x, y)
    skey = run.array("skey")
    groups = []
    for group in uf.groups(np.arange(len(nodes))):
        members = nodes[group]  # ascending ids
        groups.append(members[np.argsort(np.asarray(skey[members]), kind="stable")])
    return Groups.of(groups)


def near_info(infos: list[dict[str, int]]) -> dict[str, int]:
    """stats.json's `near_dedup` counts, summed over the partitions of both stages."""
    keys = ("signed", "identical_sets", "candidate_pairs", "after_estimate", "verified_pairs", "edges")
    return {k: sum(i.get(k, 0) for i in infos) for k in keys}


def load_groups(paths: list[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        yield from Groups(**load_npz(path))
