"""Session fixtures: a tiny trained model folder and a tiny published dataset, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluate.tiny_eval_model import build_tiny_dataset, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "final")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny-dataset"))
