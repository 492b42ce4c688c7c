"""Token packing shared by training and evaluation: files joined by EOS, cut into fixed-length blocks.

A token file is a flat little-endian array on disk (uint16 when the vocabulary fits, else uint32) with an
EOS token after every file, read back through `np.memmap`. Block `i` of length L is tokens
`[i*L, (i+1)*L)`; the tail that does not fill a block is not used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_tokens(
    batches: Iterable[list[list[int]]],
    path: str | os.PathLike[str],
    *,
    eos_id: int,
    vocab_size: int,
) -> int:
    """Write each tokenized file plus EOS to `path` atomically (temp name, fsync, rename); the token count."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as fh:
            for batch in batches:
                flat: list[int] = []
                for ids in batch:
                    flat.extend(ids)
                    flat.append(eos_id)
                arr = np.asarray(flat, dtype=dtype)
                fh.write(arr.tobytes())
                count += arr.size
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def write_token_file(
    batches: Iterable[list[list[int]]],
    path: str | os.PathLike[str],
    *,
    eos_id: int,
    vocab_size: int,
) -> int:
    """`write_tokens`, then a sidecar `path.json` with dtype and count, written after the data is in place,
    so a token file without its sidecar is incomplete and is rebuilt."""
    target = Path(path)
    count = write_tokens(batches, target, eos_id=eos_id, vocab_size=vocab_size)
    meta = {"dtype": token_dtype(vocab_size).name, "tokens": count, "eos_id": eos_id, "vocab_size": vocab_size}
    target.with_name(target.name + ".json").write_text(json.dumps(meta))
    return count


def open_token_file(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The token array of a complete token file, or None when it is missing or incomplete."""
    target = Path(path)
    sidecar = target.with_name(target.name + ".json")
    if not (target.exists() and sidecar.exists()):
        return None
    meta = json.loads(sidecar.read_text())
    if target.stat().st_size != meta["tokens"] * np.dtype(meta["dtype"]).itemsize:
        return None
    if meta["tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(target, dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))


def num_blocks(tokens: np.ndarray, seq_length: int) -> int:
    return len(tokens) // seq_length


def block(tokens: np.ndarray, index: int, seq_length: int) -> np.ndarray:
    """Block `index` as int64 (what embedding layers take)."""
    start = index * seq_length
    return np.asarray(tokens[start : start + seq_length], dtype=np.int64)
