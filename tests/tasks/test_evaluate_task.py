"""The evaluation tasks under a Prefect API: results, the HumanEval artifact, content-keyed caching."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from codeparrot.errors import ConfigError
from codeparrot.evaluate.config import EvalConfig
from tasks.evaluate import _content_key, evaluate_model_task, humaneval_task, perplexity_task
from tests.evaluate.tiny_eval_model import build_tiny_dataset, build_tiny_model

CFG = EvalConfig(limit=2, n_samples=2, max_new_tokens=8, max_perplexity_blocks=4, workers=2)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = build_tiny_model(tmp_path_factory.mktemp("eval-task-model") / "final")
    return model, build_tiny_dataset(tmp_path_factory.mktemp("eval-task-data"))


def _artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_evaluate_model_task_then_a_cache_hit(prefect_harness: Path, model_and_data: tuple[Path, Path]) -> None:
    from prefect import flow

    model, data = model_and_data

    @flow
    def after_training() -> tuple[str, dict[str, Any]]:
        state = evaluate_model_task(str(model), str(data), CFG, return_state=True)
        return state.name, state.result()

    name, summary = after_training()
    assert name == "Completed"
    assert summary["perplexity_blocks"] == 4 and summary["perplexity"] > 1
    assert summary["humaneval_problems"] == 2 and 0.0 <= summary["pass@1"] <= 1.0
    artifact = _artifact(f"humaneval-{summary['humaneval_key']}")
    assert artifact is not None and artifact.type == "markdown"
    assert "| codeparrot-small (110M), reference | 164 | 200 | 3.80 | 6.57 | 12.78 |" in artifact.data

    name, again = after_training()
    assert name == "Cached" and again == summary


def test_single_tasks(prefect_harness: Path, model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    from prefect import flow

    model, data = model_and_data

    @flow
    def both() -> tuple[dict[str, Any], dict[str, Any]]:
        return perplexity_task(str(model), str(data), CFG), humaneval_task(str(model), CFG, out_dir=str(tmp_path))

    ppl, he = both()
    assert ppl["blocks"] == 4 and ppl["seq_length"] == 128
    assert he["out_dir"] == str(tmp_path) and (tmp_path / "summary.json").exists()


def test_perplexity_without_data_is_a_config_error(prefect_harness: Path, model_and_data: tuple[Path, Path]) -> None:
    from prefect import flow

    model, _ = model_and_data

    @flow
    def no_data() -> dict[str, Any]:
        return evaluate_model_task(str(model), None, CFG)

    with pytest.raises(ConfigError, match="no dataset folder"):
        no_data()


def test_cache_key_follows_content_not_paths(model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = model_and_data
    copy = tmp_path / "copy" / "final"
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("eval"))
    key = _content_key(None, {"model_dir": model, "data_dir": data})
    assert _content_key(None, {"model_dir": copy, "data_dir": data}) == key
    config = copy / "config.json"
    config.write_text(config.read_text() + "\n")  # "retrained" in place: other bytes, same path
    assert _content_key(None, {"model_dir": copy, "data_dir": data}) != key
    assert _content_key(None, {"model_dir": model, "data_dir": None}) != key
