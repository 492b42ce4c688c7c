"""Training data: splits tokenized once into flat token files, served as packed blocks in a seeded order.

Unlike CodeParrot's ConstantLengthDataset (tokenize on the fly, replay every batch on resume), the loader
here is a pure function of one integer, the number of sequences consumed, so a checkpoint stores that
integer and a resume continues at the next unseen block without reading anything it skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from codeparrot.dataset import count_rows, dataset_revision, iter_text_batches
from codeparrot.env import home
from codeparrot.errors import DataError
from codeparrot.packing import block, num_blocks, open_token_file, write_token_file
from codeparrot.train.identity import tokenizer_hash

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.bin", "valid": "valid.bin"}


def token_cache_dir(
    data: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    cache_root: str | os.PathLike[str] | None = None,
) -> Path:
    """`<cache_root or CODEPARROT_HOME/tokens>/<dataset revision>-<tokenizer hash>`."""
    root = Path(cache_root) if cache_root is not None else home() / "tokens"
    return root / f"{dataset_revision(data)}-{tokenizer_hash(tokenizer)}"


def pretokenize(
    data: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    cache_root: str | os.PathLike[str] | None = None,
    *,
    tokenizer: Any = None,
    batch_size: int = 256,
) -> dict[str, Path]:
    """Token files of the train and valid splits, built only where missing or incomplete."""
    folder = token_cache_dir(data, tokenizer_dir, cache_root)
    paths: dict[str, Path] = {}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        paths[split] = path
        if open_token_file(path) is not None:
            log.info("token file %s is cached", path)
            continue
        if tokenizer is None:
            tokenizer = load_tokenizer(tokenizer_dir)
        rows = count_rows(data, split)
        log.info("tokenizing %d %s files into %s", rows, split, path)
        with tqdm(total=rows, desc=f"tokenize {split}", unit="file", disable=None) as bar:
            count = write_token_file(
                _encoded_batches(data, split, tokenizer, batch_size, bar),
                path,
                eos_id=tokenizer.eos_token_id,
                vocab_size=len(tokenizer),
            )
        log.info("%s: %d tokens", path, count)
    return paths


def _encoded_batches(data: str | os.PathLike[str], split: str, tokenizer: Any, batch_size: int, bar: tqdm) -> Iterator[list[list[int]]]:
    backend = tokenizer.backend_tokenizer
    for texts in iter_text_batches(data, split, batch_size=batch_size):
        # The backend tokenizer directly: no special tokens, no "longer than model_max_length" warnings.
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        bar.update(len(texts))
        yield [enc.ids for enc in encodings]


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The saved fast tokenizer of `folder`, with an error naming the folder when it cannot be read."""
    from transformers import AutoTokenizer

    tokenizer_hash(folder)  # raises a clear error for a folder without a tokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer in {folder} has no eos token: train it with `codeparrot tokenizer`")
    return tok


def open_tokens(path: str | os.PathLike[str], seq_length: int) -> np.ndarray:
    """The memmapped token array of a split, checked to hold at least one block."""
    tokens = open_token_file(path)
    if tokens is None:
        raise DataError(f"token file {path} is missing or incomplete: rerun to rebuild it")
    if num_blocks(tokens, seq_length) == 0:
        raise DataError(
            f"{path} holds {len(tokens)} tokens, fewer than one sequence of {seq_length}: "
            "use a larger dataset or a shorter seq_length"
        )
    return tokens


class PackedLoader:
    """Seeded, resumable stream of fixed-length blocks for one rank of a data-parallel run.

    Global sequence `i` is block `perm_e[i % n]` of epoch `e = i // n`, where `perm_e` is a permutation
    seeded by (seed, e). Each call hands out the next `world_size * batch_size` global sequences; this
    rank keeps rows `[rank * batch_size, (rank + 1) * batch_size)`.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_length: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tokens = tokens
        self.seq_length = seq_length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.n_blocks = num_blocks(tokens, seq_length)
        if self.n_blocks == 0:
            raise DataError(f"no full sequence of {seq_length} tokens in {len(tokens)} tokens")
        self.consumed = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def block_index(self, i: int) -> int:
        """The block served as global sequence `i`."""
        epoch, pos = divmod(i, self.n_blocks)
        return int(self._permutation(epoch)[pos])

    def next_batch(self) -> np.ndarray:
        """This rank's `[batch_size, seq_length]` int64 rows of the next global batch."""
        start = self.consumed + self.rank * self.batch_size
        rows = [block(self.tokens, self.block_index(start + j), self.seq_length) for j in range(self.batch_size)]
        self.consumed += self.world_size * self.batch_size
        return np.stack(rows)

    @property
    def epoch(self) -> float:
        return self.consumed / self.n_blocks

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "seed": self.seed, "n_blocks": self.n_blocks, "seq_length": self.seq_length}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the last consumed sequence; refuses a state from other data or another seed."""
        mine = self.state_dict()
        for key in ("seed", "n_blocks", "seq_length"):
            if state[key] != mine[key]:
                raise DataError(
                    f"checkpoint loader state has {key}={state[key]}, this run {mine[key]}: the token data "
                    "changed under the run; start fresh with another output folder"
                )
        self.consumed = int(state["consumed"])


def validation_batches(
    tokens: np.ndarray, seq_length: int, batch_size: int, max_sequences: int, *, rank: int = 0, world_size: int = 1
) -> Iterator[np.ndarray]:
    """This rank's share of the first `max_sequences` validation blocks, in order, in batches."""
    total = min(num_blocks(tokens, seq_length), max_sequences)
    mine = list(range(rank, total, world_size))
    for start in range(0, len(mine), batch_size):
        yield np.stack([block(tokens, i, seq_length) for i in mine[start : start + batch_size]])
