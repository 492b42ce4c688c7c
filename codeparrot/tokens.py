"""Pre-tokenization: a dataset revision and a tokenizer revision turned into token shards plus a manifest.

One token shard per Parquet shard of each split (`train-00000.bin`: every file's tokens followed by EOS,
little-endian uint16 or uint32 as `codeparrot.packing` writes them), so shards are tokenized in parallel
(mapped tasks, on Dask when asked) on the CPU pool, and the training machine only downloads them. A
token set lives in a Store under `<root>/<dataset identity>-<tokenizer identity>/` and counts only once
its manifest `tokens.json` exists: written last, and only if absent. The shards of a split, in manifest
order, concatenate to exactly the stream one big token file would hold, so the loader's position (the
sequences consumed) means the same whatever the shard count: nothing replayed, nothing skipped.
"""

from __future__ import annotations

import bisect
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from codeparrot.artifacts import Resolved
from codeparrot.config import StageConfig
from codeparrot.dataset import SPLITS, TEXT_COLUMN, iter_parquet_batches, parquet_file, split_files
from codeparrot.errors import DataError, writing
from codeparrot.hub import file_sha256
from codeparrot.packing import token_dtype, write_tokens
from codeparrot.storage import ABSENT, Conflict, Store

log = logging.getLogger(__name__)

TOKENS_VERSION = "1"
MANIFEST = "tokens.json"


class PretokenizeConfig(StageConfig):
    """Where token sets are stored and how shards are read."""

    root: str = Field(
        "gs://codeparrot-artifacts/tokens",
        description="gs://BUCKET/PREFIX or a local folder; each token set goes under DATASET-TOKENIZER/ (their identities).",
    )
    # encode_batch over 256 files at a time keeps memory at a few MB per thread.
    batch_size: int = Field(256, ge=1, description="Files tokenized per batch.")
    # The tokenizer releases the GIL, so threads use the cores even for a dataset of one big shard.
    threads: int = Field(2, ge=1, le=64, description="Threads tokenizing the row groups of one shard.")

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"root", "batch_size", "threads"})


class TokenShard(BaseModel):
    split: str
    index: int
    name: str
    source: str  # the Parquet shard, relative to the dataset folder
    files: int
    tokens: int
    bytes: int
    sha256: str


class TokenSet(BaseModel):
    """The manifest: what was tokenized with what, and every shard with its size and checksum."""

    version: str = TOKENS_VERSION
    dataset: str
    dataset_identity: str
    tokenizer: str
    tokenizer_identity: str
    dtype: str
    eos_id: int
    vocab_size: int
    lineage: dict[str, Any] = Field(default_factory=dict)
    shards: list[TokenShard]

    def split(self, name: str) -> list[TokenShard]:
        return sorted((s for s in self.shards if s.split == name), key=lambda s: s.index)

    def tokens(self, split: str) -> int:
        return sum(s.tokens for s in self.split(split))


@dataclass(frozen=True)
class ShardJob:
    """One Parquet shard to tokenize."""

    split: str
    index: int
    source: str

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}.bin"


def token_set_key(dataset_identity: str, tokenizer_identity: str) -> str:
    return f"{dataset_identity[:16]}-{tokenizer_identity[:16]}"


def plan(dataset_dir: Path) -> list[ShardJob]:
    """Every Parquet shard of every split, in the order the loader concatenates them."""
    return [
        ShardJob(split, i, path.relative_to(dataset_dir).as_posix())
        for split in SPLITS
        for i, path in enumerate(split_files(dataset_dir, split))
    ]


def tokenize_shard(
    dataset_dir: Path, job: ShardJob, tokenizer: Any, out: Path, *, batch_size: int = 256, threads: int = 1
) -> TokenShard:
    """Tokenize one Parquet shard into `out` (each file's ids, then EOS); its manifest entry.

    Row groups are tokenized `threads` at a time and written in their order, so the bytes do not depend
    on the thread count and at most `threads` row groups of tokens are held at once.
    """
    backend = tokenizer.backend_tokenizer
    source = dataset_dir / job.source

    def encode(group: int) -> list[list[int]]:
        ids: list[list[int]] = []
        # one reader per call: threads do not share a file handle
        for batch in iter_parquet_batches(source, batch_size=batch_size, columns=[TEXT_COLUMN], row_groups=[group]):
            # The backend tokenizer directly: no special tokens, no "longer than model_max_length" warnings.
            ids += [enc.ids for enc in backend.encode_batch_fast(batch.column(0).to_pylist(), add_special_tokens=False)]
        return ids

    files = 0

    def in_order() -> Iterator[list[list[int]]]:
        nonlocal files
        groups = parquet_file(source).num_row_groups
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, groups, threads):
                for ids in pool.map(encode, range(start, min(start + threads, groups))):
                    files += len(ids)
                    yield ids

    try:
        with writing(out, "TMPDIR"):
            count = write_tokens(in_order(), out, eos_id=tokenizer.eos_token_id, vocab_size=len(tokenizer))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot tokenize {source}: {exc}") from exc
    return TokenShard(split=job.split, index=job.index, name=job.name, source=job.source, files=files,
                      tokens=count, bytes=out.stat().st_size, sha256=file_sha256(out))  # fmt: skip


