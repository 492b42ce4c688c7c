"""A small published dataset and tokenizer built from the installed standard library, offline and repeatable.

For tests and the throughput bench: real Python files in the published layout, no download.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codeparrot.dataset import iter_text_batches

_COLUMNS = ("repo_name", "path", "copies", "size", "content", "license")


def stdlib_files(limit: int, *, min_size: int = 1024, max_size: int = 60_000) -> list[Path]:
    """The first `limit` standard-library modules (sorted by path) sized like CodeParrot's query keeps."""
    root = Path(sysconfig.get_paths()["stdlib"])
    picked = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        if min_size <= path.stat().st_size <= max_size:
            picked.append(path)
            if len(picked) == limit:
                break
    return picked


def write_sample_dataset(folder: str | os.PathLike[str], n_files: int = 300, *, valid_every: int = 10) -> Path:
    """`folder/data/{train,valid}-00000-of-00001.parquet` from stdlib files; every Nth goes to valid."""
    root = Path(folder)
    (root / "data").mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows: dict[str, list[dict[str, object]]] = {"train": [], "valid": []}
    for i, path in enumerate(stdlib_files(n_files)):
        text = path.read_text(encoding="utf-8", errors="replace")
        split = "valid" if i % valid_every == valid_every - 1 else "train"
        rows[split].append(
            {
                "repo_name": "python/cpython",
                "path": str(path.relative_to(stdlib)),
                "copies": "1",
                "size": str(len(text.encode())),
                "content": text,
                "license": "psf-2.0",
            }
        )
    for split, records in rows.items():
        table = pa.Table.from_pylist(records, schema=pa.schema([(c, pa.string()) for c in _COLUMNS]))
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def train_sample_tokenizer(data: str | os.PathLike[str], folder: str | os.PathLike[str], vocab_size: int = 1024) -> Path:
    """A byte-level BPE trained on the train split, saved with `save_pretrained`."""
    from codeparrot.tokenizer import train_bpe

    tok = train_bpe(iter_text_batches(data, "train", batch_size=100), vocab_size=vocab_size)
    tok.save_pretrained(str(folder))
    return Path(folder)
