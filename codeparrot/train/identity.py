"""What identifies a training run: the config fingerprint and its inputs' identities (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

from codeparrot.env import home
from codeparrot.train.config import TrainConfig


def run_hash(config: TrainConfig, dataset_identity: str, tokenizer_identity: str) -> str:
    """The fingerprint a checkpoint must match to be resumed: config, dataset revision, tokenizer revision."""
    return config.fingerprint(dataset_identity, tokenizer_identity)


def default_run_dir(
    config: TrainConfig,
    dataset_identity: str,
    tokenizer_identity: str,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """`<root or CODEPARROT_HOME/runs>/<hash12>`: a resubmitted run finds its own folder."""
    base = Path(root) if root is not None else home() / "runs"
    return base / run_hash(config, dataset_identity, tokenizer_identity)[:12]


def checkpoint_uri(root: str, config: TrainConfig, dataset_identity: str, tokenizer_identity: str) -> str:
    """`<root>/<hash12>`: where a run's checkpoints go when they must outlive the machine (gs://...)."""
    return f"{root.rstrip('/')}/{run_hash(config, dataset_identity, tokenizer_identity)[:12]}"
