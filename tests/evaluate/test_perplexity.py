"""Perplexity on the valid split, packed as training packs it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from codeparrot.dataset import iter_texts
from codeparrot.errors import DataError
from codeparrot.evaluate.model import load_model
from codeparrot.evaluate.perplexity import evaluate_loss, run_perplexity, tokenizer_identity, valid_tokens


def test_valid_split_is_packed_files_then_eos(tiny_model: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    _, tok = load_model(tiny_model, device="cpu")
    tokens = valid_tokens(tok, tiny_dataset, tokenizer_id=tokenizer_identity(tok, tiny_model), cache_dir=tmp_path)
    expected: list[int] = []
    for text in iter_texts(tiny_dataset, "valid"):
        expected += tok(text, add_special_tokens=False, verbose=False)["input_ids"] + [tok.eos_token_id]
    assert np.array_equal(np.asarray(tokens), np.asarray(expected))
    files = sorted(tmp_path.iterdir())
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = valid_tokens(tok, tiny_dataset, tokenizer_id=tokenizer_identity(tok, tiny_model), cache_dir=tmp_path)
    assert np.array_equal(np.asarray(again), np.asarray(tokens))
    assert [f.stat().st_mtime_ns for f in sorted(tmp_path.iterdir())] == mtimes  # reused, not rebuilt


def test_loss_is_the_mean_over_blocks(tiny_model: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    model, tok = load_model(tiny_model, device="cpu")
    tokens = valid_tokens(tok, tiny_dataset, tokenizer_id="t", cache_dir=tmp_path)
    result = evaluate_loss(model, tokens, seq_length=128, batch_size=3, max_blocks=7)
    assert (result.blocks, result.tokens, result.seq_length) == (7, 7 * 128, 128)
    blocks = torch.from_numpy(np.asarray(tokens[: 7 * 128], dtype=np.int64)).view(7, 128)
    with torch.no_grad():
        direct = model(input_ids=blocks, labels=blocks).loss.item()  # one batch: the token mean
    assert result.loss == pytest.approx(direct, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(direct), rel=1e-5)


def test_run_perplexity_uses_every_full_block(tiny_model: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_perplexity(tiny_model, tiny_dataset, batch_size=16, cache_dir=tmp_path)
    (token_file,) = tmp_path.glob("valid-*.tokens")
    n_tokens = token_file.stat().st_size // 2  # uint16: the 512-token vocabulary fits
    assert result.blocks == n_tokens // 128
    assert 1.0 < result.perplexity < 512  # trained a little: better than uniform over the 512-token vocabulary


def test_too_little_data_names_the_split(tiny_model: Path) -> None:
    model, _ = load_model(tiny_model, device="cpu")
    with pytest.raises(DataError, match="fewer than one block of 128"):
        evaluate_loss(model, np.zeros(100, dtype=np.uint16), seq_length=128)


def test_not_a_model_folder(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(DataError, match="not a model folder"):
        run_perplexity(tmp_path, tiny_dataset)
