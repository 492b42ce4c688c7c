"""Scale-out bench: cost of `codeparrot dedup` and `codeparrot curate` against corpus size, and two peers.

1. Corpora of --sizes files (cached under --work), built from `shared/bench/make_corpus.py` plus forks
   (the recipe below).
2. For each size, command (--commands) and partition count (--partitions; left out where the CLI has no
   `--partitions` flag, and always for --baseline-tree), `codeparrot CMD IN OUT --workers W [--licenses
   any] [--partitions P]` runs as its own subprocess under a tiny wrapper that reports wall time, CPU time
   (user + system of every descendant) and the peak RSS of the largest process (Linux `ru_maxrss` of
   RUSAGE_CHILDREN: the largest waited-for descendant, so process-pool workers count; the wrapper is a
   child subreaper, so orphans such as a forkserver are waited for and count too). Best of --repeat
   (fastest wall and its CPU; the highest RSS of the runs).
3. A least-squares line per (command, code, P) of RSS, CPU and wall time against the file count: the
   growth per file, and the extrapolation to 20M and 100M files.
4. With --peers, on the smallest size: CodeParrot's reference (`dedup_bench.py --reference`, datasketch),
   `codeparrot dedup`, and datatrove's 4-stage MinHash pipeline, side by side: time, and residual pairs
   and wrongly removed files scored by `dedup_bench.py` (its exact-Jaccard ground truth, computed first
   and cached beside the corpus, is not timed).

Prints progress to stderr, then markdown tables and one JSON line with everything to stdout.

--baseline-tree runs the same commands with an older checkout: `python -c "sys.path.insert(0, TREE); from
codeparrot.cli import main; ..."`, the tree ahead of the venv's editable install of this one (checked: the
bench prints where `codeparrot` is imported from and stops if it is not the tree). `_native*.so` is not
tracked, so build the tree's C kernel, or the baseline runs the slower NumPy path (the bench warns).

datatrove (`pip install -e '.[bench]'`): MinhashDedupSignature -> MinhashDedupBuckets -> MinhashDedupCluster
-> MinhashDedupFilter (+ JsonlWriter of the kept records), one LocalPipelineExecutor each, workers = 2 and
tasks = 2 (stages 1 and 4, which must match), 21 (stage 2: one per bucket) and 1 (stage 3), reading the
shards with JsonlReader(text_key="content", id = repo_name/path). Closest settings to Jaccard 0.85 over
token sets: n_grams=1 over CodeParrot's own tokens (a WordTokenizer passed as `language`, split on
[^A-Za-z_0-9]; also what keeps it offline: the default English tokenizer needs NLTK's punkt download),
text normalisation off (lowercasing, digit folding and punctuation removal would change the sets), and our
banding, 21 buckets x 6 hashes of 126 (P(candidate) = 1 - (1 - J^6)^21: 0.99995 at J = 0.85). datatrove
does not verify candidates, so at 21 x 6 every pair it meets at J ~ 0.6-0.8 is removed too;
--datatrove-banding 9x14 puts its S-curve's midpoint at (1/9)^(1/14) = 0.855 instead (fewer wrong
removals, more missed pairs). xxhash 64 as its default, through a shim: datatrove 0.10.1 hashes str, which
xxhash >= 4 (pinned here by datasets) refuses; its own extra pins xxhash < 4, which hashed UTF-8 bytes.

Corpus recipe (deterministic: fixed seeds and hashes, no dependence on worker count or order):
- base: `make_corpus.py OUT STDLIB PURELIB --max-files B --mutate-seed 1 --mutate-frac 0.05`, the
  Python files installed here plus 5% near-duplicate forks; B = 9,524 gives 10,000 files in shards of
  2,000 records (about 33 MiB of text, 8 MiB gzipped each). A size below the base's is such a corpus
  with --max-files round(N / 1.05).
- a size N at or above the base is round(N / base) copies of it: copy 0 is the base itself; copy j >= 1
  keeps the base's shards (same records per shard, one output shard per base shard) and gives each record
  the repo_name `copyJJJ/<repo_name>` and one of three fates, drawn from a hash of (seed, j, record):
    * 15% exact copies (content unchanged),
    * 15% near-duplicates: make_corpus.forks' edits (0-3 identifiers renamed consistently with a `_x`
      suffix, up to 1 in 20 lines dropped or duplicated, tabs for 4 spaces half the time),
    * 70% distinct: each identifier-like token ([A-Za-z_][A-Za-z0-9_]*, the near-dedup tokens that start
      with a letter; not keywords, builtins, self, cls or dunders) is renamed in 90% of cases, consistently
      across the whole copy, to a pronounceable random name (2-4 syllables by its length, case style and
      edge underscores kept). Structure, keywords, numbers and punctuation stay, so files look like code
      and the token-set Jaccard to the original falls to a median of 0.14 (99% below 0.37): a new file, not a
      duplicate. As the renaming is one map per copy, near-duplicate pairs inside the base stay pairs
      inside a copy.
  So each base file gets a duplicate cluster that grows with the number of copies, and about 63% of a
  copy's files are new: `codeparrot dedup` keeps 90% of the 1,500-file base, 76% of 3,000 files, 71% of
  6,000, tending to ~63% for large N.
- copies are built in parallel (--workers processes) from a template of the base (each record as ids
  into one vocabulary of JSON-escaped pieces), streamed one shard at a time: a record is a gather through
  the base's or the copy's renamed vocabulary, not a regex pass; shards are gzip (ISA-L level 2 when
  present: ~9.5 MiB a shard). Each copy is built once, in `WORK/corpora/copies-*/copy-JJJ/`, and corpora
  are folders of hard links to them. On 2 busy cores: the base ~25 s, the template ~20 s per run that
  builds copies, then ~25 s per 100k files (640k from nothing: ~3.5 min). A finished folder has a
  `_SUCCESS` file, written last; delete WORK/corpora to rebuild (e.g. after installing packages, which
  changes the files make_corpus finds).

    .venv/bin/python bench/scale.py --work /tmp/scale                      # 10k-640k, dedup and curate, P = 1, 8
    .venv/bin/python bench/scale.py --work /tmp/scale --sizes 10000 --peers --commands dedup
    .venv/bin/python bench/scale.py --work /tmp/scale --base-files 1429 --sizes 3000,6000 --peers   # a quick try
    .venv/bin/python bench/scale.py --work /tmp/scale --sizes 10000,40000,160000,640000 --corpus-only
    git -C /work/main worktree add /tmp/old 3b85630 && (cd /tmp/old && /work/main/.venv/bin/python setup.py build_ext --inplace)
    .venv/bin/python bench/scale.py --work /tmp/scale --baseline-tree /tmp/old   # also the old code, no --partitions
"""

