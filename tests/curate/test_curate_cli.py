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
