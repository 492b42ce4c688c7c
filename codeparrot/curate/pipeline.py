"""The curation stage: per-shard filtering and signatures, then one exact global finalize.

`filter_shard` reads one export shard and applies, per record, the license allow-list and the
heuristics; survivors are written to an intermediate folder as their output JSON lines, with their key,
exact-dedup digest, token set and MinHash band hashes. It is idempotent (a `_DONE.json` marker, written
last, holds its summary) and returns a small `ShardSummary`, so Prefect can map it over shards and Dask
can run it remotely.

`finalize` then works on the whole input at once, but only on small per-record arrays: it ranks every
survivor by (repo_name, path) in a streaming merge of the shards' sorted keys, drops exact copies (one per
digest survives), finds near-duplicate clusters (LSH candidates, exact Jaccard, union-find), and writes
the kept records in that canonical order, so the output bytes depend neither on input order nor on the
number of workers. A record is counted under the first reason that drops it, in this order: unreadable,
license, heuristics (in the reference script's order), exact-dup, near-dup. Unlike the reference, which
deduplicates before its heuristics, exact dedup runs on the survivors of the heuristics: a copy that fails
a heuristic counts under that heuristic, and which copy survives never depends on one that is dropped.

Survivor of a group of copies or near-duplicates (`DedupConfig.keep`): most `copies`, then smallest
(repo_name, path); or the smallest (repo_name, path) alone.

Shards are read and the kept shards written with `fastgz` (whole-chunk inflate/deflate, ISA-L when
installed) rather than `iter_shard` / `ShardWriter`, whose gzip module cannot use a faster codec: same
records and reasons in, same conventions out (atomic rename, no name or time in the gzip header, lines
as `codeparrot.shards.dumps` writes them). Dropped records, off the hot path, go through `ShardWriter`.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import logging
import mmap
import multiprocessing
import os
import shutil
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel
from tqdm import tqdm

from codeparrot.config import short_hash
from codeparrot.curate import licenses, stats
from codeparrot.curate.clusters import UnionFind, link_near_duplicates
from codeparrot.curate.config import CurateConfig, DedupConfig
from codeparrot.curate.decontaminate import DecontaminationConfig, Decontaminator
from codeparrot.curate.fastgz import read_shard_lines, write_shard
from codeparrot.curate.filters import Doc, HeuristicFilter, exact_digest
from codeparrot.curate.minhash import (
    MAX_BATCH_DOCS,
    band_hashes,
    jaccard,
    permutations,
    set_digest,
    signatures,
    token_sets,
)
from codeparrot.curate.pii import PLACEHOLDERS, RedactionConfig, Redactor
from codeparrot.errors import ConfigError, DataError, writing
from codeparrot.shards import NOT_GZIP, BadRecord, ShardWriter, list_shards
from codeparrot.storage import locked

log = logging.getLogger(__name__)

# 2: a shard that is not gzip is set aside as a bad shard, not counted as a record; 3: redaction, decontamination
CURATE_VERSION = "3"
DONE = "_DONE.json"
SUCCESS = "_SUCCESS"
STATS_JSON = "stats.json"
STATS_MD = "stats.md"
CLUSTERS = "duplicate_clusters.jsonl"
DECONTAMINATION = "decontamination.jsonl"  # each removed file and the benchmark problems it held
DROPPED = "dropped"
OUTPUT_STEM = "part"
# ~1 MiB of text per vectorised batch keeps the per-byte NumPy temporaries in cache (measured: 2x faster
# than 8 MiB batches on the benchmark corpus)
_BATCH_BYTES = 1 << 20
_BATCH_DOCS = min(4096, MAX_BATCH_DOCS)


class BadShard(BaseModel):
    """A shard that holds no readable records at all (e.g. not gzip): set aside and reported, not counted."""

    shard: str
    reason: str
    detail: str


class ShardSummary(BaseModel):
    """What `filter_shard` did with one shard: counts and where its intermediate files are; no records."""

    shard: str
    sha256: str
    work: str
    fingerprint: str
    records_in: int
    survivors: int
    dropped: dict[str, int]
    unknown_licenses: dict[str, int] = {}
    bad: BadShard | None = None
    redactions: dict[str, int] = {}  # placeholders put in, per kind
    redacted_files: int = 0
    contaminated: list[dict[str, Any]] = []  # {repo_name, path, reason, problems} per removed file


class CurateResult(BaseModel):
    """The curated output: where it is, its content hash (downstream caches key on it) and the counts."""

    out_dir: str
    content_hash: str
    records_in: int
    kept: int
    dropped: dict[str, int]
    shards: list[str]
    exact_dup_clusters: int
    near_dup_clusters: int
    table: str
    bad_shards: list[BadShard] = []

    def identity(self) -> str:
        return self.content_hash

    def set_aside(self) -> dict[str, int]:
        return dict(Counter(b.reason for b in self.bad_shards))

    def text_table(self) -> str:
        return stats.text_table(self.records_in, self.kept, self.dropped, self.set_aside())


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def input_key(cfg: CurateConfig, shard_hashes: list[str]) -> str:
    """Identity of a curate run: the config and the shards' contents (not their names or order)."""
    return cfg.fingerprint(CURATE_VERSION, *sorted(shard_hashes))


