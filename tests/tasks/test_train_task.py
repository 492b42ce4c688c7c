"""The training task in a flow: final path, artifacts, and a failing child shown with its log tail."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
from prefect import flow

from codeparrot.artifacts import local_identity
from codeparrot.train.config import TrainConfig
from codeparrot.train.errors import TrainingFailed
from codeparrot.train.identity import default_run_dir
from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset
from tasks.train import train_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-inputs")
    data = write_sample_dataset(root / "data", n_files=120)
    return data, train_sample_tokenizer(data, root / "tok", vocab_size=512)


@pytest.fixture
def child_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEPARROT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


CONFIG = TrainConfig(max_steps=12, warmup_steps=2, batch_size=4, seq_length=64, save_every=5, log_every=2, eval_every=6)


def _task_runs(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


def _artifacts(state) -> dict[str, list]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    found: dict[str, list] = {}
    for art in arts:
        found.setdefault(art.type, []).append(art)
    return found


@flow
def _train_once(config: TrainConfig, data: str, tokenizer: str, output_root: str) -> str:
    return train_model(config, data, tokenizer, output_root=output_root)


def test_task_trains_into_the_hashed_run_dir_and_reports_artifacts(prefect_harness, inputs, child_env, tmp_path) -> None:
    data, tok = inputs
    state = _train_once(CONFIG, str(data), str(tok), str(tmp_path / "runs"), return_state=True)
    assert state.is_completed(), state.message
    final = state.result()
    assert final == str(default_run_dir(CONFIG, local_identity(data), local_identity(tok), tmp_path / "runs") / "final")
    assert (Path(final) / "model.safetensors").is_file()
    [run] = _task_runs(state)
    assert run.run_count == 1
    arts = _artifacts(state)
    [progress] = arts["progress"]
    assert (progress.key, progress.data) == ("training-progress", 100.0) and progress.description
    # The chart: one artifact, redrawn in place at each validation (steps 0, 6, 12) and at the end.
    [latest] = [a for a in arts["markdown"] if a.key == "training-chart"]
    assert latest.description and latest.updated > latest.created
    svg = ElementTree.fromstring(base64.b64decode(re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", latest.data)[1]))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    train, valid, lr = (line.get("points").split() for line in lines)
    assert (len(train), len(valid), len(lr)) == (6, 3, 6)  # train logged at steps 2..12 by 2; validation at 0, 6, 12
    assert "step 12 of 12" in latest.data and "validation loss" in latest.data

    # resubmitting finds the finished run in the same folder and returns at once
    again = _train_once(CONFIG, str(data), str(tok), str(tmp_path / "runs"), return_state=True)
    assert again.result() == final


def test_a_crashing_child_fails_without_retry_and_shows_its_log(prefect_harness, inputs, child_env, tmp_path) -> None:
    data, _ = inputs
    broken = tmp_path / "broken-tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    state = _train_once(CONFIG, str(data), str(broken), str(tmp_path / "runs"), return_state=True)
    assert state.is_failed()
    # The child's own error line heads the message when it printed one; its log tail follows.
    with pytest.raises(TrainingFailed, match=r"tokenizer(.|\n)*\nlast lines of .*train\.log:\n(.|\n)*Error"):
        state.result()
    [run] = _task_runs(state)
    assert run.run_count == 1
