"""HumanEval throughput benchmark: `run_humaneval` on a freshly initialised model of a training preset.

Builds a byte-level BPE from this Python's standard library and a randomly initialised GPT-2 of the preset
(nothing is downloaded), saves both as a model folder, then runs the HumanEval stage on it and prints one
JSON object: generation samples/s, execution time after generation, totals. Random weights almost never
emit a stop string, so every sample runs the full --max-new-tokens: the worst case per sample, and an
upper bound on the time a trained model needs for the same settings.

    .venv/bin/python bench/evaluate_humaneval.py --preset small --limit 20 --n-samples 200 --batch-size 200
    .venv/bin/python bench/evaluate_humaneval.py --preset tiny --limit 2 --n-samples 4 --max-new-tokens 32  # CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import sysconfig
import tempfile
import time
from pathlib import Path


def stdlib_texts(max_files: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files[:max_files]]


def build_model_folder(folder: Path, preset: str, vocab_size: int, max_files: int) -> dict[str, object]:
    import torch

    from codeparrot.tokenizer import train_bpe
    from codeparrot.train.config import TrainConfig
    from codeparrot.train.presets import build_model

    t0 = time.perf_counter()
    tokenizer = train_bpe([stdlib_texts(max_files)], vocab_size=vocab_size)
    torch.manual_seed(0)
    model = build_model(TrainConfig(preset=preset), len(tokenizer), tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "preset": preset,
        "parameters_m": round(model.num_parameters() / 1e6, 1),
        "vocab": len(tokenizer),
        "build_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "large"])
    parser.add_argument("--vocab", type=int, default=32768, help="BPE size (CodeParrot: 32768).")
    parser.add_argument("--tokenizer-files", type=int, default=400, help="Stdlib files to train the BPE on.")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from codeparrot.evaluate.config import EvalConfig
    from codeparrot.evaluate.humaneval import run_humaneval

    with tempfile.TemporaryDirectory(prefix="bench-humaneval-") as tmp:
        folder = Path(tmp) / "final"
        info = build_model_folder(folder, args.preset, args.vocab, args.tokenizer_files)
        cfg = EvalConfig(
            run_perplexity=False, limit=args.limit, n_samples=args.n_samples, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, workers=args.workers, dtype=args.dtype,
        )
        summary = run_humaneval(folder, cfg, out_dir=Path(tmp) / "out")
    report = {
        **info,
        "device": summary["device"],
        "dtype": summary["dtype"],
        "problems": summary["problems"],
        "n_samples": summary["n_samples"],
        "batch_size": args.batch_size,
        "max_new_tokens": summary["max_new_tokens_used"],
        "samples": summary["generation"]["samples"],
        "generation_s": summary["generation"]["seconds"],
        "samples_per_s": summary["generation"]["samples_per_s"],
        "unique_programs": summary["execution"]["unique_programs"],
        "execution_after_generation_s": summary["execution"]["seconds_after_generation"],
        "total_s": summary["total_seconds"],
        "pass_at_k": {k: summary[k] for k in summary["pass_at_k"]},
        "sandbox": summary["sandbox"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