def _safe(reason: str) -> str:
    return reason.replace(":", "_").replace("/", "_")


# ---------------------------------------------------------------------------------------------- shard


class _Dropped:
    """Dropped records of one shard, one gzip shard per reason (only with write_dropped)."""

    def __init__(self, folder: Path, stem: str, enabled: bool) -> None:
        self.folder, self.stem, self.enabled = folder, stem, enabled
        self.writers: dict[str, ShardWriter] = {}

    def write(self, reason: str, line: bytes) -> None:
        if not self.enabled:
            return
        if reason not in self.writers:
            self.writers[reason] = ShardWriter(self.folder / _safe(reason), self.stem, max_records=1 << 40, max_bytes=1 << 50)
        self.writers[reason].write_line(line)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


class _Survivors:
    """Accumulates the survivors of a shard and their MinHash data, batch by batch."""

    def __init__(self, folder: Path, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.lines = open(folder / "lines.bin", "wb")  # noqa: SIM115 - closed in finish()
        self.offsets = [0]
        self.keys: list[tuple[str, str]] = []
        self.copies: list[int] = []
        self.crcs: list[int] = []
        self.digests = bytearray()
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        d = cfg.dedup
        self.perm = permutations(d.num_perm, d.seed) if cfg.near_dedup else None
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tokens", "counts", "ntok", "setdig", "rows", "sig", "bands")}
        self.flushed = 0

    def add(self, record: dict[str, Any], line: bytes, content: bytes, digest: bytes) -> None:
        """`line` is the record's input line: kept records are written out byte for byte as they came."""
        self.lines.write(line)
        self.offsets.append(self.offsets[-1] + len(line))
        self.keys.append((record["repo_name"], record["path"]))
        copies = record.get("copies")
        self.copies.append(copies if isinstance(copies, int) else 0)
        self.crcs.append(zlib.crc32(line))
        self.digests += digest
        if self.perm is not None:
            self.batch.append(content)
            self.batch_bytes += len(content)
            if self.batch_bytes >= _BATCH_BYTES or len(self.batch) >= _BATCH_DOCS:
                self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        d = self.cfg.dedup
        sets = token_sets(self.batch, shingle=d.shingle)
        counts = np.diff(sets.offsets)
        rows = np.flatnonzero((sets.n_tokens >= d.min_tokens) & (counts > 0))
        sig = signatures(sets, *self.perm, rows)
        p = self.parts
        p["tokens"].append(sets.hashes)
        p["counts"].append(counts)
        p["ntok"].append(sets.n_tokens)
        p["setdig"].append(set_digest(sets))
        p["rows"].append(rows + self.flushed)
        p["sig"].append(sig)
        p["bands"].append(band_hashes(sig, d.bands, d.rows))
        self.flushed += len(self.batch)
        self.batch, self.batch_bytes = [], 0

    def finish(self, folder: Path) -> int:
        self.flush()
        self.lines.close()
        n = len(self.keys)
        order = sorted(range(n), key=lambda i: (self.keys[i], self.crcs[i], self.offsets[i + 1] - self.offsets[i]))
        with open(folder / "keys.jsonl", "wb") as fh:
            for i in order:
                fh.write(orjson.dumps([*self.keys[i], self.crcs[i], self.offsets[i + 1] - self.offsets[i], i]) + b"\n")
        arrays: dict[str, np.ndarray] = {
            "offsets": np.asarray(self.offsets, dtype=np.int64),
            "copies": np.asarray(self.copies, dtype=np.int64),
            "digest": np.frombuffer(bytes(self.digests), dtype=np.uint8).reshape(n, -1) if self.digests else np.zeros((n, 0), np.uint8),
        }
        if self.perm is not None:
            d = self.cfg.dedup
            p = self.parts

            def cat(name: str, empty: np.ndarray) -> np.ndarray:
                return np.concatenate(p[name]) if p[name] else empty

            counts = cat("counts", np.zeros(0, np.int64))
            tok_offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=tok_offsets[1:])
            arrays |= {
                "tok_offsets": tok_offsets,
                "ntok": cat("ntok", np.zeros(0, np.int64)),
                "setdig": cat("setdig", np.zeros(0, np.uint64)),
                "rows": cat("rows", np.zeros(0, np.int64)),
                "sig": cat("sig", np.zeros((0, d.num_perm), np.uint32)),
                "bands": cat("bands", np.zeros((0, d.bands), np.uint64)),
            }
            np.save(folder / "tokens.npy", cat("tokens", np.zeros(0, np.uint64)))
        np.savez(folder / "meta.npz", **arrays)
        return n


