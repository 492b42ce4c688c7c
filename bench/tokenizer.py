"""Tokenizer training: our streamed Parquet feed vs `tokenizers` on an in-memory list of the same texts.

Both train the same byte-level BPE (same vocabulary, same trainer settings) in this process, alternating
A B A B so machine drift hits both; prints each time and the ratio ours / in-memory (goal: <= 1.15).

    python bench/tokenizer.py [DATASET] [--vocab-size 32768] [--repeats 3] [--max-files N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import codeparrot  # noqa: F401 - offline environment
from codeparrot.dataset import iter_texts
from codeparrot.tokenizer import TokenizerConfig, new_bpe, training_batches


def train_streamed(data: Path, cfg: TokenizerConfig) -> float:
    batches, n = training_batches(data, cfg, progress=False)
    tok, trainer = new_bpe(cfg.vocab_size, min_frequency=cfg.min_frequency)
    t = time.perf_counter()
    tok.train_from_iterator(batches, trainer=trainer, length=n)
    return time.perf_counter() - t


def train_in_memory(texts: list[str], cfg: TokenizerConfig) -> float:
    tok, trainer = new_bpe(cfg.vocab_size, min_frequency=cfg.min_frequency)
    t = time.perf_counter()
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default="hf://datasets/codeparrot/codeparrot-clean",
                    help="published dataset: hf://datasets/OWNER/NAME[@REV] or a folder (default: the head)")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-files", type=int, default=None)
    args = ap.parse_args()
    from codeparrot.services import ensure_storage

    with ensure_storage(args.data) as resolver:
        data = resolver.resolve(args.data).path
    cfg = TokenizerConfig(vocab_size=args.vocab_size, max_files=args.max_files)
    if cfg.max_files:
        texts = [t for batch in training_batches(data, cfg, progress=False)[0] for t in batch]
    else:
        texts = list(iter_texts(data, "train"))
    ours, ref = [], []
    for _ in range(args.repeats):
        ours.append(train_streamed(data, cfg))
        ref.append(train_in_memory(texts, cfg))
    ratios = [a / b for a, b in zip(ours, ref, strict=True)]
    print(json.dumps({
        "dataset": str(data), "files": len(texts), "mib": round(sum(map(len, texts)) / 2**20, 1),
        "vocab_size": cfg.vocab_size, "streamed_s": [round(x, 2) for x in ours], "in_memory_s": [round(x, 2) for x in ref],
        "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
