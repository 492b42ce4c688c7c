"""Shared fixtures of the training tests: a stdlib dataset and tokenizer, built once per session."""

from __future__ import annotations

import pytest

from codeparrot.train.data import pretokenize
from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset
from tests.train.helpers import Corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """300 stdlib modules as a published dataset, a 1024-token BPE, and their token files."""
    root = tmp_path_factory.mktemp("train-corpus")
    data = write_sample_dataset(root / "data", n_files=300)
    tok = train_sample_tokenizer(data, root / "tokenizer", vocab_size=1024)
    cache = root / "tokens"
    pretokenize(data, tok, cache)
    return Corpus(data, tok, cache)
