"""Training throughput: our loop vs a CodeParrot-style loop on the same model, in the same process.

Ours: pre-tokenized memory-mapped blocks, SDPA attention, bf16 autocast and torch.compile on GPU.
Seed-style (CodeParrot's scripts as in the book): ConstantLengthDataset tokenizing on the fly from a
shuffle buffer, fp32, eager attention, no compile, `loss.item()` every step.

    python bench/train_throughput.py                     # a stdlib sample dataset, tiny preset
    python bench/train_throughput.py --data D --tokenizer T --preset tiny --steps 40

With a GPU it also trains the small preset (GPT-2 124M shape) in bf16 with torch.compile and prints MFU
against the dense bf16 peak of the device (H100/H200 989 TFLOP/s, A100 312).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from codeparrot.dataset import iter_texts
from codeparrot.train.config import TrainConfig
from codeparrot.train.data import load_tokenizer, prepare_tokens
from codeparrot.train.loop import train
from codeparrot.train.presets import build_model, count_parameters, flops_per_token, peak_flops
from codeparrot.train.sample import train_sample_tokenizer, write_sample_dataset

log = logging.getLogger("bench")


def ours(config: TrainConfig, data: Path, tok: Path, out: Path) -> dict[str, float]:
    """tokens/s of the real training loop from its own metrics: over all steps, and steady state."""
    train(config, tok, out, data=data)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    intervals = [e for e in events if e["event"] == "train"]
    per_log = config.log_every * config.tokens_per_step()
    seconds = sum(per_log / e["tokens_per_s"] for e in intervals)
    steady = intervals[1:]  # the first interval holds torch.compile and allocator warm-up
    result = {
        "tokens_per_s": per_log * len(intervals) / seconds,
        "steady_tokens_per_s": statistics.median(e["tokens_per_s"] for e in steady),
    }
    if steady and steady[-1].get("mfu") is not None:
        result["mfu"] = statistics.median(e["mfu"] for e in steady)
    return result


class ConstantLengthDataset(torch.utils.data.IterableDataset):
    """CodeParrot's loader: fill a character buffer, tokenize it, cut it into seq_length chunks."""

    def __init__(self, tokenizer, texts: list[str], seq_length: int, num_of_sequences: int = 1024, chars_per_token: float = 3.6):
        self.tokenizer = tokenizer
        self.texts = texts
        self.seq_length = seq_length
        self.input_characters = seq_length * chars_per_token * num_of_sequences

    def __iter__(self) -> Iterator[torch.Tensor]:
        iterator = iter(self.texts)
        while True:
            buffer, buffer_len = [], 0
            while buffer_len < self.input_characters:
                try:
                    buffer.append(next(iterator))
                except StopIteration:
                    iterator = iter(self.texts)  # infinite, as the seed
                    continue
                buffer_len += len(buffer[-1])
            ids: list[int] = []
            for tokenized in self.tokenizer(buffer, truncation=False)["input_ids"]:
                ids.extend([*tokenized, self.tokenizer.eos_token_id])
            for i in range(0, len(ids), self.seq_length):
                chunk = ids[i : i + self.seq_length]
                if len(chunk) == self.seq_length:
                    yield torch.tensor(chunk)


