"""The README's main job, as a user runs it: `codeparrot run` on the embedded defaults, from nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

# What an earlier test may have left in this process (endpoints, thread caps) is not a new user's shell.
ENDPOINT_VARS = ("CODEPARROT_BIGQUERY_ENDPOINT", "STORAGE_EMULATOR_HOST", "CODEPARROT_GCP_PROJECT", "CODEPARROT_HUB_ROOT",
                 "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _fetch(uri: str, env: dict[str, str]) -> Path:
    """`codeparrot fetch URI`, as a user reads an output on any machine: the local copy's folder."""
    done = subprocess.run([sys.executable, "-m", "codeparrot.cli", "fetch", uri], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    folder, ref = done.stdout.strip().split("\t")
    assert ref == uri
    return Path(folder)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole DAG: 9 min here on 2 cores; the suite's 900 s cap is for single tests
def test_codeparrot_run_builds_every_stage_and_prints_where_outputs_are(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env.update(CODEPARROT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "codeparrot.cli", "run"], env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    dataset, tokenizer, model = (lines[k].split()[1] for k in ("dataset", "tokenizer", "model"))
    assert dataset.startswith("hf://datasets/codeparrot/codeparrot-clean@")
    assert tokenizer.startswith("hf://codeparrot/codeparrot-tokenizer@") and model.startswith("hf://codeparrot/codeparrot-tiny@")
    assert out.rstrip().splitlines()[-1].startswith(f"model: {model}"), "the run ends by printing the model's URI"

    ds = datasets.load_dataset(str(_fetch(dataset, env)))
    assert ds["train"].num_rows > 1000 and ds["valid"].num_rows > 50
    report = json.loads((_fetch(tokenizer, env) / "eval.json").read_text())
    assert report["vocab_size"] == 32768 and report["chars_per_token"] >= 3.4 and report["dataset"] == dataset
    assert report["hard_keywords_single_token"] and report["round_trip"]["failures"] == 0

    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    folder = _fetch(model, env)
    assert AutoModelForCausalLM.from_pretrained(folder).config.n_layer == 2
    lineage = ModelCard.load(folder / "README.md").data.to_dict()["codeparrot"]
    assert lineage["dataset"] == dataset and lineage["tokenizer"] == tokenizer and lineage["steps"] == 400
    run_dir = Path(lines["training"].split()[1])
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in events if e["event"] == "eval"]
    assert val[-1] < 0.7 * val[0], val  # the default tiny run on the embedded dataset
    assert "humaneval  pass@1" in out and out.count("def area_of_rectangle(a: float, b: float):") == 3
    # every emulator it started is gone again
    state = tmp_path / "home" / "services" / "state.json"
    assert not state.exists()
