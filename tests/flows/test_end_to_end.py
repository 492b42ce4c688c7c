"""The README's main job, as a user runs it: `codeparrot run` on the embedded defaults, from nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

ENDPOINT_VARS = ("CODEPARROT_BIGQUERY_ENDPOINT", "STORAGE_EMULATOR_HOST", "CODEPARROT_GCP_PROJECT")


@pytest.mark.slow
def test_codeparrot_run_builds_every_stage_and_prints_where_outputs_are(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env.update(CODEPARROT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "codeparrot.cli", "run"], env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    dataset = Path(lines["dataset"].split()[1])
    tokenizer = Path(lines["tokenizer"].split()[1])
    model = Path(lines["model"].split()[1])

    ds = datasets.load_dataset(str(dataset))
    assert ds["train"].num_rows > 1000 and ds["valid"].num_rows > 50
    report = json.loads((tokenizer / "eval.json").read_text())
    assert report["vocab_size"] == 32768 and report["chars_per_token"] >= 3.4
    assert report["hard_keywords_single_token"] and report["round_trip"]["failures"] == 0
    assert (model / "model.safetensors").is_file()
    events = [json.loads(x) for x in (model.parent / "metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in events if e["event"] == "eval"]
    assert val[-1] < 0.7 * val[0], val  # the default tiny run on the embedded dataset
    assert "humaneval  pass@1" in out and out.count("def area_of_rectangle(a: float, b: float):") == 3
    # every emulator it started is gone again
    state = tmp_path / "home" / "services" / "state.json"
    assert not state.exists()