def seed_style(config: TrainConfig, data: Path, tok_dir: Path) -> dict[str, float]:
    """tokens/s of the book's loop on the same model shape: fp32, eager attention, on-the-fly tokens."""
    from accelerate import Accelerator
    from transformers import get_scheduler

    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(config.seed)
    model = build_model(config, len(tokenizer), tokenizer.eos_token_id)
    model.set_attn_implementation("eager")  # what transformers 4.18 ran, with the upcast path
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)], "weight_decay": 0.1},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    optimizer = torch.optim.AdamW(groups, lr=config.peak_lr)
    scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)
    texts = list(iter_texts(data, "train"))
    # The seed's shuffle buffer reads 1024 sequences' worth of characters per refill.
    dataset = ConstantLengthDataset(tokenizer, texts, config.context_length, num_of_sequences=1024)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    tokens = 0
    start = time.perf_counter()  # from the first batch request: its buffer fill is part of the cost
    for step, batch in enumerate(loader, start=1):
        loss = model(batch, labels=batch).loss
        loss.item()  # the seed logs every step
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        tokens += batch.numel()
        if step >= config.max_steps:
            break
    return {"tokens_per_s": tokens / (time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="Published dataset folder (default: a stdlib sample).")
    parser.add_argument("--tokenizer", type=Path, help="Tokenizer folder (default: trained on the sample).")
    parser.add_argument("--vocab-size", type=int, default=8192, help="Vocabulary of the sample tokenizer.")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "large"])
    # 128 steps of 8 sequences use exactly one of the seed loader's 1024-sequence tokenizing buffers, so
    # its on-the-fly tokenizing is counted at its long-run rate.
    parser.add_argument("--steps", type=int, default=128, help="Optimizer steps of each loop.")
    parser.add_argument("--repeats", type=int, default=2, help="Alternating runs of each loop; best counts.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--gpu-batch-size", type=int, default=32, help="Batch of the small-preset MFU run.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or write_sample_dataset(tmp / "data", n_files=600)
        tok = args.tokenizer or train_sample_tokenizer(data, tmp / "tok", vocab_size=args.vocab_size)
        common = {
            "preset": args.preset, "batch_size": args.batch_size, "seq_length": args.seq_length,
            "max_steps": args.steps, "warmup_steps": 2, "save_every": 10**6, "save_every_minutes": None,
            "eval_every": 10**6, "eval_sequences": 8, "log_every": max(1, args.steps // 10),
            "token_cache": str(tmp / "tokens"),
        }
        t0 = time.perf_counter()
        prepare_tokens(data, tok, tmp / "tokens")
        pretok_s = time.perf_counter() - t0
        config = TrainConfig(**common)
        # Alternate the loops and keep each one's best run: the machine may be shared, and load that
        # comes and goes would otherwise decide the ratio.
        runs_ours, runs_seed = [], []
        for i in range(args.repeats):
            runs_ours.append(ours(config, data, tok, tmp / f"ours-{i}"))
            runs_seed.append(seed_style(config, data, tok))
        mine = max(runs_ours, key=lambda r: r["tokens_per_s"])
        seed = max(runs_seed, key=lambda r: r["tokens_per_s"])
        vocab = len(load_tokenizer(tok))
        print(f"model: {args.preset} preset, vocab {vocab}, {args.batch_size} x {args.seq_length} tokens per step, "
              f"{args.steps} steps, best of {args.repeats}, {torch.get_num_threads()} threads, "
              f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
        print(f"one-off pre-tokenization of the dataset: {pretok_s:.1f} s (cached afterwards)")
        print(f"{'loop':<12}{'tokens/s (all steps)':>22}")
        print(f"{'ours':<12}{mine['tokens_per_s']:>22.0f}")
        print(f"{'seed-style':<12}{seed['tokens_per_s']:>22.0f}")
        print(f"ratio ours / seed-style: {mine['tokens_per_s'] / seed['tokens_per_s']:.2f}x")

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            small = TrainConfig(**{
                **common, "preset": "small", "seq_length": 1024, "batch_size": args.gpu_batch_size,
                "mixed_precision": "bf16", "compile": True, "max_steps": max(args.steps, 30),
                "log_every": 5,
            })
            result = ours(small, data, tok, tmp / "small")
            with torch.device("meta"):
                model = build_model(small, vocab, 0)
            fpt = flops_per_token(count_parameters(model, exclude_positions=True), 12, 12, 64, 1024)
            peak = peak_flops(name)
            mfu = result.get("mfu", fpt * result["steady_tokens_per_s"] / peak if peak else math.nan)
            print(f"GPU {name}: small preset bf16 + compile, {args.gpu_batch_size} x 1024 tokens per step: "
                  f"{result['steady_tokens_per_s']:.0f} tokens/s steady, {fpt / 1e9:.2f} GFLOP/token, MFU {mfu:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
