"""The published dataset layout, shared by publish (writer) and tokenizer / train / evaluate (readers).

A dataset folder holds Parquet shards in the Hugging Face Hub layout,
`data/{split}-00000-of-000NN.parquet`, with the export columns (`repo_name`, `path`, `copies`, `size`,
`content`, `license`), and a dataset card `README.md`. `datasets.load_dataset(folder)` reads it as is.
Readers here stream record batches with pyarrow so no split is ever held in memory whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from codeparrot.errors import DataError

SPLITS = ("train", "valid")
TEXT_COLUMN = "content"


def split_files(root: str | os.PathLike[str], split: str) -> list[Path]:
    """The Parquet shards of one split, in order; an error naming the folder when there are none."""
    folder = Path(root)
    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise DataError(
            f"no data/{split}-*.parquet in {folder}: pass a dataset folder written by `codeparrot publish`"
        )
    return files


@contextlib.contextmanager
def reading_parquet(path: str | os.PathLike[str]) -> Iterator[None]:
    """A damaged or non-Parquet file read inside the block becomes a DataError naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:  # pyarrow raises ArrowInvalid, or OSError for bad pages
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"{path} does not exist: fetch or publish the dataset again") from exc
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a readable Parquet file ({detail}): fetch or publish the dataset again") from exc


def parquet_file(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """`pq.ParquetFile(path)`, or a DataError naming the file when it is damaged or not Parquet."""
    with reading_parquet(path):
        return pq.ParquetFile(path)


def iter_parquet_batches(path: str | os.PathLike[str], **kwargs: Any) -> Iterator[pa.RecordBatch]:
    """`ParquetFile.iter_batches(**kwargs)` of one file; damage found mid-file is a DataError naming it."""
    pf = parquet_file(path)
    with reading_parquet(path):
        yield from pf.iter_batches(**kwargs)


def iter_text_batches(
    root: str | os.PathLike[str],
    split: str,
    *,
    batch_size: int = 1000,
    column: str = TEXT_COLUMN,
) -> Iterator[list[str]]:
    """Yield lists of at most `batch_size` texts, streaming shard by shard (bounded memory)."""
    for path in split_files(root, split):
        names = parquet_file(path).schema_arrow.names
        if column not in names:
            raise DataError(f"{path} has no column {column!r} (columns: {', '.join(names)})")
        for batch in iter_parquet_batches(path, batch_size=batch_size, columns=[column]):
            yield batch.column(0).to_pylist()


def iter_texts(root: str | os.PathLike[str], split: str, *, column: str = TEXT_COLUMN) -> Iterator[str]:
    for batch in iter_text_batches(root, split, column=column):
        yield from batch


def count_rows(root: str | os.PathLike[str], split: str) -> int:
    return sum(parquet_file(p).metadata.num_rows for p in split_files(root, split))


def content_hash(root: str | os.PathLike[str], splits: tuple[str, ...] = SPLITS) -> str:
    """sha256 over the split shards' names and bytes: the dataset identity downstream caches key on."""
    h = hashlib.sha256()
    for split in splits:
        for path in split_files(root, split):
            h.update(path.name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def dataset_revision(root: str | os.PathLike[str]) -> str:
    """The published revision id (from `.revision` written by publish), else the content hash."""
    marker = Path(root) / ".revision"
    if marker.exists():
        return marker.read_text().strip()
    return content_hash(root)[:16]
