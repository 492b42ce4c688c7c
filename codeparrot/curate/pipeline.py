"""The curation stage's driver: the filter stage over shards, then the dedup and output stages over partitions.

Stages (each in its own module, pure over its inputs, tested alone, with its own output files):

1. `filter_stage.filter_shard`, per input shard: the filter steps (`steps`: license, heuristics,
   redaction, decontamination; counted by reason, dropped records set aside) and MinHash signatures,
   into the shard's `work.ShardWork`;
2. `dedup_stages`: canonical ranks (a bounded-fan-in merge of the shards' sorted keys), exact copies,
   identical token sets and LSH band buckets with exact-Jaccard verification, each over P hash-range
   partitions, then connected components over the verified edges;
3. `output`: the kept records in canonical (repo_name, path) order, cut into shards, written by
   ranges from the re-read input; `duplicate_clusters.jsonl` by partition; stats and the marker.

Executors (`executors.LocalExecutor`, `tasks.curate.PrefectExecutor` on Dask) map a stage over its
items; P comes from the corpus size and a memory budget per worker (`partitions_for`), or is given. The
output bytes do not depend on P, the worker count or the input order. A record is counted under the
first reason that drops it, in this order: unreadable, license, heuristics (in the reference script's
order), decontamination, exact-dup, near-dup. Unlike the reference, which deduplicates before its
heuristics, exact dedup runs on the survivors of the steps: a copy that fails a heuristic counts under
that heuristic, and which copy survives never depends on one that is dropped.

Survivor of a group of copies or near-duplicates (`DedupConfig.keep`): most `copies`, then smallest
(repo_name, path); or the smallest (repo_name, path) alone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from codeparrot.curate import dedup_stages as dd
from codeparrot.curate import output, stats
from codeparrot.curate.config import CurateConfig, DedupConfig
from codeparrot.curate.executors import Executor, LocalExecutor, default_workers, pool_size
from codeparrot.curate.filter_stage import (
    CURATE_VERSION,
    DROPPED,
    BadShard,
    ShardSummary,
    file_sha256,
    filter_shard,
    shard_folder,
)
from codeparrot.curate.minhash import permutations
from codeparrot.curate.pii import PLACEHOLDERS
from codeparrot.curate.steps import step_of
from codeparrot.curate.work import DONE, SLOTS
from codeparrot.errors import ConfigError, DataError, writing
from codeparrot.shards import ShardWriter, list_shards
from codeparrot.storage import atomic_write_bytes, locked

log = logging.getLogger(__name__)

__all__ = [
    "CURATE_VERSION",
    "DONE",
    "BadShard",
    "CurateResult",
    "ShardSummary",
    "completed",
    "curate",
    "dedup",
    "default_workers",
    "file_sha256",
    "filter_shard",
    "finalize",
    "input_key",
    "pool_size",
    "shard_folder",
]  # fmt: skip

SUCCESS = "_SUCCESS"
STATS_JSON = "stats.json"
STATS_MD = "stats.md"
CLUSTERS = "duplicate_clusters.jsonl"
DECONTAMINATION = "decontamination.jsonl"  # each removed file and the benchmark problems it held
OUTPUT_STEM = output.OUTPUT_STEM
#: Memory of a partitioned stage per survivor it holds: its band rows, candidate pairs, and the signatures
#: and token sets of the pairs it verifies; measured at ~6 KB on the fork-heavy bench corpus (160k files,
#: P = 8: ~130 MB per LSH task above the process's own ~70 MB), whose candidate pairs grow with the forks.
BYTES_PER_FILE = 6 * 1024
DEFAULT_MEMORY_MB = 2048


#: Survivors from which the partitioned stages get at least one partition per worker: below it, one
#: partition's start-up (a pass over every shard's tables) costs more than a second core saves.
PARALLEL_FROM = 20_000


def partitions_for(survivors: int, memory_mb: int = DEFAULT_MEMORY_MB, workers: int = 1) -> int:
    """P for a corpus: enough hash-range partitions that one holds at most half the memory budget, and
    one per worker when the corpus is large enough to share (40k files, 2 workers: LSH 2.3 -> 1.3 s)."""
    need = math.ceil(survivors * BYTES_PER_FILE / (memory_mb * 2**20 / 2))
    if survivors >= PARALLEL_FROM:
        need = max(need, workers)
    return max(1, min(SLOTS, need))


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



def input_key(cfg: CurateConfig, shard_hashes: list[str]) -> str:
    """Identity of a curate run: the config and the shards' contents (not their names or order)."""
    return cfg.fingerprint(CURATE_VERSION, *sorted(shard_hashes))




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
    atomic_write_bytes(out_dir / DECONTAMINATION, b"".join(orjson.dumps(c) + b"\n" for c in removed))
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



