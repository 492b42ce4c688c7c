from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from codeparrot.cli import main


def test_dedup_and_curate_commands_print_the_table(tools: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(0)
    text = tools.python_file(rng)
    recs = [tools.record("a/x", "x.py", text), tools.record("b/x", "x.py", text + "\n# same\n"), tools.record("c/y", "y.py", tools.python_file(rng), license="gpl-2.0")]
    tools.write_records(tmp_path / "in", recs, per_shard=2)
    assert main(["dedup", str(tmp_path / "in"), str(tmp_path / "dd"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "dropped: near-dup" in out and "kept" in out
    assert orjson.loads((tmp_path / "dd" / "stats.json").read_bytes())["kept"] == 2
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "cu"), "--workers", "2", "--licenses", "mit,isc", "--write-dropped"]) == 0
    out = capsys.readouterr().out
    assert "dropped: license:gpl-2.0" in out
    assert (tmp_path / "cu" / "dropped" / "license_gpl-2.0").is_dir()


def test_user_errors_are_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["dedup", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no *.json.gz shards" in err and "Traceback" not in err
    assert main(["curate", str(tmp_path / "empty"), str(tmp_path / "out"), "--licenses", "gpl"]) == 2
    err = capsys.readouterr().err
    assert "unknown license selection 'gpl'" in err and "Traceback" not in err
    assert main(["dedup", str(tmp_path / "empty"), str(tmp_path / "out"), "--threshold", "1.5"]) == 2
    assert "threshold" in capsys.readouterr().err


def one_error(stderr: str) -> str:
    """The one `error:` line of a failed command (progress bars aside), with no traceback."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    return line


def _strict_order_corpus(tools: SimpleNamespace, folder: Path) -> None:
    """a.json.gz: many good records, then a bad line (found late); z.json.gz: a bad first line (found at once)."""
    rng = random.Random(1)
    text = tools.python_file(rng)
    good = [orjson.dumps(tools.record(f"r{i}/x", "x.py", text)) for i in range(3000)]
    tools.write_raw_shard(folder / "a.json.gz", [*good, b"{broken"])
    tools.write_raw_shard(folder / "z.json.gz", [b"{not json"])


def test_strict_reports_the_first_shard_in_input_order_and_removes_its_work_folder(
    tools: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _strict_order_corpus(tools, tmp_path / "in")
    out = tmp_path / "out"
    assert main(["curate", str(tmp_path / "in"), str(out), "--strict", "--workers", "2", "--no-near-dedup"]) == 2
    err = one_error(capsys.readouterr().err)
    assert f"{tmp_path / 'in' / 'a.json.gz'}:3001: bad-json" in err and "z.json.gz" not in err
    assert not (out / "_work").exists() and not out.exists()  # nothing left behind


def test_a_run_where_every_shard_is_bad_fails_with_the_counts(
    tools: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(2)
    tools.write_records(tmp_path / "in", [tools.record(f"g{i}/x", "x.py", tools.python_file(rng), license="gpl-3.0") for i in range(3)], per_shard=2)
    (tmp_path / "in" / "zz.json.gz").write_bytes(b"plain text, not gzip\n")
    out = tmp_path / "out"
    assert main(["curate", str(tmp_path / "in"), str(out), "--workers", "1"]) == 2
    err = one_error(capsys.readouterr().err)
    assert "error: nothing to publish from 3 shards: 0 of 3 records kept (license:gpl-3.0 3); 1 shard set aside (not-gzip 1): " in err
    assert str(out / "stats.json") in err
    assert (out / "stats.json").is_file() and not (out / "_SUCCESS").exists() and not (out / "_work").exists()


def test_a_shard_that_is_not_gzip_is_set_aside_or_refused_with_strict(
    tools: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(3)
    tools.write_records(tmp_path / "in", [tools.record(f"k{i}/x", "x.py", tools.python_file(rng)) for i in range(2)], per_shard=2)
    fake = tmp_path / "in" / "fake.json.gz"
    fake.write_bytes(b'{"repo_name": "x", "path": "y.py", "content": "z = 1"}\n')  # gzip by name only
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "out"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "shards set aside: not-gzip" in printed
    stats = orjson.loads((tmp_path / "out" / "stats.json").read_bytes())
    assert (stats["records_in"], stats["kept"]) == (2, 2)  # the fake shard is not a record
    assert [(b["shard"], b["reason"]) for b in stats["bad_shards"]] == [(str(fake), "not-gzip")]
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "strict"), "--workers", "1", "--strict"]) == 2
    err = one_error(capsys.readouterr().err)
    assert err == f"error: {fake}:1: not-gzip: not a gzip file (it starts with b'{{\"repo_n'): re-download or remove it"


def test_redaction_and_decontamination_switch_off_and_take_a_benchmark_file(tools: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gzip

    rng = random.Random(5)
    secret = tools.python_file(rng) + 'OWNER = "ops.lead@corp-mail.io"\n'
    quiz = "def tally_ballots(votes):\n    seen = {}\n    for name in votes:\n        seen[name] = seen.get(name, 0) + 1\n    return sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))\n"
    tools.write_records(tmp_path / "in", [tools.record("a/x", "x.py", secret), tools.record("b/y", "y.py", tools.python_file(rng) + quiz)], per_shard=2)
    bench = tmp_path / "quiz.jsonl"
    bench.write_text(orjson.dumps({"id": "q1", "text": quiz}).decode() + "\n")

    def kept(out: Path) -> str:
        return b"".join(gzip.decompress(p.read_bytes()) for p in sorted(out.glob("*.json.gz"))).decode()

    base = ["--workers", "1", "--licenses", "any"]
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "on"), *base, "--benchmark-file", f"quiz={bench}"]) == 0
    stats = orjson.loads((tmp_path / "on" / "stats.json").read_bytes())
    assert stats["dropped"].get("decontaminated:quiz") == 1 and "<EMAIL>" in kept(tmp_path / "on")
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "off"), *base, "--no-redaction", "--no-decontamination"]) == 0
    assert "ops.lead@corp-mail.io" in kept(tmp_path / "off") and "tally_ballots" in kept(tmp_path / "off")
    capsys.readouterr()
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "bad"), *base, "--benchmark-file", str(bench)]) == 2
    assert "use NAME=PATH" in capsys.readouterr().err
    assert main(["curate", str(tmp_path / "in"), str(tmp_path / "bad"), *base, "--benchmark-file", f"quiz={tmp_path / 'nope.jsonl'}"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