def shard_folder(shard: Path, sha256: str, cfg: CurateConfig, work_dir: Path) -> Path:
    name = shard.name.removesuffix(".gz").removesuffix(".json")
    return Path(work_dir) / f"{name}-{short_hash(CURATE_VERSION, sha256, cfg.shard_fingerprint())}"


def filter_shard(shard: Path, cfg: CurateConfig, work_dir: Path) -> ShardSummary:
    """License filter, heuristics and MinHash of one shard's records into `work_dir`; a no-op when done."""
    shard = Path(shard)
    sha = file_sha256(shard)
    folder = shard_folder(shard, sha, cfg, work_dir)
    if (folder / DONE).is_file():
        return ShardSummary.model_validate_json((folder / DONE).read_bytes())
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = _filter_into(shard, sha, cfg, tmp, folder)
        (tmp / DONE).write_text(summary.model_dump_json())
        try:
            tmp.rename(folder)
        except OSError:  # another worker finished the same shard first: theirs is identical
            if not (folder / DONE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _load_tokenizer(cfg: CurateConfig) -> Any:
    if cfg.tokenizer_dir is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(cfg.tokenizer_dir) / "tokenizer.json"))


@functools.cache
def step_of(cfg: DecontaminationConfig | RedactionConfig) -> Decontaminator | Redactor | None:
    """The step a config describes, built once per process (the benchmark index takes ~0.15 s); None when off."""
    if isinstance(cfg, DecontaminationConfig):
        return Decontaminator(cfg) if cfg.enabled else None
    return Redactor(cfg) if any(cfg.model_dump().values()) else None


def _filter_into(shard: Path, sha: str, cfg: CurateConfig, tmp: Path, final: Path) -> ShardSummary:
    filt = HeuristicFilter(cfg)
    redactor = step_of(cfg.redaction)
    decontaminator = step_of(cfg.decontamination)
    redactions: Counter[str] = Counter()
    redacted_files = 0
    contaminated: list[dict[str, Any]] = []
    allowed = cfg.license_filter
    tokenizer = _load_tokenizer(cfg)
    dropped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    sink = _Dropped(tmp / DROPPED, final.name, cfg.write_dropped)
    survivors = _Survivors(tmp, cfg)
    records_in = 0
    bad: BadShard | None = None
    try:
        for item, line in read_shard_lines(shard, strict=cfg.strict):
            if isinstance(item, BadRecord) and item.reason == NOT_GZIP:  # no records at all: a bad shard
                bad = BadShard(shard=str(shard), reason=item.reason, detail=item.detail)
                log.warning("%s is not a gzip file: set aside as a bad shard", shard)
                if cfg.write_dropped:
                    (tmp / DROPPED / NOT_GZIP).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shard, tmp / DROPPED / NOT_GZIP / shard.name)
                continue
            records_in += 1
            if isinstance(item, BadRecord):
                dropped[item.reason] += 1
                sink.write(item.reason, orjson.dumps({"shard": shard.name, "line": item.line, "reason": item.reason, "detail": item.detail}) + b"\n")
                continue
            if allowed is not None:
                reason = licenses.drop_reason(item.get("license"), allowed)
                if reason is not None:
                    dropped[reason] += 1
                    if reason == licenses.UNKNOWN:
                        unknown[str(item.get("license"))] += 1
                    sink.write(reason, line)
                    continue
            doc = Doc(item["content"])
            digest = exact_digest(doc) if filt.needs_digest else b""
            if filt.enabled:
                n_tokens = (lambda c=doc.text: len(tokenizer.encode(c).ids)) if tokenizer is not None else None
                reason = filt.reason(doc, digest, n_tokens)
                if reason is not None:
                    dropped[reason] += 1
                    sink.write(reason, line)
                    continue
            if redactor is not None:  # on what the heuristics keep (half the work), before both dedups
                text, found = redactor.redact(doc)
                if found:
                    # The record as it is published: new content and size; the rest of the line's fields kept.
                    item = {**item, "content": text, "size": len(text.encode("utf-8", "surrogatepass"))}
                    line = orjson.dumps(item) + b"\n"
                    doc = Doc(text)
                    digest = exact_digest(doc) if filt.needs_digest else b""  # copies differing by a secret collapse
                    redactions.update(r.kind for r in found)
                    redacted_files += 1
            if decontaminator is not None:
                hit = decontaminator.check(doc)
                if hit is not None:
                    dropped[hit.reason] += 1
                    sink.write(hit.reason, line)
                    contaminated.append({"repo_name": item["repo_name"], "path": item["path"], "reason": hit.reason,
                                         "problems": list(hit.problem_ids)})  # fmt: skip
                    continue
            survivors.add(item, line, doc.raw, digest)
        if records_in == 0 and bad is None:
            if cfg.strict:
                raise DataError(f"{shard}: empty shard, no records (rerun without --strict to count it and go on)")
            records_in = 1
            dropped[stats.EMPTY_SHARD] += 1
            sink.write(stats.EMPTY_SHARD, orjson.dumps({"shard": shard.name, "line": 0, "reason": stats.EMPTY_SHARD, "detail": "no records"}) + b"\n")
            log.warning("%s holds no records; counted as %s", shard, stats.EMPTY_SHARD)
        n = survivors.finish(tmp)
    except BaseException:
        survivors.lines.close()
        sink.abort()
        raise
    sink.close()
    summary = ShardSummary(
        shard=str(shard),
        sha256=sha,
        work=str(final),
        fingerprint=cfg.shard_fingerprint(),
        records_in=records_in,
        survivors=n,
        dropped=stats.ordered(dropped),
        unknown_licenses=dict(sorted(unknown.items())),
        bad=bad,
        redactions=dict(sorted(redactions.items())),
        redacted_files=redacted_files,
        contaminated=contaminated,
    )
    stats.check_balance(records_in, n, dropped)
    return summary


