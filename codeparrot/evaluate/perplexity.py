"""Validation loss and perplexity, on the valid split packed exactly as training packs it.

Files are tokenized, joined with EOS after each and cut into blocks of the model's context length
(`codeparrot.packing`); the token file is cached by dataset and tokenizer identity, so a second model
with the same tokenizer reuses it. Loss is the mean next-token cross-entropy over all blocks, as in
CodeParrot's `evaluate()`; perplexity is its exponential.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from codeparrot import packing
from codeparrot.config import short_hash
from codeparrot.dataset import content_hash, iter_text_batches
from codeparrot.env import home
from codeparrot.errors import DataError, writing
from codeparrot.evaluate.model import context_length, load_model, model_identity
from codeparrot.tokens import MANIFEST, open_token_set

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SPLIT = "valid"


@dataclass(frozen=True)
class PerplexityResult:
    loss: float
    perplexity: float
    blocks: int
    tokens: int
    seq_length: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase, model_dir: str | os.PathLike[str]) -> str:
    """sha256 of tokenizer.json when the model folder has it, else of the whole model folder."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return model_identity(model_dir)


def _token_batches(tokenizer: PreTrainedTokenizerBase, data_dir: str | os.PathLike[str]) -> Iterator[list[list[int]]]:
    for texts in iter_text_batches(data_dir, SPLIT, batch_size=256):
        yield tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def valid_tokens(
    tokenizer: PreTrainedTokenizerBase,
    data_dir: str | os.PathLike[str],
    *,
    tokenizer_id: str,
    cache_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The packed valid split as a token array, built once per (dataset, tokenizer) and reused."""
    folder = Path(cache_dir) if cache_dir else home() / "eval" / "tokens"
    key = short_hash(content_hash(data_dir, (SPLIT,)), tokenizer_id, length=16)
    path = folder / f"{SPLIT}-{key}.tokens"
    tokens = packing.open_token_file(path)
    if tokens is None:
        log.info("tokenizing %s/%s into %s", data_dir, SPLIT, path)
        with writing(path, "--cache-dir (or CODEPARROT_HOME)"):
            count = packing.write_token_file(
                _token_batches(tokenizer, data_dir), path, eos_id=tokenizer.eos_token_id, vocab_size=len(tokenizer)
            )
        log.info("%d tokens", count)
        tokens = packing.open_token_file(path)
        if tokens is None:  # pragma: no cover - write_token_file just wrote both files
            raise DataError(f"token file {path} is incomplete right after writing it: is the disk full?")
    return tokens


@torch.inference_mode()
def evaluate_loss(
    model: PreTrainedModel,
    tokens: np.ndarray,
    *,
    seq_length: int,
    batch_size: int = 8,
    max_blocks: int | None = None,
) -> PerplexityResult:
    """Mean loss over the token array's blocks of seq_length, batch_size blocks per forward pass."""
    total = packing.num_blocks(tokens, seq_length)
    if max_blocks is not None:
        total = min(total, max_blocks)
    if total == 0:
        raise DataError(
            f"the {SPLIT} split has {len(tokens)} tokens, fewer than one block of {seq_length}: "
            "publish a larger valid split"
        )
    device = next(model.parameters()).device
    loss_sum = 0.0
    with tqdm(total=total, desc="perplexity", unit="block") as bar:
        for start in range(0, total, batch_size):
            rows = range(start, min(start + batch_size, total))
            batch = torch.from_numpy(np.stack([packing.block(tokens, i, seq_length) for i in rows])).to(device)
            loss = model(input_ids=batch, labels=batch).loss
            # Every block has seq_length - 1 targets, so block-weighted means equal the token mean.
            loss_sum += float(loss) * len(rows)
            bar.update(len(rows))
    mean = loss_sum / total
    ppl = math.exp(mean) if mean < 700 else math.inf  # exp overflows a double past ~709
    return PerplexityResult(loss=mean, perplexity=ppl, blocks=total, tokens=total * seq_length, seq_length=seq_length)


def run_perplexity(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    max_blocks: int | None = None,
    device: str | None = None,
    dtype: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> PerplexityResult:
    """Load the model, pack the valid split with its tokenizer, and measure loss and perplexity."""
    model, tokenizer = load_model(model_dir, device=device, dtype=dtype)
    if (Path(data_dir) / MANIFEST).is_file():  # a token set: its valid split, tokenized as training saw it
        manifest, splits = open_token_set(data_dir)
        if manifest.vocab_size != len(tokenizer):
            raise DataError(
                f"token set {data_dir} was built with a {manifest.vocab_size}-token vocabulary, the model's "
                f"tokenizer has {len(tokenizer)}: evaluate on the dataset instead, or on the model's own token set"
            )
        tokens = splits[SPLIT]
    else:
        tokens = valid_tokens(tokenizer, data_dir, tokenizer_id=tokenizer_identity(tokenizer, model_dir), cache_dir=cache_dir)
    result = evaluate_loss(model, tokens, seq_length=context_length(model), batch_size=batch_size, max_blocks=max_blocks)
    log.info("loss %.4f, perplexity %.2f over %d blocks", result.loss, result.perplexity, result.blocks)
    return result
