"""Training data: a token set (pre-tokenized shards) served as packed blocks in a seeded order.

The trainer takes references: a tokenizer, and a token set (`codeparrot.tokens`) or the dataset to build
one from. `pin_inputs` fixes the exact revisions before any heavy work (they enter the run's identity);
`fetch_tokens` makes the token set exist (built where none is committed yet) and gives a local copy.

Unlike CodeParrot's ConstantLengthDataset (tokenize on the fly, replay every batch on resume), the loader
here is a pure function of one integer, the number of sequences consumed, so a checkpoint stores that
integer and a resume continues at the next unseen block without reading anything it skipped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codeparrot.artifacts import Resolver
from codeparrot.errors import ConfigError, DataError
from codeparrot.packing import block, num_blocks
from codeparrot.storage import open_store
from codeparrot.tokens import TokenSet, build_token_set, read_manifest, token_set_key

log = logging.getLogger(__name__)
_TRANSFORMERS_IMPORT = threading.Lock()

# The files that define a tokenizer's output; tokenizer.json alone holds vocabulary, merges and
# pre-tokenizer of a fast tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class Inputs:
    """What a run trains on, pinned: exact references and the identities its run hash covers."""

    dataset: str
    dataset_identity: str
    tokenizer: str
    tokenizer_identity: str
    tokens: str

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("dataset", "dataset_identity", "tokenizer", "tokenizer_identity", "tokens")}


def pin_inputs(
    resolver: Resolver,
    *,
    tokenizer: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    tokens: str | os.PathLike[str] | None = None,
    token_root: str | os.PathLike[str],
) -> Inputs:
    """Exact references of the run's inputs. With `tokens`, its manifest names the dataset; without it the
    token set is `<token_root>/<dataset identity>-<tokenizer identity>` (built on first use)."""
    tok_ref = resolver.pin(tokenizer)
    tok_identity = resolver.identity(tok_ref)
    if tokens is not None:
        manifest = read_manifest(open_store(os.fspath(tokens)))
        if manifest is None:
            raise DataError(f"{tokens} is not a finished token set (no tokens.json): run pretokenize, or pass --data instead")
        if manifest.tokenizer_identity != tok_identity:
            raise ConfigError(
                f"token set {tokens} was built with tokenizer {manifest.tokenizer}, not {tok_ref}: "
                "pass the tokenizer it names, or pre-tokenize with this one"
            )
        if data is not None and resolver.identity(data) != manifest.dataset_identity:
            raise ConfigError(f"token set {tokens} was built from {manifest.dataset}, not {data}: pass matching references")
        return Inputs(manifest.dataset, manifest.dataset_identity, str(tok_ref), tok_identity, os.fspath(tokens))
    if data is None:
        raise ConfigError("training needs a dataset or a token set: pass --data (or --tokens)")
    data_ref = resolver.pin(data)
    data_identity = resolver.identity(data_ref)
    where = open_store(token_root).child(token_set_key(data_identity, tok_identity)).uri
    return Inputs(str(data_ref), data_identity, str(tok_ref), tok_identity, where)


def fetch_tokens(resolver: Resolver, inputs: Inputs) -> tuple[TokenSet, Path]:
    """The token set's manifest and a local copy, built first where it is not committed yet."""
    store = open_store(inputs.tokens)
    manifest = read_manifest(store)
    if manifest is None:
        log.info("no token set at %s yet: pre-tokenizing %s", inputs.tokens, inputs.dataset)
        dataset = resolver.resolve(inputs.dataset)
        tokenizer = resolver.resolve(inputs.tokenizer)
        manifest = build_token_set(dataset, tokenizer, store)
    local = store.local_path()
    folder = local if local is not None else resolver.resolve(inputs.tokens).path
    return manifest, folder


def prepare_tokens(
    data: str | os.PathLike[str], tokenizer: str | os.PathLike[str], token_root: str | os.PathLike[str],
    resolver: Resolver | None = None,
) -> Path:  # fmt: skip
    """The token set training on `data` with `tokenizer` uses (built under `token_root` if missing); its folder."""
    resolver = resolver or Resolver.from_env()
    return fetch_tokens(resolver, pin_inputs(resolver, tokenizer=tokenizer, data=data, token_root=token_root))[1]


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The saved fast tokenizer of `folder`, with an error naming the folder when it cannot be read."""
    root = Path(folder)
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"no tokenizer in {root} (expected tokenizer.json): pass a folder written by "
            "`codeparrot tokenizer` or `save_pretrained`"
        )
    # transformers imports its modules lazily, and two threads doing the first import at once can see
    # it half-done ("cannot import name 'AutoTokenizer'", seen with mapped pre-tokenization tasks).
    with _TRANSFORMERS_IMPORT:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(root))
        except (ValueError, OSError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"cannot load the tokenizer in {root} ({type(exc).__name__}: {detail}): its files are damaged or "
                "not a tokenizer; fetch it again or retrain it with `codeparrot tokenizer`"
            ) from exc
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer in {root} has no eos token: train it with `codeparrot tokenizer`")
    return tok


def check_blocks(tokens: Sized, seq_length: int, where: str) -> Any:
    """`tokens`, checked to hold at least one block of `seq_length`."""
    if len(tokens) // seq_length == 0:
        raise DataError(
            f"{where} holds {len(tokens)} tokens, fewer than one sequence of {seq_length}: "
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
