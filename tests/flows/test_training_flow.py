"""The training flow survives a preempted training child: the task retry resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from codeparrot.tokens import PretokenizeConfig
from codeparrot.train.config import TrainConfig
from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset
from flows.training import training


def _preempt_child_when(out: Path, step: int, done: threading.Event, hit: list[int]) -> None:
    """Once the run logged `step`, SIGTERM every training process under this one, as a VM shutdown does."""
    metrics = out / "metrics.jsonl"
    while not done.is_set():
        if metrics.exists():
            steps = [json.loads(x).get("step", -1) for x in metrics.read_text().splitlines() if '"train"' in x]
            if steps and max(steps) >= step:
                procs = [
                    p for p in psutil.Process(os.getpid()).children(recursive=True)
                    if "codeparrot.train" in " ".join(p.cmdline())
                ]
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                hit.append(len(procs))
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_flow_completes_through_a_task_retry_after_sigterm(prefect_harness, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CODEPARROT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CODEPARROT_HUB_ROOT", str(tmp_path / "hub"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_sample_dataset(tmp_path / "data", n_files=120)
    tok = train_sample_tokenizer(data, tmp_path / "tok", vocab_size=512)
    config = TrainConfig(max_steps=150, warmup_steps=5, batch_size=4, seq_length=64, save_every=50, log_every=1, eval_every=50)
    out = tmp_path / "run"

    done, hit = threading.Event(), []
    watcher = threading.Thread(target=_preempt_child_when, args=(out, 8, done, hit), daemon=True)
    watcher.start()
    try:
        state = training(str(data), str(tok), config=config, pretokenize=PretokenizeConfig(root=str(tmp_path / "tokens")),
                         output=str(out), evaluate=False, return_state=True)  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert hit and hit[0] >= 1, "the training child was never signalled"
    assert state.is_completed(), state.message
    result = state.result()
    assert result.model_dir == str(out / "final")
    assert (out / "final" / "model.safetensors").is_file()
    # Published with its card; the resume is part of the lineage.
    assert result.model is not None and result.model.startswith("hf://codeparrot/codeparrot-tiny@")
    card = (tmp_path / "hub" / "models" / "codeparrot" / "codeparrot-tiny" / "revisions" / result.model.rsplit("@", 1)[1] / "README.md").read_text()
    assert "| resumed | yes, at steps" in card and result.resumed_at and result.tokens.startswith(str(tmp_path / "tokens"))

    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stop = [e for e in events if e["event"] == "preempted"]
    starts = [e for e in events if e["event"] == "start"]
    assert len(stop) == 1 and 8 <= stop[0]["step"] < 150
    assert [(s["resumed"], s["step"]) for s in starts] == [(False, 0), (True, stop[0]["step"])]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Task-run states reach the API through events, asynchronously: wait for the final one.
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            runs = [r for r in runs if r.name.startswith("train-")]
            if (runs and runs[0].state.is_completed()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    [run] = runs
    assert run.run_count == 2 and run.state.is_completed()