from __future__ import annotations

import argparse
import builtins
import gzip
import hashlib
import itertools
import json
import keyword
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from dedup import kept_keys, last_json  # bench/dedup.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = ROOT.parent / "shared" / "bench"
TARGETS = (20_000_000, 100_000_000)  # extrapolation points, files

# ---------------------------------------------------------------------------------------------------------
# Corpus recipe (see the module docstring). Any change here changes RECIPE's id, hence the cache folders.
SEED = 1  # --mutate-seed of make_corpus, and the seed of every fork copy's draws
MUTATE_FRAC = 0.05  # make_corpus's default share of near-duplicate forks in the base
EXACT_SHARE, NEAR_SHARE = 0.15, 0.15  # fates of a record in copy j >= 1; the rest (70%) is distinct
RENAME_SHARE = 0.9  # identifiers renamed in a distinct record: token-set Jaccard to the original, median 0.14
RECIPE = {"version": 2, "seed": SEED, "mutate_frac": MUTATE_FRAC, "exact": EXACT_SHARE, "near": NEAR_SHARE,
          "rename": RENAME_SHARE}

PIECE = re.compile(r"([A-Za-z0-9_]+)")  # runs of near-dedup token characters (dedup_bench's NON_ALPHA split)
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FORK_NAME = re.compile(r"[a-z_][a-z0-9_]{3,}")  # what make_corpus.forks picks to rename
KEEP = frozenset([*keyword.kwlist, *keyword.softkwlist, *dir(builtins), "self", "cls"])  # never renamed
# 64 consonant-vowel syllables: no Python keyword can be spelled from them (6 bits of a hash each)
SYLLABLES = np.frombuffer("".join(c + v for c in "bdfghklmnprstvz" for v in "aeiou")[:128].encode(), np.uint8).reshape(64, 2)


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: a stable, well-mixed uint64 hash (wraps modulo 2**64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def unit(h: np.ndarray) -> np.ndarray:
    """uint64 hashes as uniform floats in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def done(folder: Path) -> dict | None:
    marker = folder / "_SUCCESS"
    return json.loads(marker.read_text()) if marker.exists() else None


def finish(tmp: Path, folder: Path, info: dict) -> dict:
    """Write the marker last, then move the folder into place: a folder with `_SUCCESS` is complete."""
    (tmp / "_SUCCESS").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return info


def recipe_id(bench_dir: Path, base_files: int) -> str:
    builder = hashlib.sha256((bench_dir / "make_corpus.py").read_bytes()).hexdigest()[:12]
    blob = json.dumps({**RECIPE, "builder": builder, "base_files": base_files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def make_corpus(bench_dir: Path, folder: Path, max_files: int) -> dict:
    """`make_corpus.py` over this Python's stdlib and purelib (as bench/dedup.py calls it), cached."""
    if (info := done(folder)) is not None:
        return info
    t = time.perf_counter()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    paths = sysconfig.get_paths()
    proc = subprocess.run([sys.executable, str(bench_dir / "make_corpus.py"), str(tmp), paths["stdlib"], paths["purelib"],
                           "--max-files", str(max_files), "--mutate-seed", str(SEED), "--mutate-frac", str(MUTATE_FRAC)],
                          capture_output=True, text=True, check=True)
    records = int(proc.stdout.split()[0])  # "N records, X MiB -> OUT"
    shards = sorted(tmp.glob("*.json.gz"))
    with gzip.open(shards[0], "rb") as fh:
        shard_records = sum(1 for _ in fh)
    mib = float(proc.stdout.split()[2])
    return finish(tmp, folder, {"records": records, "content_mib": mib, "shards": len(shards),
                                "shard_records": shard_records, "seconds": round(time.perf_counter() - t, 1)})


@dataclass
class ShardTemplate:
    ids: np.ndarray  # int32: vocabulary id of each piece, all records of the shard end to end
    bounds: np.ndarray  # int64: record k is ids[bounds[k]:bounds[k + 1]]
    meta: list[tuple[str, str, str]]  # repo_name, path, license
    first: int  # index of the shard's first record in the base


@dataclass
class Template:
    """The base corpus as ids into one vocabulary of pieces (token runs and what lies between them)."""

    esc: list[bytes]  # each piece JSON-escaped (UTF-8): escaping pieces and joining is escaping the join
    ulen: np.ndarray  # UTF-8 length of each piece, for `size`
    renamable: np.ndarray  # identifiers a distinct copy renames
    fork_name: np.ndarray  # identifiers make_corpus.forks may rename
    vhash: np.ndarray  # uint64, a stable hash of each piece
    nsyl: np.ndarray  # syllables of its new name, by its length
    lead: np.ndarray  # leading underscores kept
    trail: np.ndarray  # trailing underscores kept
    style: np.ndarray  # 0 lower, 1 Capitalised, 2 UPPER
    shards: list[ShardTemplate]


def template_shard(shard: str) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """One base shard as ids into its own vocabulary (a worker's part of `make_template`)."""
    vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    chunks, bounds, meta = [], [0], []
    with gzip.open(shard, "rb") as fh:
        for line in fh:
            r = orjson.loads(line)
            pieces = PIECE.split(r["content"])
            chunks.append(np.fromiter(map(vocab.__getitem__, pieces), np.int32, len(pieces)))
            bounds.append(bounds[-1] + len(pieces))
            meta.append((r["repo_name"], r["path"], r["license"]))
    return list(vocab), np.concatenate(chunks), np.array(bounds, np.int64), meta


def make_template(base: Path, workers: int) -> Template:
    """The base's shards templated in parallel, their vocabularies merged into one."""
    vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    shards, first = [], 0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for words, ids, bounds, meta in pool.imap(template_shard, map(str, sorted(base.glob("*.json.gz")))):
            remap = np.fromiter(map(vocab.__getitem__, words), np.int32, len(words))
            shards.append(ShardTemplate(remap[ids], bounds, meta, first))
            first += len(meta)
    words = list(vocab)
    n = len(words)
    ulen, vhash = np.zeros(n, np.int64), np.zeros(n, np.uint64)
    renamable, fork_name = np.zeros(n, bool), np.zeros(n, bool)
    nsyl, lead, trail, style = (np.zeros(n, np.int64) for _ in range(4))
    esc = []
    for i, w in enumerate(words):
        raw = w.encode("utf-8", "surrogatepass")
        esc.append(orjson.dumps(w)[1:-1])
        ulen[i] = len(raw)
        if not IDENT.fullmatch(w):
            continue
        fork_name[i] = FORK_NAME.fullmatch(w) is not None
        core = w.strip("_")
        if not core or w in KEEP or (w.startswith("__") and w.endswith("__")):
            continue
        renamable[i] = True
        vhash[i] = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
        nsyl[i] = 2 if len(core) <= 3 else 3 if len(core) <= 7 else 4
        lead[i], trail[i] = len(w) - len(w.lstrip("_")), len(w) - len(w.rstrip("_"))
        style[i] = 2 if core.isupper() else 1 if core[0].isupper() else 0
    return Template(esc, ulen, renamable, fork_name, vhash, nsyl, lead, trail, style, shards)


def copy_vocabulary(t: Template, j: int) -> list[bytes]:
    """Copy j's vocabulary: RENAME_SHARE of the renamable identifiers get a new name, the same in every file."""
    h = mix64(t.vhash ^ mix64(np.uint64(SEED * 1_000_003 + j)))
    idx = np.flatnonzero(t.renamable & (unit(mix64(h)) < RENAME_SHARE))
    hs = h[idx]
    letters = SYLLABLES[(hs[:, None] >> (np.uint64(6) * np.arange(4, dtype=np.uint64))) & np.uint64(63)]  # (k, 4, 2)
    letters = letters.reshape(len(idx), 8)
    style = t.style[idx]
    letters[style == 2] -= 32  # UPPER_CASE stays upper
    letters[style == 1, 0] -= 32  # CamelCase stays capitalised
    raw = letters.tobytes()
    table = list(t.esc)
    for k, (i, n, a, b) in enumerate(zip(idx.tolist(), t.nsyl[idx].tolist(), t.lead[idx].tolist(), t.trail[idx].tolist(), strict=True)):
        table[i] = b"_" * a + raw[8 * k : 8 * k + 2 * n] + b"_" * b
    return table


def rename_word(content: str, old: str, new: str) -> str:
    """`re.sub(rf"\\b{old}\\b", new, content)`, 15x faster: a leading `\\b` defeats the regex's literal search."""

    def replace(m: re.Match) -> str:
        i = m.start()
        return m.group() if i and (content[i - 1].isalnum() or content[i - 1] == "_") else new

    return re.sub(rf"{old}\b", replace, content)


def near_edit(content: str, names: list[bytes], rng) -> str:
    """make_corpus.forks' edits, with its draws: renames (of `names`, ASCII), dropped/duplicated lines, tabs."""
    for _ in range(rng.randint(0, 3)):  # rename identifiers consistently
        if names:
            old = rng.choice(names).decode()
            content = rename_word(content, old, old + "_" + rng.choice("xyzw"))
    lines = content.split("\n")
    for _ in range(rng.randint(0, max(1, len(lines) // 20))):  # drop or duplicate lines
        if len(lines) > 2:
            i = rng.randrange(len(lines))
            if rng.random() < 0.5:
                del lines[i]
            else:
                lines.insert(i, lines[i])
    if rng.random() < 0.5:
        lines = [line.replace("    ", "\t") for line in lines]
    return "\n".join(lines)


def gather(buf: np.ndarray, src: np.ndarray, length: np.ndarray) -> bytes:
    """The pieces buf[src[k]:src[k] + length[k]] end to end, vectorised: idx = cumsum of +1 steps and jumps."""
    keep = length > 0
    src, length = src[keep], length[keep]
    end = np.cumsum(length)
    step = np.ones(int(end[-1]), np.int32)
    step[0] = src[0]
    step[(end - length)[1:]] = src[1:] - (src[:-1] + length[:-1] - 1)  # jump from a piece's last byte to the next's first
    return buf[np.cumsum(step, dtype=np.int32)].tobytes()


def open_gzip_writer(path: Path):
    """A gzip writer with no time in the header, so a rebuilt copy has the same bytes."""
    try:  # ISA-L: ~5x zlib's speed at a similar size; the files are plain gzip either way
        from isal import igzip

        return igzip.IGzipFile(path, "wb", compresslevel=2, mtime=0)
    except ImportError:
        return gzip.GzipFile(path, "wb", compresslevel=6, mtime=0)


_TEMPLATE: Template | None = None  # set in the parent before the pool forks, shared copy-on-write


def build_copy(job: tuple[int, str]) -> tuple[int, int, int]:
    """Write copy j of the base into `folder`: one shard per base shard. Returns (j, records, content bytes)."""
    import random

    j, folder = job
    t = _TEMPLATE
    assert t is not None
    out = Path(folder)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    table = copy_vocabulary(t, j)
    # one table of 2V pieces: copy j's vocabulary, then the base's (id + V); a piece is (offset, length) in buf
    v = len(table)
    pieces = table + t.esc
    buf = np.frombuffer(b"".join(pieces), np.uint8)
    length = np.fromiter(map(len, pieces), np.int64, 2 * v)
    offset = np.cumsum(length) - length
    assert len(buf) < 2**31, "vocabulary too large for int32 gather indices"
    # UTF-8 length of each piece for `size`; renamable pieces are ASCII, renamed or not
    ulen = np.concatenate([np.where(t.renamable, length[:v], t.ulen), t.ulen])
    records = size_total = 0
    for s, sh in enumerate(t.shards):
        n = len(sh.meta)
        fate = unit(mix64(np.uint64(SEED * 7_919 + j * 1_000_000_007) + np.arange(sh.first, sh.first + n, dtype=np.uint64)))
        distinct = fate >= EXACT_SHARE + NEAR_SHARE
        near = (fate >= EXACT_SHARE) & ~distinct
        with open_gzip_writer(tmp / f"file-{s:012d}.json.gz") as fh:
            for a in range(0, n, 128):  # chunks of records bound the index arrays to a few MB
                b = min(n, a + 128)
                p0, p1 = sh.bounds[a], sh.bounds[b]
                sel = sh.ids[p0:p1]
                tid = sel + np.repeat(np.where(distinct[a:b], 0, v), np.diff(sh.bounds[a : b + 1]))
                data = gather(buf, offset[tid], length[tid])
                end = np.cumsum(length[tid])
                cuts = np.concatenate([[0], end[sh.bounds[a + 1 : b + 1] - p0 - 1]]).tolist()
                sizes = np.add.reduceat(ulen[tid], sh.bounds[a:b] - p0).tolist()
                for k in range(b - a):
                    repo, path, lic = sh.meta[a + k]
                    repo = f"copy{j:03d}/{repo}"
                    esc = data[cuts[k] : cuts[k + 1]]
                    if near[a + k]:
                        rec_ids = sel[sh.bounds[a + k] - p0 : sh.bounds[a + k + 1] - p0]
                        names = [t.esc[i] for i in np.unique(rec_ids[t.fork_name[rec_ids]]).tolist()]  # in id order
                        rng = random.Random(f"{SEED}:{j}:{sh.first + a + k}")
                        content = near_edit(orjson.loads(b'"' + esc + b'"'), names, rng)
                        size = len(content.encode("utf-8", "surrogatepass"))
                        line = orjson.dumps({"repo_name": repo, "path": path, "copies": 1, "size": size,
                                             "content": content, "license": lic}, option=orjson.OPT_APPEND_NEWLINE)
                    else:
                        size = sizes[k]
                        line = b'{"repo_name":%b,"path":%b,"copies":1,"size":%d,"content":"%b","license":%b}\n' % (
                            orjson.dumps(repo), orjson.dumps(path), size, esc, orjson.dumps(lic))
                    fh.write(line)
                    size_total += size
        records += n
    finish(tmp, out, {"copy": j, "records": records, "content_mib": round(size_total / 2**20, 1)})
    return j, records, size_total


def build_corpus(work: Path, bench_dir: Path, base_files: int, size: int, workers: int) -> tuple[Path, dict]:
    """The corpus of about `size` files (cached), and its description."""
    global _TEMPLATE
    rid = recipe_id(bench_dir, base_files)
    corpora = work / "corpora"
    base = corpora / f"base-{base_files}-{rid}"
    info = make_corpus(bench_dir, base, base_files)
    if size < info["records"]:  # a smaller make_corpus corpus of its own
        folder = corpora / f"direct-{size}-{rid}"
        small = make_corpus(bench_dir, folder, max(1, round(size / (1 + MUTATE_FRAC))))
        return folder, {**small, "recipe": "make_corpus", "copies": 0}
    copies = max(1, round(size / info["records"]))
    folder = corpora / f"files-{copies * info['records']}-{rid}"
    if (have := done(folder)) is not None:
        return folder, have
    t = time.perf_counter()
    pool_dir = corpora / f"copies-{base_files}-{rid}"
    todo = [(j, str(pool_dir / f"copy-{j:03d}")) for j in range(1, copies) if done(pool_dir / f"copy-{j:03d}") is None]
    if todo:
        log(f"building {len(todo)} fork copies of the {info['records']:,}-file base ({workers} processes)")
        tt = time.perf_counter()
        _TEMPLATE = make_template(base, workers)
        log(f"template of the base: {len(_TEMPLATE.esc):,} distinct pieces in {time.perf_counter() - tt:.1f} s")
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for n, (j, _, _) in enumerate(pool.imap_unordered(build_copy, todo), 1):
                log(f"copy {j} written ({n}/{len(todo)}, {time.perf_counter() - tt:.0f} s)")
        _TEMPLATE = None
    built = time.perf_counter() - t
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = [base] + [pool_dir / f"copy-{j:03d}" for j in range(1, copies)]
    k, mib = 0, 0.0
    for src in sources:
        mib += done(src)["content_mib"]
        for shard in sorted(src.glob("*.json.gz")):
            dest = tmp / f"file-{k:012d}.json.gz"
            try:
                os.link(shard, dest)  # the same bytes, no space: a copy is shared by every size that uses it
            except OSError:
                shutil.copyfile(shard, dest)
            k += 1
    desc = {"records": copies * info["records"], "content_mib": round(mib, 1), "shards": k,
            "shard_records": info["shard_records"], "copies": copies, "recipe": RECIPE,
            "copies_built": len(todo), "build_s": round(built, 1)}
    return folder, finish(tmp, folder, desc)


# ---------------------------------------------------------------------------------------------------------
# Measurement: each command under a wrapper that reads its children's rusage once they are all waited for.
WRAPPER = r"""
import ctypes, json, os, resource, subprocess, sys, time
try:  # PR_SET_CHILD_SUBREAPER: orphaned descendants (a forkserver, ...) are re-parented here and counted
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
except Exception:
    pass
t = time.perf_counter()
rc = subprocess.Popen(sys.argv[2:]).wait()
wall = time.perf_counter() - t
while True:  # wait for the adopted orphans too: only waited-for processes enter RUSAGE_CHILDREN
    try:
        os.wait()
    except ChildProcessError:
        break
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss}, fh)
sys.exit(rc)
"""


def measure(cmd: list[str], logfile: Path, cwd: Path) -> dict:
    """Wall and CPU seconds and peak RSS (MiB) of the largest process of `cmd`'s tree; output to `logfile`."""
    result = logfile.with_suffix(".rusage.json")
    result.unlink(missing_ok=True)  # never read a previous run's figures
    with open(logfile, "w") as out:
        proc = subprocess.run([sys.executable, "-c", WRAPPER, str(result), *cmd], stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    r = json.loads(result.read_text()) if result.exists() else {"rc": proc.returncode, "wall_s": 0, "cpu_s": 0, "maxrss_kib": 0}
    m = {"wall_s": round(r["wall_s"], 2), "cpu_s": round(r["cpu_s"], 2), "rss_mib": round(r["maxrss_kib"] / 1024, 1), "rc": r["rc"]}
    if r["rc"] != 0:
        tail = logfile.read_text(errors="replace")[-3000:]
        log(f"FAILED ({r['rc']}): {' '.join(cmd)}\n{tail}")
    return m


def tree_main(tree: Path) -> list[str]:
    """The `codeparrot` command of an older checkout: its package first on sys.path, ahead of the editable install."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from codeparrot.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def check_tree(tree: Path) -> dict:
    """Where the baseline's modules come from, so a run cannot silently use the editable install's."""
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); import codeparrot, codeparrot.curate.pipeline as p, "
            "codeparrot.curate.minhash as m; print(codeparrot.__file__); print(p.__file__); print(m.NATIVE is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tree).stdout.split("\n")
    init, pipeline, native = out[0], out[1], out[2] == "True"
    log(f"baseline imports codeparrot from {init}")
    for f in (init, pipeline):
        if not Path(f).resolve().is_relative_to(tree.resolve()):
            sys.exit(f"--baseline-tree {tree}: codeparrot comes from {f}, not from the tree")
    if not native:
        log(f"warning: the baseline has no C kernel (codeparrot/curate/_native*.so) and runs the slower NumPy path; "
            f"build it: (cd {tree} && {sys.executable} setup.py build_ext --inplace)")
    return {"path": str(tree), "codeparrot": init, "native_kernel": native}


def has_flag(cli: list[str], command: str, flag: str) -> bool:
    return flag in subprocess.run([*cli, command, "--help"], capture_output=True, text=True).stdout


def codeparrot_args(command: str, corpus: Path, out: Path, workers: int, partitions: int | None) -> list[str]:
    args = [command, str(corpus), str(out), "--workers", str(workers)]
    if command == "curate":
        args += ["--licenses", "any"]  # every record reaches the heuristics and both dedups
    if partitions is not None:
        args += ["--partitions", str(partitions)]
    return args


def best(runs: list[dict]) -> dict:
    """The fastest run's time and CPU, the highest peak RSS of all (the conservative figure)."""
    ok = [r for r in runs if r["rc"] == 0] or runs
    fastest = min(ok, key=lambda r: r["wall_s"])
    return {"wall_s": fastest["wall_s"], "cpu_s": fastest["cpu_s"], "rss_mib": max(r["rss_mib"] for r in ok),
            "runs_wall_s": [r["wall_s"] for r in runs], "failed": sum(r["rc"] != 0 for r in runs)}


# ---------------------------------------------------------------------------------------------------------
# datatrove's MinHash pipeline, run by `scale.py --datatrove-run IN OUT` in its own process.
def datatrove_settings(banding: str) -> dict:
    bands, rows = map(int, banding.lower().split("x"))
    return {"n_grams": 1, "num_buckets": bands, "hashes_per_bucket": rows, "hash": "xxhash, 64 bit",
            "tokens": "CodeParrot's: split on [^A-Za-z_0-9], case and digits kept (a WordTokenizer given as language)",
            "text_norm": "all off", "seed": 1}


def xxh64(data: str | bytes) -> int:
    """datatrove's xxhash64 for xxhash >= 4 (pinned here by datasets), which refuses str; datatrove's own
    `processing` extra pins xxhash < 4, which hashed a str as its UTF-8 bytes: so does this, same values."""
    import xxhash

    return xxhash.xxh64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)


def run_datatrove(corpus: Path, out: Path, workers: int, banding: str) -> None:
    """Signatures -> buckets -> clusters -> filter, each a LocalPipelineExecutor; kept records in OUT/output."""
    import datatrove.utils.hashes.xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    datatrove.utils.hashes.xxhash.xxhash64 = xxh64  # before the steps pick their hash function
    NON_ALPHA = re.compile("[^A-Za-z_0-9]")

    class CodeTokens(WordTokenizer):
        """CodeParrot's tokens (dedup_bench.tokens): offline, unlike the default English one (NLTK's punkt)."""

        def word_tokenize(self, text: str) -> list[str]:
            return [t for t in NON_ALPHA.split(text) if t]

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    def record(self, data: dict, path: str, id_in_file: int) -> dict:
        return {"text": data.pop("content"), "id": f"{data['repo_name']}/{data['path']}", "metadata": data}

    bands, rows = map(int, banding.lower().split("x"))
    # n_grams=1 over CodeParrot's tokens: min-hashes of the token set (a repeated token hashes the same);
    # no normalisation, so the sets are dedup_bench's exactly. 21 x 6 is our banding for J = 0.85.
    config = MinhashConfig(n_grams=1, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                           norm_config=TextNormConfig(lowercase=False, norm_whitespace=False, remove_punctuation=False,
                                                      norm_unicode_diacritics=False, norm_numbers=False),
                           hash_config=HashConfig(precision=64, hash_fc="xxhash"))

    def reader() -> JsonlReader:
        return JsonlReader(str(corpus), glob_pattern="*.json.gz", recursive=False, text_key="content", adapter=record)

    sigs, buckets, remove, logs = out / "signatures", out / "buckets", out / "remove_ids", out / "logs"
    stage1 = LocalPipelineExecutor([reader(), MinhashDedupSignature(str(sigs), config=config, language=CodeTokens())],
                                   tasks=workers, workers=workers, logging_dir=str(logs / "1"))
    # stage 2's tasks must be a multiple of the bucket count: one per bucket, `workers` at a time
    stage2 = LocalPipelineExecutor([MinhashDedupBuckets(str(sigs), str(buckets), config=config)],
                                   tasks=bands, workers=workers, logging_dir=str(logs / "2"), depends=stage1)
    stage3 = LocalPipelineExecutor([MinhashDedupCluster(str(buckets), str(remove), config=config)],
                                   tasks=1, workers=1, logging_dir=str(logs / "3"), depends=stage2)
    # stage 4 reads the same files with the same tasks as stage 1: its ranks are the .remove files' ids
    stage4 = LocalPipelineExecutor([reader(), MinhashDedupFilter(str(remove)),
                                    JsonlWriter(str(out / "output"), output_filename="${rank}.json.gz", expand_metadata=True)],
                                   tasks=workers, workers=workers, logging_dir=str(logs / "4"), depends=stage3)
    stage4.run()


def peers(corpus: Path, work: Path, args, cli: list[str], partitions: int | None) -> dict:
    """Reference, ours and datatrove on one corpus: time and dedup_bench's scores of what each keeps."""
    bench = [sys.executable, str(args.bench_dir / "dedup_bench.py"), str(corpus), "--procs", str(args.workers)]
    log("ground truth (exact Jaccard of every pair; cached beside the corpus, not timed)")
    subprocess.run(bench, check=True, capture_output=True)
    runs = work / "runs"
    result: dict[str, dict] = {}

    def score(kept_dir: Path, tag: str) -> dict:
        keys = runs / f"{tag}.kept.txt"
        kept_keys(kept_dir, keys)
        return last_json(subprocess.run([*bench, "--kept", str(keys)], capture_output=True, text=True, check=True).stdout)

    systems = {
        "codeparrot-reference": lambda out: [*bench, "--reference"],
        "codeparrot dedup": lambda out: [*cli, *codeparrot_args("dedup", corpus, out, args.workers, partitions)],
        "datatrove": lambda out: [sys.executable, str(Path(__file__).resolve()), "--datatrove-run", str(corpus), str(out),
                                  "--workers", str(args.workers), "--datatrove-banding", args.datatrove_banding],
    }
    for name, make in systems.items():
        tag = "peer-" + name.replace(" ", "-")
        measured, scores = [], None
        for i in range(args.repeat):
            out = runs / f"{tag}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            log(f"peer {name}, run {i + 1}/{args.repeat}")
            m = measure(make(out), runs / f"{tag}-{i}.log", cwd=work)
            measured.append(m)
            if m["rc"] == 0 and scores is None:
                if name == "codeparrot-reference":
                    scores = last_json((runs / f"{tag}-{i}.log").read_text())
                else:
                    scores = score(out / "output" if name == "datatrove" else out, tag)
            shutil.rmtree(out, ignore_errors=True)
        result[name] = {**best(measured), **{k: v for k, v in (scores or {}).items() if k != "system"}}
        log(f"peer {name}: {result[name]['wall_s']} s, residual {result[name].get('residual_pairs')}, "
            f"wrong {result[name].get('wrong_removed')}")
    return result


# ---------------------------------------------------------------------------------------------------------
def fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y against x."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def report(rows: list[dict], fits: list[dict], peer: dict | None) -> str:
    lines = ["| files | MiB | command | code | P | wall s | CPU s | peak RSS MiB (largest process) |",
             "|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['files']:,} | {r['content_mib']:,.0f} | {r['command']} | {r['code']} | {r['partitions'] or '-'} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_mib']:,.0f} |" + (" FAILED" if r["failed"] else ""))
    if fits:
        lines += ["", "Least-squares lines against the file count (R² of RSS; 2 sizes fit exactly, say nothing of the shape), "
                  "extrapolated:", "",
                  "| command | code | P | sizes | RSS KiB/file | RSS MiB at 0 | R² | CPU ms/file | wall ms/file | "
                  "RSS GiB at 20M | at 100M | CPU h at 20M | at 100M | wall h at 20M | at 100M |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in fits:
            e20, e100 = f["at"][str(TARGETS[0])], f["at"][str(TARGETS[1])]
            lines.append(f"| {f['command']} | {f['code']} | {f['partitions'] or '-'} | {f['points']} | {f['rss_kib_per_file']:.2f} | "
                         f"{f['rss_mib_intercept']:,.0f} | {f['rss_mib']['r2']:.2f} | {f['cpu_ms_per_file']:.3f} | {f['wall_ms_per_file']:.3f} | "
                         f"{e20['rss_gib']:,.1f} | {e100['rss_gib']:,.1f} | {e20['cpu_h']:,.1f} | {e100['cpu_h']:,.1f} | "
                         f"{e20['wall_h']:,.1f} | {e100['wall_h']:,.1f} |")
    if peer:
        lines += ["", f"Peers on {peer['files']:,} files:", "",
                  "| system | wall s | CPU s | peak RSS MiB | kept | removed | residual pairs | wrongly removed |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, p in peer["systems"].items():
            lines.append(f"| {name} | {p['wall_s']:.1f} | {p['cpu_s']:.1f} | {p['rss_mib']:,.0f} | {p.get('kept', '?')} | "
                         f"{p.get('removed', '?')} | {p.get('residual_pairs', '?')} | {p.get('wrong_removed', '?')} |")
        lines.append(f"\n(true pairs at J >= 0.85: {next(iter(peer['systems'].values())).get('true_pairs', '?')}; "
                     f"datatrove {peer['datatrove']['version']}: {peer['datatrove']['settings']})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,40000,160000,640000", help="corpus sizes, files (rounded to whole copies of the base)")
    ap.add_argument("--partitions", default="1,8", help="--partitions values of the current code")
    ap.add_argument("--commands", default="dedup,curate", help="codeparrot commands timed")
    ap.add_argument("--work", type=Path, default=Path("/tmp/codeparrot-scale"), help="cache of corpora and scratch space")
    ap.add_argument("--peers", action="store_true", help="reference, ours and datatrove on the smallest size, scored")
    ap.add_argument("--baseline-tree", type=Path, help="an older checkout (git worktree) timed with the same commands")
    ap.add_argument("--head-tree", type=Path,
                    help="time this checkout as 'head' instead of the editable install (so the tree can be edited meanwhile)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the fastest counts")
    ap.add_argument("--workers", type=int, default=2, help="--workers of every command, and corpus-building processes")
    ap.add_argument("--base-files", type=int, default=9524, help="make_corpus --max-files of the base (9,524 + 5%% = 10,000 files)")
    ap.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH, help="folder of make_corpus.py and dedup_bench.py")
    ap.add_argument("--no-partitions-flag", action="store_true", help="never pass --partitions (the CLI before it existed)")
    ap.add_argument("--datatrove-banding", default="21x6", help="datatrove num_buckets x hashes_per_bucket")
    ap.add_argument("--corpus-only", action="store_true", help="build (or find) the corpora, time nothing")
    ap.add_argument("--datatrove-run", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.datatrove_run:  # the datatrove peer's own process
        run_datatrove(*args.datatrove_run, workers=args.workers, banding=args.datatrove_banding)
        return

    work = args.work.resolve()
    args.bench_dir = args.bench_dir.resolve()
    args.baseline_tree = args.baseline_tree.resolve() if args.baseline_tree else None
    (work / "runs").mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    commands = args.commands.split(",")
    cli = [str(Path(sys.executable).with_name("codeparrot"))]
    if args.head_tree:
        cli = tree_main(args.head_tree.resolve())
    codes: dict[str, list[str]] = {"head": cli}
    meta: dict[str, object] = {"cpus": os.cpu_count(), "workers": args.workers, "load_before": round(os.getloadavg()[0], 2),
                               "python": sys.version.split()[0]}
    where = f"import sys; sys.path.insert(0, {str(args.head_tree.resolve())!r}); " if args.head_tree else ""
    head = subprocess.run([sys.executable, "-c", where + "import codeparrot; print(codeparrot.__file__)"], capture_output=True,
                          text=True, check=True, cwd=work).stdout.strip()
    log(f"head imports codeparrot from {head}")
    meta["head"] = {"codeparrot": head}
    if args.baseline_tree:
        meta["baseline"] = check_tree(args.baseline_tree)
        codes["baseline"] = tree_main(args.baseline_tree)
    partitions: dict[str, list[int | None]] = {}
    for command in commands:
        flag = not args.no_partitions_flag and has_flag(cli, command, "--partitions")
        if not flag and not args.no_partitions_flag:
            log(f"`codeparrot {command}` has no --partitions flag yet: timing it without")
        partitions[command] = [int(p) for p in args.partitions.split(",")] if flag else [None]

    corpora: dict[int, tuple[Path, dict]] = {}
    for size in reversed(sizes):  # the largest first: every fork copy is built in one pool, the others link
        t = time.perf_counter()
        corpora[size] = build_corpus(work, args.bench_dir, args.base_files, size, args.workers)
        folder, desc = corpora[size]
        log(f"corpus ~{size:,}: {desc['records']:,} files, {desc['content_mib']:,} MiB in {desc['shards']} shards "
            f"({time.perf_counter() - t:.1f} s) -> {folder}")
    meta["corpora"] = {str(s): {"path": str(corpora[s][0]), **corpora[s][1]} for s in sizes}
    if args.corpus_only:
        print(json.dumps(meta))
        return

    rows = []
    for size in sizes:
        folder, desc = corpora[size]
        for command in commands:
            for code, main_cmd in codes.items():
                for p in partitions[command] if code == "head" else [None]:
                    measured = []
                    for i in range(args.repeat):
                        tag = f"{command}-{desc['records']}-{code}-p{p or 0}-{i}"
                        out = work / "runs" / tag
                        shutil.rmtree(out, ignore_errors=True)
                        m = measure([*main_cmd, *codeparrot_args(command, folder, out, args.workers, p)],
                                    work / "runs" / f"{tag}.log", cwd=work)
                        shutil.rmtree(out, ignore_errors=True)
                        log(f"{command} {desc['records']:,} files, {code}, P={p or '-'}, run {i + 1}/{args.repeat}: "
                            f"{m['wall_s']} s wall, {m['cpu_s']} s CPU, {m['rss_mib']} MiB")
                        measured.append(m)
                    rows.append({"files": desc["records"], "content_mib": desc["content_mib"], "command": command,
                                 "code": code, "partitions": p, **best(measured)})

    fits = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not r["failed"]:
            groups[(r["command"], r["code"], r["partitions"])].append(r)
    for (command, code, p), rs in groups.items():
        if len({r["files"] for r in rs}) < 2:
            continue
        xs = [r["files"] for r in rs]
        f = {"command": command, "code": code, "partitions": p, "points": len(rs), "at": {}}
        for key in ("rss_mib", "cpu_s", "wall_s"):
            ys = [r[key] for r in rs]
            slope, intercept = fit(xs, ys)
            residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
            spread = sum((y - sum(ys) / len(ys)) ** 2 for y in ys)
            f[key] = {"slope": slope, "intercept": intercept, "r2": 1 - residual / spread if spread else 1.0}
        f["rss_kib_per_file"] = f["rss_mib"]["slope"] * 1024
        f["rss_mib_intercept"] = f["rss_mib"]["intercept"]
        f["cpu_ms_per_file"] = f["cpu_s"]["slope"] * 1000
        f["wall_ms_per_file"] = f["wall_s"]["slope"] * 1000
        for n in TARGETS:
            f["at"][str(n)] = {"rss_gib": (f["rss_mib"]["intercept"] + f["rss_mib"]["slope"] * n) / 1024,
                               "cpu_h": (f["cpu_s"]["intercept"] + f["cpu_s"]["slope"] * n) / 3600,
                               "wall_h": (f["wall_s"]["intercept"] + f["wall_s"]["slope"] * n) / 3600}
        fits.append(f)

    peer = None
    if args.peers:
        from importlib.metadata import PackageNotFoundError, version

        try:
            dt_version = version("datatrove")
        except PackageNotFoundError:
            sys.exit("--peers needs datatrove: pip install -e '.[bench]'")
        folder, desc = corpora[sizes[0]]
        p0 = partitions["dedup"][0] if "dedup" in partitions else None
        peer = {"files": desc["records"], "corpus": str(folder), "codeparrot_dedup_partitions": p0,
                "datatrove": {"version": dt_version, "settings": datatrove_settings(args.datatrove_banding),
                              "executor": f"LocalPipelineExecutor, workers={args.workers}; tasks: {args.workers} "
                                          f"(signatures, filter), {args.datatrove_banding.split('x')[0]} (buckets), 1 (cluster)"},
                "systems": peers(folder, work, args, cli, p0)}

    print(report(rows, fits, peer))
    print(json.dumps({**meta, "rows": rows, "fits": fits, "peers": peer}))


if __name__ == "__main__":
    main()
