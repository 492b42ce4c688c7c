"""Stage 1 of curation, per input shard: the filter steps, then each survivor's MinHash signature.

`filter_shard` reads one export shard, applies the steps (`codeparrot.curate.steps`) to each record and
writes the survivors' `ShardWork` (`codeparrot.curate.work`) to a folder keyed on the shard's content and
the config. It is idempotent (the `_DONE.json` marker, written last, holds its `ShardSummary`), returns
only that small summary, and so can be mapped over shards by any executor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from codeparrot.config import short_hash
from codeparrot.curate import stats
from codeparrot.curate.config import CurateConfig
from codeparrot.curate.fastgz import read_shard_lines
from codeparrot.curate.filters import Doc
from codeparrot.curate.minhash import (
    MAX_BATCH_DOCS,
    band_hashes,
    permutations,
    set_digest,
    signatures,
    token_sets,
)
from codeparrot.curate.steps import (
    DecontaminationStep,
    Dropped,
    LicenseStep,
    Record,
    RedactionStep,
    StepRunner,
    build_steps,
)
from codeparrot.curate.work import DONE, ShardWork
from codeparrot.errors import DataError
from codeparrot.shards import NOT_GZIP, BadRecord

log = logging.getLogger(__name__)

# 2: a shard that is not gzip is set aside as a bad shard, not counted as a record; 3: redaction,
# decontamination; 4: partitioned stages (the input is re-read, not copied)
CURATE_VERSION = "4"
DROPPED = "dropped"
# ~1 MiB of text per vectorised batch keeps the per-byte NumPy temporaries in cache (measured: 2x faster
# than 8 MiB batches on the benchmark corpus); 4096 documents caps the batch of many tiny files likewise
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


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class _Survivors:
    """Accumulates the survivors of a shard and their MinHash data, batch by batch."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.source: list[int] = []
        self.line_len: list[int] = []
        self.keys: list[tuple[str, str, int, int]] = []
        self.copies: list[int] = []
        self.digests = bytearray()
        self.redacted: dict[int, bytes] = {}
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        d = cfg.dedup
        self.perm = permutations(d.num_perm, d.seed) if cfg.near_dedup else None
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tokens", "counts", "setdig", "signed", "sig", "bands")}
        self.flushed = 0

    def add(self, record: Record, source: int, changed: bool) -> None:
        i = len(self.keys)
        line = record.line
        self.source.append(source)
        self.line_len.append(len(line))
        self.keys.append((record.item["repo_name"], record.item["path"], zlib.crc32(line), len(line)))
        copies = record.item.get("copies")
        self.copies.append(copies if isinstance(copies, int) else 0)
        if self.cfg.exact_dedup:
            self.digests += record.digest
        if changed:
            self.redacted[i] = line
        if self.perm is not None:
            content = record.doc.raw
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
        p["setdig"].append(set_digest(sets))
        p["signed"].append(rows + self.flushed)
        p["sig"].append(sig)
        p["bands"].append(band_hashes(sig, d.bands, d.rows))
        self.flushed += len(self.batch)
        self.batch, self.batch_bytes = [], 0

    def finish(self) -> ShardWork:
        self.flush()
        n = len(self.keys)
        near = None
        if self.perm is not None:
            d, p = self.cfg.dedup, self.parts

            def cat(name: str, empty: np.ndarray) -> np.ndarray:
                return np.concatenate(p[name]) if p[name] else empty

            tok_offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(cat("counts", np.zeros(0, np.int64)), out=tok_offsets[1:])
            near = {
                "setdig": cat("setdig", np.zeros(0, np.uint64)),
                "tokens": cat("tokens", np.zeros(0, np.uint64)),
                "tok_offsets": tok_offsets,
                "signed": cat("signed", np.zeros(0, np.int64)),
                "sig": cat("sig", np.zeros((0, d.num_perm), np.uint32)),
                "bands": cat("bands", np.zeros((0, d.bands), np.uint64)),
            }
        width = 16 if self.cfg.exact_dedup else 0
        return ShardWork(
            source=np.asarray(self.source, dtype=np.int64),
            line_len=np.asarray(self.line_len, dtype=np.int64),
            copies=np.asarray(self.copies, dtype=np.int64),
            digest=np.frombuffer(bytes(self.digests), dtype=np.uint8).reshape(n, width),
            keys=self.keys,
            redacted=self.redacted,
            near=near,
        )


def shard_folder(shard: Path, sha256: str, cfg: CurateConfig, work_dir: Path) -> Path:
    name = shard.name.removesuffix(".gz").removesuffix(".json")
    return Path(work_dir) / f"{name}-{short_hash(CURATE_VERSION, sha256, cfg.shard_fingerprint())}"


def filter_shard(shard: Path, cfg: CurateConfig, work_dir: Path) -> ShardSummary:
    """The filter steps and MinHash of one shard's records into `work_dir`; a no-op when done."""
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


def _filter_into(shard: Path, sha: str, cfg: CurateConfig, tmp: Path, final: Path) -> ShardSummary:
    sink = Dropped(tmp / DROPPED, final.name, cfg.write_dropped)
    runner = StepRunner(build_steps(cfg), sink)
    survivors = _Survivors(cfg)
    records_in = 0
    bad: BadShard | None = None
    try:
        for source, (item, line) in enumerate(read_shard_lines(shard, strict=cfg.strict)):
            if isinstance(item, BadRecord) and item.reason == NOT_GZIP:  # no records at all: a bad shard
                bad = BadShard(shard=str(shard), reason=item.reason, detail=item.detail)
                log.warning("%s is not a gzip file: set aside as a bad shard", shard)
                if cfg.write_dropped:
                    (tmp / DROPPED / NOT_GZIP).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shard, tmp / DROPPED / NOT_GZIP / shard.name)
                continue
            records_in += 1
            if isinstance(item, BadRecord):
                runner.drop(item.reason, orjson.dumps({"shard": shard.name, "line": item.line, "reason": item.reason, "detail": item.detail}) + b"\n")
                continue
            record = Record(item, line, Doc(item["content"]))
            if runner.run(record) is None:
                survivors.add(record, source, changed=record.line is not line)
        if records_in == 0 and bad is None:
            if cfg.strict:
                raise DataError(f"{shard}: empty shard, no records (rerun without --strict to count it and go on)")
            records_in = 1
            runner.drop(stats.EMPTY_SHARD, orjson.dumps({"shard": shard.name, "line": 0, "reason": stats.EMPTY_SHARD, "detail": "no records"}) + b"\n")
            log.warning("%s holds no records; counted as %s", shard, stats.EMPTY_SHARD)
        work = survivors.finish()
        work.write(tmp)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    license_step = runner.find(LicenseStep)
    redaction = runner.find(RedactionStep)
    decontamination = runner.find(DecontaminationStep)
    n = len(work.keys)
    summary = ShardSummary(
        shard=str(shard),
        sha256=sha,
        work=str(final),
        fingerprint=cfg.shard_fingerprint(),
        records_in=records_in,
        survivors=n,
        dropped=stats.ordered(runner.counts),
        unknown_licenses=dict(sorted(license_step.unknown.items())) if license_step else {},
        bad=bad,
        redactions=dict(sorted(redaction.placeholders.items())) if redaction else {},
        redacted_files=redaction.files if redaction else 0,
        contaminated=decontamination.removed if decontamination else [],
    )
    stats.check_balance(records_in, n, Counter(runner.counts))
    return summary