# ---------------------------------------------------------------------------------------------- finalize


class _Corpus:
    """The survivors of every shard as global ids 0..n-1 (shard by shard), with their small arrays."""

    def __init__(self, summaries: list[ShardSummary], cfg: CurateConfig, stack: ExitStack) -> None:
        self.summaries = summaries
        self.folders = [Path(s.work) for s in summaries]
        for s, folder in zip(summaries, self.folders, strict=True):
            if not (folder / DONE).is_file():
                raise DataError(f"intermediate files of {s.shard} are missing in {folder}: rerun filter_shard for it")
        self.meta = [dict(np.load(f / "meta.npz")) for f in self.folders]
        counts = np.array([s.survivors for s in summaries], dtype=np.int64)
        self.base = np.zeros(len(summaries) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.base[1:])
        self.n = int(self.base[-1])
        self.shard_of = np.repeat(np.arange(len(summaries)), counts)
        self.local_of = np.arange(self.n) - self.base[self.shard_of]
        self.copies = self._cat("copies", np.int64)
        self.line_len = np.concatenate([np.diff(m["offsets"]) for m in self.meta]) if self.n else np.zeros(0, np.int64)
        self._lines = [self._map(stack, f / "lines.bin") for f in self.folders]
        self._tokens: list[np.ndarray] = []
        if cfg.near_dedup:
            self._tokens = [np.load(f / "tokens.npy", mmap_mode="r") for f in self.folders]
        self.rank, self.order = self._merge_keys()

    @staticmethod
    def _map(stack: ExitStack, path: Path) -> mmap.mmap | bytes:
        if path.stat().st_size == 0:
            return b""
        fh = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - the stack closes it
        return stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))

    def _cat(self, name: str, dtype: type) -> np.ndarray:
        parts = [m[name] for m in self.meta]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    def _iter_keys(self, s: int) -> Iterator[tuple[list[Any], int]]:
        with open(self.folders[s] / "keys.jsonl", "rb") as fh:
            for line in fh:
                entry = orjson.loads(line)
                yield entry, s

    def _merge_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Global rank of each id in (repo_name, path) order, and the ids in that order (streaming merge)."""
        rank = np.empty(self.n, dtype=np.int64)
        order = np.empty(self.n, dtype=np.int64)
        merged = heapq.merge(*(self._iter_keys(s) for s in range(len(self.folders))), key=lambda e: e[0][:4])
        for r, (entry, s) in enumerate(merged):
            g = int(self.base[s]) + entry[4]
            rank[g] = r
            order[r] = g
        return rank, order

    def keys_of(self, ids: set[int]) -> dict[int, tuple[str, str]]:
        """repo_name and path of a few ids (one streaming pass over the shards that hold them)."""
        out: dict[int, tuple[str, str]] = {}
        for s in sorted({int(self.shard_of[g]) for g in ids}):
            for entry, _ in self._iter_keys(s):
                g = int(self.base[s]) + entry[4]
                if g in ids:
                    out[g] = (entry[0], entry[1])
        return out

    def line(self, g: int) -> bytes:
        s, i = int(self.shard_of[g]), int(self.local_of[g])
        off = self.meta[s]["offsets"]
        return self._lines[s][off[i] : off[i + 1]]

    def tokens(self, g: int) -> np.ndarray:
        s, i = int(self.shard_of[g]), int(self.local_of[g])
        off = self.meta[s]["tok_offsets"]
        return self._tokens[s][off[i] : off[i + 1]]

    def survivor_key(self, keep: str) -> np.ndarray:
        """Sort key of 'which copy survives' (smaller wins) as an int64 per id."""
        if keep == "min-key":
            return self.rank.copy()
        # most copies first, then the smallest key: -copies * n + rank orders lexicographically
        return -self.copies * max(self.n, 1) + self.rank


def _exact_dedup(corpus: _Corpus, survivor_key: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Ids removed as exact copies, and the groups (survivor first) they belong to."""
    removed = np.zeros(corpus.n, dtype=bool)
    if corpus.n == 0:
        return removed, []
    digests = np.concatenate([m["digest"] for m in corpus.meta if len(m["digest"])])
    words = digests.view(">u8").reshape(corpus.n, 2)
    order = np.lexsort((survivor_key, words[:, 1], words[:, 0]))
    w = words[order]
    same = np.all(w[1:] == w[:-1], axis=1)
    removed[order[1:][same]] = True
    groups: list[list[int]] = []
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    ends = np.concatenate((starts[1:], [corpus.n]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a > 1:
            groups.append(order[a:b].tolist())
    return removed, groups


def _near_dedup(corpus: _Corpus, cfg: DedupConfig, alive: np.ndarray) -> tuple[UnionFind, np.ndarray, dict[str, int]]:
    """Union-find over ids linking near-duplicates among alive ids with a signature."""
    uf = UnionFind(corpus.n)
    sig_ids, sigs, bands = [], [], []
    setdig = np.zeros(corpus.n, dtype=np.uint64)
    for s, m in enumerate(corpus.meta):
        base = int(corpus.base[s])
        sig_ids.append(m["rows"] + base)
        sigs.append(m["sig"])
        bands.append(m["bands"])
        setdig[base : base + len(m["setdig"])] = m["setdig"]
    ids = np.concatenate(sig_ids) if sig_ids else np.zeros(0, np.int64)
    sig = np.concatenate(sigs) if sigs else np.zeros((0, cfg.num_perm), np.uint32)
    band = np.concatenate(bands) if bands else np.zeros((0, cfg.bands), np.uint64)
    live = alive[ids]
    ids, sig, band = ids[live], sig[live], band[live]
    # canonical row order (by key), so that everything below is independent of the input order
    by_rank = np.argsort(corpus.rank[ids], kind="stable")
    ids, sig, band = ids[by_rank], sig[by_rank], band[by_rank]
    # identical token sets are duplicates outright (J = 1): link them, and let one of each go through LSH
    order = np.lexsort((corpus.rank[ids], setdig[ids]))
    d = setdig[ids][order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = d[1:] != d[:-1]
    head = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    first = np.empty(len(order), dtype=bool)
    first[order] = starts
    identical = 0
    for pos in np.flatnonzero(~starts).tolist():
        a, b = int(ids[order[head[pos]]]), int(ids[order[pos]])
        if np.array_equal(corpus.tokens(a), corpus.tokens(b)):
            uf.union(a, b)
            identical += 1
        else:  # a 64-bit digest collision: both stay in the LSH
            first[order[pos]] = True
    rep = np.flatnonzero(first)
    vs = link_near_duplicates(
        uf, ids[rep], sig[rep], band[rep], corpus.tokens, threshold=cfg.threshold, max_bucket=cfg.max_bucket
    )
    info = {
        "signed": len(ids),
        "identical_sets": identical,
        "candidate_pairs": vs.candidates,
        "after_estimate": vs.after_estimate,
        "verified_pairs": vs.verified,
        "edges": vs.edges,
    }
    return uf, ids, info


def _clean_outputs(out_dir: Path) -> None:
    for pattern in (f"{OUTPUT_STEM}-*.json.gz*", STATS_JSON, STATS_MD, CLUSTERS, DECONTAMINATION, SUCCESS, ".tmp-*"):
        for path in out_dir.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(out_dir / DROPPED, ignore_errors=True)


def _steps_report(summaries: list[ShardSummary], cfg: CurateConfig, out_dir: Path) -> dict[str, Any]:
    """stats.json's account of redaction and decontamination; writes `decontamination.jsonl` (sorted)."""
    kinds: Counter[str] = Counter()
    for s in summaries:
        kinds.update(s.redactions)
    removed = sorted((c for s in summaries for c in s.contaminated), key=lambda c: (c["repo_name"], c["path"]))
    _atomic_write(out_dir / DECONTAMINATION, b"".join(orjson.dumps(c) + b"\n" for c in removed))
    decontaminator = step_of(cfg.decontamination)
    problems = sorted({p for c in removed for p in c["problems"]})
    return {
        "redaction": {
            "kinds": {k: v for k, v in cfg.redaction.model_dump().items()},
            "placeholders": dict(sorted(kinds.items())),
            "files": sum(s.redacted_files for s in summaries),
        },
        "decontamination": {
            "benchmarks": decontaminator.benchmarks if decontaminator is not None else {},
            "files_removed": len(removed),
            "problems_found": problems,
        },
    }


def _plan_shards(corpus: _Corpus, kept: np.ndarray, cfg: CurateConfig) -> list[np.ndarray]:
    """Kept ids in canonical order, cut into output shards the way ShardWriter rolls over."""
    ids = corpus.order[kept[corpus.order]]
    plan: list[np.ndarray] = []
    start, n, size = 0, 0, 0
    lengths = corpus.line_len[ids]
    for k, length in enumerate(lengths.tolist()):
        if n and (n >= cfg.shard_max_records or size >= cfg.shard_max_bytes):
            plan.append(ids[start:k])
            start, n, size = k, 0, 0
        n += 1
        size += length
    if n:
        plan.append(ids[start:])
    return plan


def _write_shard(corpus: _Corpus, ids: np.ndarray, index: int, out_dir: Path, level: int) -> tuple[str, str]:
    """One output shard, atomically; its name and the sha256 of its bytes (1/4 of the records' bytes to
    hash, in large GIL-free reads, instead of one call per record)."""
    final = out_dir / f"{OUTPUT_STEM}-{index:05d}.json.gz"
    write_shard(final, (corpus.line(g) for g in ids.tolist()), level=level)
    return final.name, file_sha256(final)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def finalize(
    summaries: list[ShardSummary],
    cfg: CurateConfig,
    work_dir: Path,
    out_dir: Path,
    *,
    workers: int = 1,
) -> CurateResult:
    """Global exact dedup, near-dedup and the canonical outputs in `out_dir`; a no-op when done."""
    out_dir = Path(out_dir)
    summaries = sorted(summaries, key=lambda s: (s.sha256, s.shard))
    key = input_key(cfg, [s.sha256 for s in summaries])
    # Two refreshes finalizing into the same folder take turns; the second finds the first's result.
    with locked(out_dir.parent / f".{out_dir.name}.lock"):
        done = completed(out_dir, key)
        if done is not None:
            log.info("%s already holds this curation (%s): nothing to do", out_dir, key[:12])
            return done
        return _finalize(summaries, cfg, work_dir, out_dir, key, workers=workers)


def _finalize(
    summaries: list[ShardSummary], cfg: CurateConfig, work_dir: Path, out_dir: Path, key: str, *, workers: int
) -> CurateResult:
    for s in summaries:
        if s.fingerprint != cfg.shard_fingerprint():
            raise ConfigError(f"{s.shard} was filtered with another config than this finalize's: rerun filter_shard")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_outputs(out_dir)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        corpus = _Corpus(summaries, cfg, stack)
        dropped: Counter[str] = Counter()
        for s in summaries:
            dropped.update(s.dropped)
        unknown: Counter[str] = Counter()
        for s in summaries:
            unknown.update(s.unknown_licenses)
        survivor_key = corpus.survivor_key(cfg.dedup.keep)
        alive = np.ones(corpus.n, dtype=bool)
        exact_groups: list[list[int]] = []
        if cfg.exact_dedup:
            removed, exact_groups = _exact_dedup(corpus, survivor_key)
            alive &= ~removed
            dropped[stats.EXACT_DUP] += int(removed.sum())
        near_groups: list[list[int]] = []
        near_info: dict[str, int] = {}
        if cfg.near_dedup:
            uf, signed, near_info = _near_dedup(corpus, cfg.dedup, alive)
            for group in uf.groups(signed):
                group.sort(key=lambda g: survivor_key[g])
                near_groups.append(group)
                alive[group[1:]] = False
                dropped[stats.NEAR_DUP] += len(group) - 1
        t1 = time.perf_counter()
        plan = _plan_shards(corpus, alive, cfg)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            written = list(pool.map(lambda jp: _write_shard(corpus, jp[1], jp[0], out_dir, cfg.compresslevel), enumerate(plan)))
        kept = int(alive.sum())
        records_in = sum(s.records_in for s in summaries)
        stats.check_balance(records_in, kept, dropped)
        bad_shards = sorted((s.bad for s in summaries if s.bad is not None), key=lambda b: b.shard)
        set_aside = dict(Counter(b.reason for b in bad_shards))
        content_hash = hashlib.sha256(f"{CURATE_VERSION}:".encode() + "".join(h for _, h in written).encode()).hexdigest()
        n_clusters = _write_clusters(corpus, out_dir, exact_groups, near_groups)
        if cfg.write_dropped:
            _write_dropped(corpus, summaries, out_dir, exact_groups, near_groups, cfg)
    result = CurateResult(
        out_dir=str(out_dir),
        content_hash=content_hash,
        records_in=records_in,
        kept=kept,
        dropped=stats.ordered(dropped),
        shards=[name for name, _ in written],
        exact_dup_clusters=len(exact_groups),
        near_dup_clusters=len(near_groups),
        table=stats.markdown_table(records_in, kept, dropped, set_aside),
        bad_shards=bad_shards,
    )
    doc = {
        "records_in": records_in,
        "kept": kept,
        "dropped": result.dropped,
        "unknown_licenses": dict(sorted(unknown.items())),
        "bad_shards": [b.model_dump() for b in bad_shards],
        "shards_in": len(summaries),
        "shards_out": len(written),
        "exact_dup_clusters": n_clusters[0],
        "near_dup_clusters": n_clusters[1],
        "near_dedup": near_info,
        **_steps_report(summaries, cfg, out_dir),
        "content_hash": content_hash,
        "config": cfg.fingerprint_fields(),
    }
    _atomic_write(out_dir / STATS_JSON, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    redacted = doc["redaction"]
    lines = [result.table, ""]
    if redacted["files"]:
        kinds = ", ".join(f"{PLACEHOLDERS[k]} {n}" for k, n in redacted["placeholders"].items())
        lines.append(f"Redacted: {redacted['files']} files ({kinds}).")
    checked = doc["decontamination"]["benchmarks"]
    if checked:
        found = doc["decontamination"]["problems_found"]
        lines.append(f"Decontaminated against {', '.join(f'{b} ({n} problems)' for b, n in checked.items())}: "
                     f"{doc['decontamination']['files_removed']} files removed, {len(found)} problems found.")  # fmt: skip
    _atomic_write(out_dir / STATS_MD, ("\n".join(lines).rstrip() + "\n").encode())
    if kept == 0:  # the stats stay for a look; no marker, so nothing downstream takes this as a result
        raise DataError(
            f"nothing to publish from {len(summaries)} shards: {stats.summary_line(records_in, kept, dropped, set_aside)}: "
            f"check the input shards and the license and filter settings (counts in {out_dir / STATS_JSON})"
        )
    _atomic_write(out_dir / SUCCESS, orjson.dumps({"key": key, "result": result.model_dump()}, option=orjson.OPT_INDENT_2))
    log.info(
        "curated %d -> %d records (%.1fs dedup, %.1fs writing), near-dedup %s",
        records_in, kept, t1 - t0, time.perf_counter() - t1, near_info,
    )
    return result


def completed(out_dir: Path, key: str | None = None) -> CurateResult | None:
    """The result recorded in `out_dir`'s marker, if there is one (and it is for `key` when given)."""
    marker = Path(out_dir) / SUCCESS
    if not marker.is_file():
        return None
    try:
        data = orjson.loads(marker.read_bytes())
        result = CurateResult.model_validate(data["result"])
    except (orjson.JSONDecodeError, KeyError, ValueError):
        return None
    if key is not None and data.get("key") != key:
        return None
    if not all((Path(out_dir) / name).is_file() for name in result.shards):
        return None
    return result


def _write_clusters(corpus: _Corpus, out_dir: Path, exact: list[list[int]], near: list[list[int]]) -> tuple[int, int]:
    """duplicate_clusters.jsonl: one line per cluster, survivor first, near-dups with Jaccard to it."""
    ids = {g for group in exact + near for g in group}
    keys = corpus.keys_of(ids)
    entries: list[tuple[int, bytes]] = []
    for kind, groups in (("exact", exact), ("near", near)):
        for group in groups:
            kept = group[0]
            kept_tokens = corpus.tokens(kept) if kind == "near" else None
            members = []
            for g in group:
                m: dict[str, Any] = {"repo_name": keys[g][0], "path": keys[g][1], "kept": g == kept}
                if kept_tokens is not None:
                    m["jaccard"] = 1.0 if g == kept else round(jaccard(corpus.tokens(g), kept_tokens), 4)
                members.append(m)
            line = {"kind": kind, "kept": f"{keys[kept][0]}/{keys[kept][1]}", "size": len(group), "members": members}
            entries.append((int(corpus.rank[kept]), orjson.dumps(line) + b"\n"))
    entries.sort(key=lambda e: (e[0], e[1]))
    _atomic_write(out_dir / CLUSTERS, b"".join(line for _, line in entries))
    return len(exact), len(near)


def _write_dropped(
    corpus: _Corpus, summaries: list[ShardSummary], out_dir: Path, exact: list[list[int]], near: list[list[int]], cfg: CurateConfig
) -> None:
    root = out_dir / DROPPED
    for s in summaries:
        src = Path(s.work) / DROPPED
        if not src.is_dir():
            continue
        for reason_dir in sorted(src.iterdir()):
            for f in sorted(reason_dir.glob("*.json.gz")):
                (root / reason_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, root / reason_dir.name / f.name)
    for reason, groups in ((stats.EXACT_DUP, exact), (stats.NEAR_DUP, near)):
        removed = sorted((g for group in groups for g in group[1:]), key=lambda g: corpus.rank[g])
        if removed:
            with ShardWriter(root / reason, OUTPUT_STEM, max_records=cfg.shard_max_records, compresslevel=cfg.compresslevel) as w:
                for g in removed:
                    w.write_line(corpus.line(g))


# ---------------------------------------------------------------------------------------------- drivers


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with everything imported; only safe while this process has a
    # single thread (Prefect, Dask or a test harness may hold others, whose locks a fork would copy)
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def pool_size(n_shards: int, workers: int, cpus: int | None = None) -> int:
    """Processes for `n_shards` shard tasks given `workers` of the machine's `cpus`.

    With the whole machine and few shards, one process per shard: the OS shares the CPUs evenly, so 5
    shards on 2 CPUs take 2.5 shard-times, not the 3 of 2 processes (one of which runs a third shard
    while the other idles). Otherwise one process per worker, so a smaller `workers` caps the CPUs used.
    """
    cpus = default_workers() if cpus is None else cpus
    if workers >= cpus and n_shards <= 4 * workers:
        return n_shards
    return max(1, min(workers, n_shards))


def map_shards(
    shards: list[Path],
    fn: Callable[[Path], ShardSummary],
    *,
    workers: int,
    progress: bool = False,
) -> list[ShardSummary]:
    """Run `fn` over shards, biggest first, in a process pool (in-process, in order, for one worker).

    When shards fail, the error raised is that of the first failing shard in input order, whichever
    worker failed first: the shards before it still run (one of them may fail too), those after it are
    cancelled.
    """
    position = {shard: i for i, shard in enumerate(shards)}
    todo = sorted(shards, key=lambda p: (-p.stat().st_size, p.name))
    context = _pool_context()  # before tqdm, which starts a monitor thread
    bar = tqdm(total=len(todo), desc="curate shards", unit="shard", disable=not progress)
    out: dict[Path, ShardSummary] = {}
    failed: dict[Path, Exception] = {}
    try:
        if workers <= 1 or len(todo) <= 1:
            for shard in shards:
                out[shard] = fn(shard)
                bar.update()
        else:
            with ProcessPoolExecutor(pool_size(len(todo), workers), mp_context=context) as pool:
                futures = {pool.submit(fn, shard): shard for shard in todo}
                for future in as_completed(futures):
                    shard = futures[future]
                    if future.cancelled():
                        continue
                    try:
                        out[shard] = future.result()
                    except Exception as exc:
                        failed[shard] = exc
                        first = min(failed, key=position.__getitem__)
                        for f, s in futures.items():
                            if position[s] > position[first]:
                                f.cancel()
                    bar.update()
    finally:
        bar.close()
    if failed:
        raise failed[min(failed, key=position.__getitem__)]
    return [out[s] for s in shards]


class _ShardJob:
    """Picklable `filter_shard` with its config bound, for process pools."""

    def __init__(self, cfg: CurateConfig, work_dir: Path) -> None:
        self.cfg, self.work_dir = cfg, work_dir
        # Built here, before a pool forks: forked workers inherit the steps instead of each building them.
        step_of(cfg.redaction)
        step_of(cfg.decontamination)

    def __call__(self, shard: Path) -> ShardSummary:
        return filter_shard(shard, self.cfg, self.work_dir)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def curate(
    in_dir: Path,
    out_dir: Path,
    cfg: CurateConfig,
    *,
    workers: int | None = None,
    work_dir: Path | None = None,
    keep_work: bool = False,
    progress: bool = False,
) -> CurateResult:
    """The local driver: `filter_shard` over the shards in a process pool, then `finalize`."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise ConfigError(f"output folder {out_dir} is the input folder: pass another OUT_DIR")
    shards = list_shards(in_dir)
    workers = workers or default_workers()
    key = input_key(cfg, [file_sha256(p) for p in shards])
    done = completed(out_dir, key)
    if done is not None:
        log.info("%s is already curated from these shards with this config: nothing to do", out_dir)
        return done
    work = Path(work_dir) if work_dir is not None else out_dir / "_work"
    made_out = not out_dir.exists()
    t0 = time.perf_counter()
    try:
        with writing(out_dir if work_dir is None else work, "OUT_DIR (or --work-dir)"):
            summaries = map_shards(shards, _ShardJob(cfg, work), workers=workers, progress=progress)
            log.info("filtered %d shards in %.1fs with %d workers", len(shards), time.perf_counter() - t0, workers)
            result = finalize(summaries, cfg, work, out_dir, workers=workers)
    except BaseException:
        if work_dir is None and not keep_work:  # a given --work-dir is kept: a rerun reuses its finished shards
            shutil.rmtree(work, ignore_errors=True)
            if made_out and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    if work_dir is None and not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def dedup_shard(shard: Path, cfg: DedupConfig, work_dir: Path) -> ShardSummary:
    """`filter_shard` for near-dedup alone (no license filter, no heuristics)."""
    return filter_shard(shard, CurateConfig.dedup_only(cfg), work_dir)


def finalize_dedup(
    summaries: list[ShardSummary], cfg: DedupConfig, work_dir: Path, out_dir: Path, *, workers: int = 1
) -> CurateResult:
    return finalize(summaries, CurateConfig.dedup_only(cfg), work_dir, out_dir, workers=workers)


def dedup(
    in_dir: Path,
    out_dir: Path,
    cfg: DedupConfig | None = None,
    *,
    workers: int | None = None,
    strict: bool = False,
    work_dir: Path | None = None,
    keep_work: bool = False,
    progress: bool = False,
) -> CurateResult:
    """Near-dedup alone, with the `curate` driver."""
    full = CurateConfig.dedup_only(cfg, strict=strict)
    return curate(in_dir, out_dir, full, workers=workers, work_dir=work_dir, keep_work=keep_work, progress=progress)
