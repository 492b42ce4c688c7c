"""HumanEval problems, programs, scoring, the results table, and a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeparrot.errors import DataError
from codeparrot.evaluate.config import EvalConfig, SandboxLimits
from codeparrot.evaluate.humaneval import (
    PARTIAL,
    REFERENCES,
    check_program,
    load_problems,
    model_prompt,
    output_key,
    results_table,
    run_humaneval,
    score,
    task_seed,
)
from codeparrot.evaluate.model import model_identity


def test_problems_come_from_the_installed_package_in_order() -> None:
    problems = load_problems()
    assert [p.task_id for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert problems[-1].task_id == "HumanEval/163"
    assert [p.task_id for p in load_problems(limit=2)] == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(DataError, match="reinstall"):
        load_problems(path="/nonexistent/HumanEval.jsonl.gz")


def test_program_layout() -> None:
    problem = load_problems(limit=1)[0]
    program = check_program(problem, "\n    return False\n")
    assert program.startswith(model_prompt(problem) + "\n    return False\n")
    assert problem.test in program
    assert program.rstrip().endswith(f"check({problem.entry_point})")
    assert not model_prompt(problem).endswith("\n")  # CodeParrot strips the prompt


def test_score_per_problem_then_mean() -> None:
    rows = [
        {"task_id": "a", "passed": True}, {"task_id": "a", "passed": False},
        {"task_id": "b", "passed": False}, {"task_id": "b", "passed": False},
    ]
    assert score(rows) == {"pass@1": pytest.approx(0.25)}


def test_results_table_sits_next_to_the_references() -> None:
    table = results_table("mine", {"pass@1": 0.5, "pass@10": 0.75}, problems=10, n_samples=20)
    lines = table.strip().splitlines()
    assert lines[0] == "| model | problems | samples/problem | pass@1 | pass@10 | pass@100 |"
    assert "| codeparrot-small (110M), reference | 164 | 200 | 3.80 | 6.57 | 12.78 |" in lines
    assert "| codeparrot (1.5B), reference | 164 | 200 | 3.99 | 8.69 | 17.88 |" in lines
    assert lines[-1] == "| mine | 10 | 20 | 50.00 | 75.00 | - |"
    assert len(lines) == 2 + len(REFERENCES) + 1


def test_task_seeds_are_stable_and_distinct() -> None:
    assert task_seed(1, "HumanEval/0") == task_seed(1, "HumanEval/0")
    assert len({task_seed(1, f"HumanEval/{i}") for i in range(164)}) == 164
    assert task_seed(1, "HumanEval/0") != task_seed(2, "HumanEval/0")


def test_resumed_run_scores_the_checkpointed_completions(tiny_model: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(limit=2, n_samples=2, max_new_tokens=8, run_perplexity=False, sandbox=SandboxLimits(timeout_s=2))
    problems = load_problems(limit=2)
    key = output_key(cfg, model_identity(tiny_model))
    out = tmp_path / "he"
    out.mkdir()
    # An interrupted run finished problem 0 with two correct completions (the canonical solution, which
    # follows the unstripped prompt's newline); the tiny model itself could never pass.
    solved = "\n" + problems[0].canonical_solution
    (out / PARTIAL).write_text(json.dumps({"key": key, "task_id": problems[0].task_id, "completions": [solved] * 2}) + "\n")
    summary = run_humaneval(tiny_model, cfg, out_dir=out)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["passed"]) for r in rows[:2]] == [("HumanEval/0", True)] * 2
    assert summary["pass@1"] == pytest.approx(0.5)  # problem 0 solved, problem 1 (sampled now) not
    assert summary["generation"]["samples"] == 2  # only problem 1 was generated
    assert summary["execution"]["unique_programs"] < summary["execution"]["programs"]  # duplicates ran once
    assert not (out / PARTIAL).exists()


def test_stale_checkpoint_of_other_settings_is_ignored(tiny_model: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(limit=1, n_samples=1, max_new_tokens=8, run_perplexity=False)
    problem = load_problems(limit=1)[0]
    out = tmp_path / "he"
    out.mkdir()
    stale = {"key": "other-settings", "task_id": problem.task_id, "completions": ["\n" + problem.canonical_solution]}
    (out / PARTIAL).write_text(json.dumps(stale) + "\n")
    summary = run_humaneval(tiny_model, cfg, out_dir=out)
    assert summary["generation"]["samples"] == 1
    assert summary["pass@1"] == 0.0