def finalize(
    summaries: list[ShardSummary],
    cfg: CurateConfig,
    work_dir: Path,
    out_dir: Path,
    *,
    executor: Executor | None = None,
    partitions: int | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
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
        with LocalExecutor(1) if executor is None else _borrowed(executor) as ex:
            return _finalize(summaries, cfg, Path(work_dir), out_dir, key, ex, partitions, memory_mb)


class _borrowed:
    """An executor the caller owns: used, not closed."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def __enter__(self) -> Executor:
        return self.executor

    def __exit__(self, *exc: Any) -> None:
        pass


@dataclass
class _Dedup:
    """What the dedup stages decided: which ids survive, and where their groups are."""

    alive: np.ndarray
    removed: dict[str, int] = field(default_factory=dict)  # exact-dup / near-dup counts
    exact_files: list[Path] = field(default_factory=list)  # one Groups file per partition
    near_file: Path | None = None
    near_groups: int = 0
    near_info: dict[str, int] = field(default_factory=dict)


def _dedup(run: dd.Run, ex: Executor) -> _Dedup:
    """Ranks, then exact dedup and near-dedup over the run's partitions; `alive.npy` left for the output.
    Every stage's outputs stay in the run folder until the curation is done, so a rerun after a crash
    redoes only what has no output yet."""
    cfg, parts = run.cfg, list(range(run.partitions))
    dd.rank_keys(run)
    out = _Dedup(alive=np.ones(run.n, dtype=bool))
    if cfg.exact_dedup:
        ex.map(functools.partial(dd.exact_partition, run), parts, desc="exact dedup")
        out.exact_files = [run.output("exact", p) for p in parts]
        removed = np.concatenate([dd.Groups(**dd.load_npz(f)).removed() for f in out.exact_files])
        out.alive[removed] = False
        out.removed[stats.EXACT_DUP] = len(removed)
    dd._save_global(run, "alive-exact", out.alive)
    if cfg.near_dedup:
        infos = ex.map(functools.partial(dd.identical_partition, run), parts, desc="identical sets")
        lsh = np.zeros(run.n, dtype=bool)  # the LSH stage's ids: signed, alive, one of each identical set
        for s in range(len(run.shards)):
            lsh[run.reader(s).array("signed") + run.base[s]] = True
        lsh &= out.alive
        for p in parts:
            lsh[dd.load_npz(run.output("identical", p))["b"]] = False
        dd._save_global(run, "lsh", lsh)
        del lsh
        infos += ex.map(functools.partial(dd.lsh_partition, run), parts, desc="near dedup")
        out.near_info = dd.near_info(infos)
        out.near_file = run.path("near-groups.npz")
        if not out.near_file.is_file():
            groups = dd.components(run, [run.output(stage, p) for stage in ("identical", "lsh") for p in parts])
            dd._save_npz(out.near_file, members=groups.members, sizes=groups.sizes)
        groups = dd.Groups(**dd.load_npz(out.near_file))
        removed = groups.removed()
        out.alive[removed] = False
        out.removed[stats.NEAR_DUP] = len(removed)
        out.near_groups = len(groups)
    dd._save_global(run, "alive", out.alive)
    return out


def _range_bytes(run: dd.Run, kept_bytes: int, memory_mb: int) -> int:
    """Writer ranges: each holds its lines in memory (plus the list and the compressor's buffers, ~1.5x),
    so at most 1/8 of the budget and about 1/P of the kept bytes; never less than one output shard."""
    return max(run.cfg.shard_max_bytes, min(memory_mb * 2**20 // 8, -(-kept_bytes // run.partitions)))


def _prefetch(run: dd.Run, ex: Executor, memory_mb: int) -> ThreadPoolExecutor | None:
    """With the local executor and a corpus that one writer range will hold (whatever dedup removes), the
    range is written in this process: inflate its input meanwhile, on the cores the dedup stages leave
    idle (10k files: the write stage's 0.4 s of inflating moves under the dedup stages)."""
    if not isinstance(ex, LocalExecutor) or ex.workers < 2:
        return None
    dd.rank_keys(run)
    survivors_bytes = int(np.asarray(run.array("line_len")).sum()) if run.n else 0
    if survivors_bytes > _range_bytes(run, survivors_bytes, memory_mb):
        return None
    return output.prefetch(run, threads=ex.workers - 1)


def _write(run: dd.Run, ex: Executor, decided: _Dedup, out_dir: Path, memory_mb: int) -> list[tuple[str, str]]:
    """The kept records as output shards, by writer ranges (each shard's name and sha256, in order), and
    duplicate_clusters.jsonl."""
    kept_bytes = int(np.asarray(run.array("line_len"))[decided.alive].sum()) if run.n else 0
    plan = output.plan(run, _range_bytes(run, kept_bytes, memory_mb))
    # Each range reads what it needs from the input, or (routed) every input is read once and split into
    # per-range sections first. Reading costs an inflate of the input per range; routing costs an inflate,
    # the line split and a compress and an inflate of the kept lines, measured at ~3.3 input inflates on the
    # 40k-file bench corpus (route 4.4 s + write 2.1 s CPU vs 1.5 s an inflate): routed from four ranges on.
    routed = plan.ranges > 3
    if routed:
        ex.map(functools.partial(output.route_shard, run, plan_=plan), list(range(len(run.shards))), desc="route",
               sizes=list(run.counts))  # fmt: skip
    threads = max(1, ex.workers // max(1, plan.ranges))
    write = functools.partial(output.write_range, run, plan_=plan, out_dir=out_dir, routed=routed, threads=threads)
    clusters = functools.partial(output.cluster_partition, run, exact_files=decided.exact_files, near_file=decided.near_file)
    # the clusters file does not wait for the shards: both kinds of task share the workers
    tasks = [(write, r) for r in range(plan.ranges)] + [(clusters, p) for p in range(run.partitions)]
    done = ex.map(_call, tasks, desc="write")
    output.merge_clusters(done[plan.ranges :], out_dir / CLUSTERS)
    return [w for ws in done[: plan.ranges] for w in ws]


def _call(task: tuple[Any, Any]) -> Any:
    """One (stage function, item) pair: lets one map run the tasks of two stages side by side."""
    fn, item = task
    return fn(item)


def _finalize(
    summaries: list[ShardSummary], cfg: CurateConfig, work_dir: Path, out_dir: Path, key: str,
    ex: Executor, partitions: int | None, memory_mb: int,
) -> CurateResult:  # fmt: skip
    for s in summaries:
        if s.fingerprint != cfg.shard_fingerprint():
            raise ConfigError(f"{s.shard} was filtered with another config than this finalize's: rerun filter_shard")
        if not (Path(s.work) / DONE).is_file():
            raise DataError(f"intermediate files of {s.shard} are missing in {s.work}: rerun filter_shard for it")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_outputs(out_dir)
    t0 = time.perf_counter()
    n = sum(s.survivors for s in summaries)
    folder = work_dir / f"run-{key[:16]}"  # kept until done: a rerun picks up the stages that finished
    folder.mkdir(parents=True, exist_ok=True)
    run = dd.Run(folder, tuple(s.work for s in summaries), tuple(s.shard for s in summaries), tuple(s.sha256 for s in summaries),
                 tuple(s.survivors for s in summaries), cfg, partitions or partitions_for(n, memory_mb, ex.workers))  # fmt: skip
    ahead = _prefetch(run, ex, memory_mb)
    try:
        decided = _dedup(run, ex)
        t1 = time.perf_counter()
        written = _write(run, ex, decided, out_dir, memory_mb)
    finally:
        if ahead is not None:
            ahead.shutdown(cancel_futures=True)
            output.forget()
    if cfg.write_dropped:
        _write_dropped(run, summaries, out_dir, decided.exact_files, decided.near_file)
    dropped: Counter[str] = Counter(decided.removed)
    unknown: Counter[str] = Counter()
    for s in summaries:
        dropped.update(s.dropped)
        unknown.update(s.unknown_licenses)
    kept = int(decided.alive.sum())
    records_in = sum(s.records_in for s in summaries)
    stats.check_balance(records_in, kept, dropped)
    bad_shards = sorted((s.bad for s in summaries if s.bad is not None), key=lambda b: b.shard)
    set_aside = dict(Counter(b.reason for b in bad_shards))
    content_hash = hashlib.sha256(f"{CURATE_VERSION}:".encode() + "".join(h for _, h in written).encode()).hexdigest()
    exact_count = sum(len(dd.load_npz(f)["sizes"]) for f in decided.exact_files)
    near_groups, near_info, p_count = decided.near_groups, decided.near_info, run.partitions
    result = CurateResult(
        out_dir=str(out_dir),
        content_hash=content_hash,
        records_in=records_in,
        kept=kept,
        dropped=stats.ordered(dropped),
        shards=[name for name, _ in written],
        exact_dup_clusters=exact_count,
        near_dup_clusters=near_groups,
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
        "exact_dup_clusters": exact_count,
        "near_dup_clusters": near_groups,
        "near_dedup": near_info,
        **_steps_report(summaries, cfg, out_dir),
        "content_hash": content_hash,
        "config": cfg.fingerprint_fields(),
    }
    atomic_write_bytes(out_dir / STATS_JSON, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
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
    atomic_write_bytes(out_dir / STATS_MD, ("\n".join(lines).rstrip() + "\n").encode())
    shutil.rmtree(folder, ignore_errors=True)
    if kept == 0:  # the stats stay for a look; no marker, so nothing downstream takes this as a result
        raise DataError(
            f"nothing to publish from {len(summaries)} shards: {stats.summary_line(records_in, kept, dropped, set_aside)}: "
            f"check the input shards and the license and filter settings (counts in {out_dir / STATS_JSON})"
        )
    atomic_write_bytes(out_dir / SUCCESS, orjson.dumps({"key": key, "result": result.model_dump()}, option=orjson.OPT_INDENT_2))
    log.info(
        "curated %d -> %d records with P=%d (%.1fs dedup, %.1fs writing), near-dedup %s",
        records_in, kept, p_count, t1 - t0, time.perf_counter() - t1, near_info,
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



def _write_dropped(run: dd.Run, summaries: list[ShardSummary], out_dir: Path, exact_files: list[Path], near_file: Path | None) -> None:
    """dropped/<reason>/: the filter stage's files as they are, then exact and near copies per input shard."""
    root = out_dir / DROPPED
    for s in summaries:
        src = Path(s.work) / DROPPED
        if not src.is_dir():
            continue
        for reason_dir in sorted(src.iterdir()):
            for f in sorted(reason_dir.glob("*.json.gz")):
                (root / reason_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, root / reason_dir.name / f.name)
    base = run.base
    for reason, files in ((stats.EXACT_DUP, exact_files), (stats.NEAR_DUP, [near_file] if near_file else [])):
        removed = np.sort(np.concatenate([dd.Groups(**dd.load_npz(f)).removed() for f in files])) if files else np.zeros(0, np.int64)
        shard = np.searchsorted(base, removed, side="right") - 1
        for s in np.unique(shard).tolist():
            lines = output.removed_lines(run, s, removed[shard == s])
            with ShardWriter(root / reason, Path(summaries[s].work).name, max_records=run.cfg.shard_max_records,
                             compresslevel=run.cfg.compresslevel) as w:  # fmt: skip
                for line in lines:
                    w.write_line(line)


def map_shards(shards: list[Path], fn: Any, *, executor: Executor) -> list[ShardSummary]:
    """`fn` over the input shards, biggest first."""
    return executor.map(fn, shards, desc="curate shards", sizes=[p.stat().st_size for p in shards])


class _ShardJob:
    """Picklable `filter_shard` with its config bound, for process pools."""

    def __init__(self, cfg: CurateConfig, work_dir: Path) -> None:
        self.cfg, self.work_dir = cfg, work_dir
        # Built here, before a pool forks: forked workers inherit the steps (and numpy.random, imported
        # by the permutations) instead of each building them.
        step_of(cfg.redaction)
        step_of(cfg.decontamination)
        if cfg.near_dedup:
            permutations(cfg.dedup.num_perm, cfg.dedup.seed)

    def __call__(self, shard: Path) -> ShardSummary:
        return filter_shard(shard, self.cfg, self.work_dir)


def curate(
    in_dir: Path,
    out_dir: Path,
    cfg: CurateConfig,
    *,
    workers: int | None = None,
    work_dir: Path | None = None,
    keep_work: bool = False,
    progress: bool = False,
    partitions: int | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> CurateResult:
    """The local driver: `filter_shard` over the shards, then `finalize`, in one process pool."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise ConfigError(f"output folder {out_dir} is the input folder: pass another OUT_DIR")
    shards = list_shards(in_dir)
    key = input_key(cfg, [file_sha256(p) for p in shards])
    done = completed(out_dir, key)
    if done is not None:
        log.info("%s is already curated from these shards with this config: nothing to do", out_dir)
        return done
    work = Path(work_dir) if work_dir is not None else out_dir / "_work"
    made_out = not out_dir.exists()
    t0 = time.perf_counter()
    try:
        with writing(out_dir if work_dir is None else work, "OUT_DIR (or --work-dir)"), LocalExecutor(workers, progress=progress) as ex:
            job = _ShardJob(cfg, work)
            summaries = map_shards(shards, job, executor=ex)
            log.info("filtered %d shards in %.1fs with %d workers", len(shards), time.perf_counter() - t0, ex.workers)
            result = finalize(summaries, cfg, work, out_dir, executor=ex, partitions=partitions, memory_mb=memory_mb)
    except BaseException:
        if work_dir is None and not keep_work:  # a given --work-dir is kept: a rerun reuses its finished shards
            shutil.rmtree(work, ignore_errors=True)
            if made_out and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    if work_dir is None and not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


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
    partitions: int | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> CurateResult:
    """Near-dedup alone, with the `curate` driver."""
    full = CurateConfig.dedup_only(cfg, strict=strict)
    return curate(in_dir, out_dir, full, workers=workers, work_dir=work_dir, keep_work=keep_work, progress=progress,
                  partitions=partitions, memory_mb=memory_mb)  # fmt: skip
