"""The `codeparrot perplexity`, `humaneval` and `generate` commands, end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeparrot.cli import main
from codeparrot.evaluate.humaneval import score


def test_humaneval_end_to_end(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "he"
    assert main(["humaneval", str(tiny_model), "--limit", "3", "--n-samples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["completion_id"]) for r in rows] == [
        (f"HumanEval/{t}", c) for t in range(3) for c in range(2)
    ]
    for row in rows:
        assert row["passed"] == (row["result"] == "passed")
        assert row["result"] == "passed" or row["result"].startswith(("failed", "timed out"))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["problems"], summary["n_samples"], summary["pass_at_k"]) == (3, 2, ["pass@1"])
    assert summary["pass@1"] == pytest.approx(score(rows)["pass@1"])
    assert summary["passed_samples"] == sum(r["passed"] for r in rows)
    assert summary["generation"]["samples"] == 6
    assert summary["max_new_tokens_used"] == 64  # 256 does not fit next to a prompt in 128 positions
    table = (out / "results.md").read_text()
    assert table in printed and "results in" in printed
    last = table.strip().splitlines()[-1].split(" | ")
    assert last[1:4] == ["3", "2", f"{100 * summary['pass@1']:.2f}"]
    # Rerunning with the same settings is a no-op: nothing is regenerated or rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["humaneval", str(tiny_model), "--limit", "3", "--n-samples", "2", "--out", str(out)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_humaneval_default_output_lives_with_the_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["humaneval", str(tiny_model), "--limit", "1", "--n-samples", "1", "--max-new-tokens", "8"]) == 0
    (summary,) = (tiny_model / "eval").glob("humaneval-*/summary.json")
    assert json.loads(summary.read_text())["problems"] == 1
    assert str(summary.parent) in capsys.readouterr().out


def test_generate_prints_first_blocks(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", str(tiny_model), 'def area(a, b):\n    """Area of a rectangle."""\n', "-n", "3", "--max-new-tokens", "16"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    completions = first.rstrip("\n").split("\n" + "=" * 80 + "\n")
    assert len(completions) == 3
    for text in completions:
        assert not any(stop in text for stop in ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif"))
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # --seed 1 by default: the same completions


def test_perplexity_command(tiny_model: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "ppl.json"
    argv = ["perplexity", str(tiny_model), "--data", str(tiny_dataset), "--json", str(result), "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads(result.read_text())
    assert f"loss {data['loss']:.4f}  perplexity {data['perplexity']:.2f}" in capsys.readouterr().out
    assert data["seq_length"] == 128 and data["blocks"] > 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["humaneval", "{tmp}"], "is not a model folder"),
        (["humaneval", "{model}", "--temperature", "0"], "temperature must be in (0, 5]"),
        (["generate", "{model}", "x", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["perplexity", "{model}", "--data", "{tmp}"], "no data/valid-*.parquet"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], needle: str, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(tmp=tmp_path, model=tiny_model) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert "Traceback" not in err
