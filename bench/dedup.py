"""Near-dedup benchmark: `codeparrot dedup` against the CodeParrot reference, same corpus, same cores.

Runs, each as its own subprocess and timed as a whole process (Python start-up and corpus loading
included): the reference (`shared/bench/dedup_bench.py --reference`, CodeParrot's datasketch script),
then `codeparrot dedup` (best of --repeat runs, each into a fresh folder), then scores our kept set with
the same exact-Jaccard ground truth. Prints one JSON object: both times, the speed-up, and the quality
scores (residual near-duplicate pairs, wrongly removed files).

    .venv/bin/python bench/dedup.py                       # build the corpus from this Python's files
    .venv/bin/python bench/dedup.py --corpus /tmp/corpus  # or use one made by make_corpus.py
    .venv/bin/python bench/dedup.py --corpus /tmp/corpus --curate   # also time `codeparrot curate`
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = ROOT.parent / "shared" / "bench"


CPU = {"cpu_s": 0.0}


def run(cmd: list[str], **kw: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command; its wall time, and in CPU["cpu_s"] the CPU seconds of its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return wall, proc


def last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def kept_keys(out_dir: Path, dest: Path) -> int:
    """The kept `repo_name/path` keys, one a line: dedup_bench's --kept file format."""
    n = 0
    with open(dest, "w") as out:
        for shard in sorted(out_dir.glob("*.json.gz")):
            with gzip.open(shard, "rt") as fh:
                for line in fh:
                    d = json.loads(line)
                    out.write(f"{d['repo_name']}/{d['path']}\n")
                    n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="corpus of *.json.gz shards (default: build one)")
    ap.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH, help="folder of dedup_bench.py and make_corpus.py")
    ap.add_argument("--max-files", type=int, default=9500, help="files taken when building the corpus (+5%% forks)")
    ap.add_argument("--workers", type=int, default=2, help="processes for both systems")
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours; the fastest counts")
    ap.add_argument("--skip-reference", action="store_true", help="ours only (no speed-up figure)")
    ap.add_argument("--curate", action="store_true", help="also time `codeparrot curate` end to end")
    args = ap.parse_args()

    py = sys.executable
    cli = str(Path(py).with_name("codeparrot"))
    tmp = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    corpus = args.corpus
    if corpus is None:
        corpus = tmp / "corpus"
        paths = sysconfig.get_paths()
        run([py, str(args.bench_dir / "make_corpus.py"), str(corpus), paths["stdlib"], paths["purelib"],
             "--max-files", str(args.max_files), "--mutate-seed", "1"])
    bench = [py, str(args.bench_dir / "dedup_bench.py"), str(corpus), "--procs", str(args.workers)]
    run(bench)  # ground truth, cached in the corpus folder; not part of either timing

    report: dict[str, object] = {"corpus": str(corpus), "workers": args.workers, "cpus": os.cpu_count(),
                                 "load_before": round(os.getloadavg()[0], 2)}
    if not args.skip_reference:
        wall, proc = run([*bench, "--reference"])
        ref = last_json(proc.stdout)
        report["reference"] = {**ref, "wall_s": round(wall, 2), "cpu_s": CPU["cpu_s"]}

    walls, cpus = [], []
    for i in range(args.repeat):
        out = tmp / f"ours-{i}"
        wall, _ = run([cli, "dedup", str(corpus), str(out), "--workers", str(args.workers)])
        walls.append(round(wall, 2))
        cpus.append(CPU["cpu_s"])
    kept = tmp / "kept.txt"
    kept_keys(out, kept)
    _, proc = run([*bench, "--kept", str(kept)])
    ours = last_json(proc.stdout)
    report["ours"] = {**ours, "wall_s": min(walls), "runs_s": walls, "cpu_s": min(cpus)}

    if "reference" in report:
        ref_wall = report["reference"]["wall_s"]  # type: ignore[index]
        ref_inner = report["reference"]["seconds"]  # type: ignore[index]
        report["speedup"] = round(ref_wall / min(walls), 1)
        report["speedup_vs_reference_dedup_only"] = round(ref_inner / min(walls), 1)
        report["cpu_ratio"] = round(report["reference"]["cpu_s"] / min(cpus), 1)  # type: ignore[index]

    if args.curate:  # end to end with the default allow-list, and with every record through the heuristics
        for name, extra in (("curate", []), ("curate_any_license", ["--licenses", "any"])):
            walls_c = []
            for i in range(args.repeat):
                out = tmp / f"{name}-{i}"
                wall, _ = run([cli, "curate", str(corpus), str(out), "--workers", str(args.workers), *extra])
                walls_c.append(round(wall, 2))
            stats = json.loads((out / "stats.json").read_text())
            report[name] = {"wall_s": min(walls_c), "runs_s": walls_c, "records_in": stats["records_in"],
                            "kept": stats["kept"], "dropped": stats["dropped"]}
    print(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
