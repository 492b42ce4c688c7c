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
    last = [line for line in table.splitlines() if line.startswith("|")][-1].split(" | ")
    # a model without a training lineage: the table says its data was not checked for HumanEval
    assert "says nothing about HumanEval decontamination" in table and summary["contamination"]["checked"] is False
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


def one_error(stderr: str) -> str:
    """The one `error:` line of a failed command, with no traceback."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    return line


@pytest.fixture(scope="module")
def small_vocab_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's 512-token tokenizer next to an (untrained) model with only 256 embeddings."""
    import shutil

    from transformers import AutoModelForCausalLM, GPT2Config

    folder = tmp_path_factory.mktemp("small-vocab")
    for path in tiny_model.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, folder / path.name)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=256, bos_token_id=0, eos_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["perplexity", "generate"])
def test_a_tokenizer_larger_than_the_vocabulary_is_refused(
    command: str, small_vocab_model: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rest = ["--data", str(tiny_dataset), "--cache-dir", str(tmp_path)] if command == "perplexity" else ["def f(", "-n", "1"]
    assert main([command, str(small_vocab_model), *rest]) == 2
    err = one_error(capsys.readouterr().err)
    assert err.startswith(f"error: vocabulary mismatch in {small_vocab_model}: the tokenizer has 512 tokens, the model's vocabulary 256")


def test_a_corrupt_valid_shard_is_one_line_naming_it(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    (shard,) = (broken / "data").glob("valid-*.parquet")
    shard.write_bytes(b"PAR1" + bytes(100))  # the magic, then nothing a reader can use
    assert main(["perplexity", str(tiny_model), "--data", str(broken), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = one_error(capsys.readouterr().err)
    assert err.startswith(f"error: {shard} is not a readable Parquet file (")


def test_a_full_disk_names_the_file_and_the_option(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["perplexity", str(tiny_model), "--data", str(tiny_dataset), "--cache-dir", str(tmp_path), "--json", "/dev/full"]
    assert main(argv) == 2  # /dev/full: every write fails with ENOSPC
    assert one_error(capsys.readouterr().err) == "error: no space left on device writing /dev/full: free space or point --json elsewhere"
