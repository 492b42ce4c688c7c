"""Decontamination and redaction: their cost per file next to curation's, and what they remove and touch.

On a corpus from `shared/bench/make_corpus.py` (built here unless --corpus is given):

1. `codeparrot curate IN OUT --licenses any --no-redaction --no-decontamination` (every record reaches
   the heuristics) as a subprocess, then the same command with both steps on (the default); runs
   alternate, best of --repeat each, wall time and CPU seconds of the process tree; their ratio is the
   acceptance figure (<= 1.5);
2. in this process, over the same records, the CPU time of `HeuristicFilter.reason` (the existing filter
   pass), then `Redactor.redact` and `Decontaminator.matches` on the same `Doc`s (as the pipeline would
   pass them: their bytes and lowercase view already computed);
3. how many files each step removes or touches (per kind), and 20 samples of redactions and removals
   (kind, then 60 characters of redacted context each side) for a person to judge false positives.

    .venv/bin/python bench/curate_steps.py                      # corpus of 9,500 files + 5% forks (the dedup bench's)
    .venv/bin/python bench/curate_steps.py --corpus /tmp/corpus --repeat 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = ROOT.parent / "shared" / "bench"


def run_cpu(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of a command's process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def load(corpus: Path) -> list[dict]:
    records = []
    for shard in sorted(corpus.glob("*.json.gz")):
        with gzip.open(shard, "rb") as fh:
            records += [orjson.loads(line) for line in fh]
    return records


def cpu_time(fn, items) -> tuple[float, list]:
    t = time.process_time()
    out = [fn(x) for x in items]
    return time.process_time() - t, out


def context(text: str, start: int, end: int, width: int = 60) -> str:
    return (text[max(0, start - width) : start] + text[start:end] + text[end : end + width]).replace("\n", "\\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="folder of *.json.gz shards (default: build one)")
    ap.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH, help="folder of make_corpus.py")
    ap.add_argument("--max-files", type=int, default=9500, help="files taken when building the corpus (+5%% forks; 9500: the dedup bench's corpus)")
    ap.add_argument("--workers", type=int, default=2, help="--workers of `codeparrot curate`")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the fastest counts")
    ap.add_argument("--samples", type=int, default=20, help="redactions and removals printed for review")
    ap.add_argument("--skip-curate", action="store_true", help="no `codeparrot curate` run (no end-to-end ratio)")
    args = ap.parse_args()

    from codeparrot.curate.config import CurateConfig
    from codeparrot.curate.decontaminate import Decontaminator
    from codeparrot.curate.filters import Doc, HeuristicFilter, exact_digest
    from codeparrot.curate.pii import Redactor

    tmp = Path(tempfile.mkdtemp(prefix="curate-steps-"))
    corpus = args.corpus
    if corpus is None:
        corpus = tmp / "corpus"
        paths = sysconfig.get_paths()
        subprocess.run([sys.executable, str(args.bench_dir / "make_corpus.py"), str(corpus), paths["stdlib"],
                        paths["purelib"], "--max-files", str(args.max_files), "--mutate-seed", "1"], check=True,
                       capture_output=True)
    records = load(corpus)
    mib = sum(len(r["content"]) for r in records) / 2**20
    report: dict[str, object] = {"corpus": str(corpus), "files": len(records), "mib": round(mib, 1),
                                 "cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2)}

    if not args.skip_curate:
        cli = str(Path(sys.executable).with_name("codeparrot"))
        runs: dict[str, list[tuple[float, float]]] = {"curate": [], "curate_with_steps": []}
        for i in range(args.repeat):  # alternating, so a change in the machine's load hits both
            for name in runs:
                out = tmp / f"{name}-{i}"
                cmd = [cli, "curate", str(corpus), str(out), "--workers", str(args.workers), "--licenses", "any"]
                if name == "curate":
                    cmd += ["--no-redaction", "--no-decontamination"]
                runs[name].append(run_cpu(cmd))
                if name == "curate_with_steps":
                    stats = json.loads((out / "stats.json").read_text())
                    report["curate_with_steps_dropped"] = {k: v for k, v in stats["dropped"].items() if "decontam" in k}
                shutil.rmtree(out, ignore_errors=True)
        for name, rs in runs.items():
            report[name] = {"wall_s": round(min(w for w, _ in rs), 2), "cpu_s": round(min(c for _, c in rs), 2),
                            "runs_wall_s": [round(w, 2) for w, _ in rs]}
        report["ratio_with_steps"] = {
            "wall": round(report["curate_with_steps"]["wall_s"] / report["curate"]["wall_s"], 3),  # type: ignore[index]
            "cpu": round(report["curate_with_steps"]["cpu_s"] / report["curate"]["cpu_s"], 3),  # type: ignore[index]
        }

    heuristic = HeuristicFilter(CurateConfig(licenses="any"))
    t = time.process_time()
    decon = Decontaminator()
    build_s = time.process_time() - t
    redactor = Redactor()

    def best(fn, items):
        times, out = [], None
        for _ in range(args.repeat):
            s, out = cpu_time(fn, items)
            times.append(s)
        return min(times), out

    # one Doc per record as in the pipeline: the heuristics fill its bytes and lowercase view, the steps reuse them
    def heuristics(r):
        doc = Doc(r["content"])
        return heuristic.reason(doc, exact_digest(doc)), doc

    h_s, out = best(heuristics, records)
    reasons, docs = [r for r, _ in out], [d for _, d in out]
    r_s, redacted = best(redactor.redact, docs)
    d_s, matched = best(decon.matches, docs)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    n = len(records)
    per_file = {name: round(s / n * 1e6, 1) for name, s in (("heuristics", h_s), ("decontaminate", d_s), ("redact", r_s))}
    report["cpu_s"] = {"heuristics": round(h_s, 3), "decontaminate": round(d_s, 3), "redact": round(r_s, 3),
                       "decontaminator_build": round(build_s, 3)}
    report["us_per_file"] = per_file
    report["mb_per_s"] = {name: round(mib * 2**20 / 1e6 / s, 1) for name, s in (("heuristics", h_s), ("decontaminate", d_s), ("redact", r_s))}
    report["steps_over_heuristics"] = round((d_s + r_s) / h_s, 2)
    report["heuristic_survivors"] = len(kept)

    removed = [(i, ids) for i, ids in enumerate(matched) if ids]
    kinds: Counter[str] = Counter()
    touched = 0
    for _, recs in redacted:
        touched += bool(recs)
        kinds.update(r.kind for r in recs)
    report["decontaminate"] = {"removed": len(removed), "problems": sorted({p for _, ids in removed for p in ids})}
    report["redact"] = {"files_touched": touched, "redactions": dict(sorted(kinds.items()))}
    print(json.dumps(report, indent=2))

    # samples for review: every kind represented, then random; contexts come from the redacted text
    rng = random.Random(0)
    pool = [(i, r) for i, (_, recs) in enumerate(redacted) for r in recs]
    by_kind: dict[str, list] = {}
    for item in pool:
        by_kind.setdefault(item[1].kind, []).append(item)
    picked = []
    for items in by_kind.values():
        picked += rng.sample(items, min(len(items), max(1, args.samples // max(1, len(by_kind)))))
    picked = sorted(picked, key=lambda x: (x[1].kind, x[0]))[: args.samples]
    print(f"\n# {len(picked)} sample redactions (kind, file, line: context with the secret replaced)")
    for i, rec in picked:
        text, recs = redacted[i]
        shift = sum(len(r.placeholder) - (r.end - r.start) for r in recs if r.start < rec.start)
        start = rec.start + shift
        print(f"{rec.kind:10s} {records[i]['repo_name']}/{records[i]['path']}:{rec.line}: "
              f"{context(text, start, start + len(rec.placeholder))}")
    print(f"\n# {min(len(removed), args.samples)} sample removals (file: problem ids)")
    for i, ids in removed[: args.samples]:
        print(f"{records[i]['repo_name']}/{records[i]['path']}: {', '.join(ids)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
