"""What identifies a training run: config fingerprint, dataset revision, tokenizer hash (no torch import)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from codeparrot.dataset import dataset_revision
from codeparrot.env import home
from codeparrot.errors import ConfigError
from codeparrot.train.config import TrainConfig

# The files that define a tokenizer's output; tokenizer.json alone holds vocabulary, merges and
# pre-tokenizer of a fast tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def tokenizer_hash(folder: str | os.PathLike[str]) -> str:
    """sha256 (16 hex) over the tokenizer's defining files; an error naming the folder when it has none."""
    root = Path(folder)
    files = [root / name for name in TOKENIZER_FILES if (root / name).is_file()]
    if not files:
        raise ConfigError(
            f"no tokenizer in {root} (expected tokenizer.json): pass a folder written by "
            "`codeparrot tokenizer` or `save_pretrained`"
        )
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_hash(config: TrainConfig, data: str | os.PathLike[str], tokenizer: str | os.PathLike[str]) -> str:
    """The fingerprint a checkpoint must match to be resumed: config, dataset revision, tokenizer."""
    return config.fingerprint(dataset_revision(data), tokenizer_hash(tokenizer))


def default_run_dir(
    config: TrainConfig,
    data: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """`<root or CODEPARROT_HOME/runs>/<hash12>`: a resubmitted run finds its own checkpoints."""
    base = Path(root) if root is not None else home() / "runs"
    return base / run_hash(config, data, tokenizer)[:12]