def read_manifest(store: Store) -> TokenSet | None:
    found = store.read(MANIFEST)
    if found is None:
        return None
    try:
        return TokenSet.model_validate_json(found[0])
    except ValueError as exc:
        raise DataError(f"{store.describe(MANIFEST)} is not a token-set manifest: {exc}") from exc


def commit(store: Store, manifest: TokenSet) -> TokenSet:
    """Write the manifest if no other writer did; the one that counts."""
    try:
        store.write(MANIFEST, manifest.model_dump_json(indent=1).encode(), if_generation=ABSENT)
    except Conflict:
        existing = read_manifest(store)
        assert existing is not None
        log.info("token set %s was committed concurrently; keeping the first manifest", store.uri)
        return existing
    return manifest


def manifest_for(
    dataset: Resolved, tokenizer: Resolved, tokenizer_obj: Any, shards: Sequence[TokenShard], lineage: dict[str, Any]
) -> TokenSet:
    return TokenSet(
        dataset=str(dataset.ref), dataset_identity=dataset.identity,
        tokenizer=str(tokenizer.ref), tokenizer_identity=tokenizer.identity,
        dtype=token_dtype(len(tokenizer_obj)).name, eos_id=tokenizer_obj.eos_token_id, vocab_size=len(tokenizer_obj),
        lineage=lineage, shards=sorted(shards, key=lambda s: (SPLITS.index(s.split), s.index)),
    )  # fmt: skip


def tokenize_and_upload(
    dataset_dir: Path, job: ShardJob, tokenizer: Any, store: Store, *, batch_size: int = 256, threads: int = 1
) -> TokenShard:
    """One shard: tokenize into a temp file, upload it under its name, return its manifest entry."""
    with tempfile.TemporaryDirectory(prefix="tokens-") as tmp:
        shard = tokenize_shard(dataset_dir, job, tokenizer, Path(tmp) / job.name, batch_size=batch_size, threads=threads)
        store.upload(job.name, Path(tmp) / job.name)
    log.info("%s: %d files -> %d tokens (%s)", job.source, shard.files, shard.tokens, store.describe(job.name))
    return shard


def build_token_set(
    dataset: Resolved, tokenizer: Resolved, store: Store, *, batch_size: int = 256, threads: int = 2
) -> TokenSet:
    """Tokenize every shard of a resolved dataset (shard after shard, `threads` each) into `store`; reuse a
    committed set."""
    from codeparrot.publish import dataset_lineage
    from codeparrot.train.data import load_tokenizer

    done = read_manifest(store)
    if done is not None:
        return done
    tok = load_tokenizer(tokenizer.path)
    jobs = plan(dataset.path)
    shards = [tokenize_and_upload(dataset.path, j, tok, store, batch_size=batch_size, threads=threads) for j in jobs]
    return commit(store, manifest_for(dataset, tokenizer, tok, shards, dataset_lineage(dataset.path)))


# ---------------------------------------------------------------------------- reading


class ShardedTokens:
    """The token shards of one split read as one array: `len()` and contiguous slices across shards."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.uint16)

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ShardedTokens supports contiguous slices only")
        start, stop, _ = index.indices(len(self))
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        pieces = []
        shard = bisect.bisect_right(self.starts, start) - 1
        while start < stop:
            offset = start - self.starts[shard]
            take = min(stop, self.starts[shard + 1]) - start
            pieces.append(self.parts[shard][offset : offset + take])
            start += take
            shard += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def open_token_set(folder: str | os.PathLike[str]) -> tuple[TokenSet, dict[str, ShardedTokens]]:
    """The manifest of a local token-set folder and each split as a memory-mapped ShardedTokens."""
    root = Path(folder)
    try:
        manifest = TokenSet.model_validate_json((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataError(f"{root} has no {MANIFEST}: not a finished token set (pre-tokenize the dataset first)") from None
    except ValueError as exc:
        raise DataError(f"{root / MANIFEST} is not a token-set manifest: {exc}") from exc
    splits = {}
    for split in SPLITS:
        parts = []
        for shard in manifest.split(split):
            path = root / shard.name
            size = path.stat().st_size if path.is_file() else -1
            if size != shard.bytes:
                raise DataError(f"token shard {path} has {size} bytes, the manifest says {shard.bytes}: fetch the token set again")
            parts.append(np.memmap(path, dtype=manifest.dtype, mode="r") if shard.tokens else np.zeros(0, manifest.dtype))
        splits[split] = ShardedTokens(parts)
    return manifest, splits
