"""Tokenizer stage: byte-level BPE for Python, trained from scratch on the published data, then evaluated.

GPT-2 style: byte-level pre-tokenizer and decoder, the 256-byte initial alphabet, `<|endoftext|>` as
bos = eos = unk, and curation's redaction placeholders (`<EMAIL>`, `<IP_ADDRESS>`, `<KEY>`, `<PASSWORD>`)
as special tokens, so each stays one token. Saved as a `PreTrainedTokenizerFast`, so
`AutoTokenizer.from_pretrained(folder)` loads it. Training streams the train split in batches (one batch
in memory at a time), on every file or on an exact, seeded sample of `max_files`.

The evaluation report (`eval.json`, `eval.md`) holds characters per token on the valid split next to a
smaller-vocabulary baseline trained on the same texts, whether every Python keyword and the common
indentation runs are single tokens, the longest tokens, and the decode(encode(x)) == x round trip of
every valid file.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import keyword
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
from pydantic import BaseModel, Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from codeparrot.artifacts import local_identity
from codeparrot.config import StageConfig
from codeparrot.curate.pii import PLACEHOLDERS
from codeparrot.dataset import count_rows, iter_parquet_batches, iter_text_batches, split_files
from codeparrot.env import home
from codeparrot.errors import ConfigError, writing
from codeparrot.hub import Hub, staging_folder

log = logging.getLogger(__name__)

TOKENIZER_VERSION = "2"  # 2: the redaction placeholders are special tokens
EOS = "<|endoftext|>"
EVAL_FILE = "eval.json"
MARKER = ".complete"
# Indentation as it precedes a statement: 1-3 levels of 4 spaces, 1-2 tabs.
# The smallest baseline: the 256-byte alphabet and EOS, no merges (the smallest vocab_size is 300).
BASELINE_MIN = 257
INDENTS = {"4 spaces": " " * 4, "8 spaces": " " * 8, "12 spaces": " " * 12, "tab": "\t", "2 tabs": "\t\t"}


class TokenizerConfig(StageConfig):
    """How the tokenizer is trained and evaluated."""

    vocab_size: int = Field(32768, ge=300, le=2**20, description="Vocabulary size (the book: 32,768).")
    min_frequency: int = Field(2, ge=1, description="Pairs seen fewer times are never merged.")
    max_files: int | None = Field(None, ge=1, description="Train on a seeded sample of this many files; None: all.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the file sample.")
    # The trainer buffers up to 256 items of its iterator ahead, so memory is ~256 * batch_size files.
    batch_size: int = Field(100, ge=1, description="Files per batch fed to the trainer (bounds memory).")
    baseline_vocab_size: int | None = Field(
        None,
        ge=BASELINE_MIN,
        description="Vocabulary of the smaller byte-level baseline the report compares against "
        "(default: a quarter of vocab_size, the book's 8,192 against 32,768).",
    )
    model_max_length: int = Field(1024, ge=16, description="Context length recorded in the tokenizer config.")
    name: str = Field("codeparrot/codeparrot-tokenizer", description="owner/name when pushed.")

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "name"})

    @model_validator(mode="before")
    @classmethod
    def _default_baseline(cls, data: Any) -> Any:
        """Derive the baseline's vocabulary from vocab_size when not given, so any valid vocab_size works alone."""
        if isinstance(data, dict) and data.get("baseline_vocab_size") is None:
            try:
                vocab = int(data.get("vocab_size", cls.model_fields["vocab_size"].default))
            except (TypeError, ValueError):
                return data  # the field's own validation reports it
            data = {**data, "baseline_vocab_size": baseline_for(vocab)}
        return data

    @model_validator(mode="after")
    def _baseline(self) -> TokenizerConfig:
        if self.baseline_vocab_size is not None and self.baseline_vocab_size >= self.vocab_size:
            raise ValueError(
                f"baseline_vocab_size ({self.baseline_vocab_size}) must be smaller than vocab_size ({self.vocab_size}): "
                "pass a smaller one, or leave it out for a quarter of vocab_size"
            )
        return self


def baseline_for(vocab_size: int) -> int:
    """The default baseline vocabulary: a quarter of `vocab_size`, at least the byte alphabet plus EOS."""
    return max(vocab_size // 4, BASELINE_MIN)


class TokenizerResult(BaseModel):
    """A trained tokenizer: its local folder, the dataset it was trained on, its report, where it was pushed."""

    path: str
    dataset: str  # the exact dataset reference (hf://datasets/...@REV, or a local folder)
    dataset_identity: str
    chars_per_token: float
    baseline_chars_per_token: float
    keywords_single_token: bool
    round_trip_ok: bool
    reused: bool = False
    uri: str | None = None  # hf://OWNER/NAME@REV once pushed
    new: bool = False  # the push made a revision the Hub target did not have

    def identity(self) -> str:
        return self.tokenizer_hash()

    def tokenizer_hash(self) -> str:
        return hashlib.sha256(Path(self.path, "tokenizer.json").read_bytes()).hexdigest()[:16]


def new_bpe(vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS, *PLACEHOLDERS.values()],
        show_progress=show_progress,
    )
    return tok, trainer


def wrap(tok: Tokenizer, *, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """The `transformers` face of a trained tokenizer: bos = eos = unk = `<|endoftext|>`."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        model_max_length=model_max_length,
        # Code is whitespace-exact: never "clean up" spaces before punctuation on decode.
        clean_up_tokenization_spaces=False,
    )


def train_bpe(
    batches: Iterable[list[str]],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    length: int | None = None,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train on an iterator of text batches (streamed: only one batch is held at a time)."""
    tok, trainer = new_bpe(vocab_size, min_frequency=min_frequency)
    tok.train_from_iterator(iter(batches), trainer=trainer, length=length)
    return wrap(tok, model_max_length=model_max_length)


def _file_key(seed: int, repo: str, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{repo}\0{path}".encode()).digest()[:8], "big")


def sample_keys(data: Path, max_files: int, seed: int) -> set[tuple[str, str]]:
    """The exact seeded sample: the `max_files` (repo_name, path) with the smallest keyed hash."""
    heap: list[tuple[int, str, str]] = []  # max-heap through negated keys
    for path in split_files(data, "train"):
        for batch in iter_parquet_batches(path, batch_size=10_000, columns=["repo_name", "path"]):
            for repo, p in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                item = (-_file_key(seed, repo, p), repo, p)
                if len(heap) < max_files:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
    return {(repo, p) for _, repo, p in heap}


def training_batches(data: Path, cfg: TokenizerConfig, *, progress: bool = True) -> tuple[Iterator[list[str]], int]:
    """Batches of train-split texts (all, or the seeded sample) and how many files they hold."""
    total = count_rows(data, "train")
    if cfg.max_files is None or cfg.max_files >= total:
        n = total
        source: Iterator[list[str]] = iter_text_batches(data, "train", batch_size=cfg.batch_size)
    else:
        keep = sample_keys(data, cfg.max_files, cfg.seed)
        n = len(keep)
        source = _sampled_batches(data, keep, cfg.batch_size)
    bar = tqdm(total=n, unit="file", desc="tokenizer", disable=not progress or None)

    def counted() -> Iterator[list[str]]:
        with bar:
            for batch in source:
                bar.update(len(batch))
                yield batch

    return counted(), n


def _sampled_batches(data: Path, keep: set[tuple[str, str]], batch_size: int) -> Iterator[list[str]]:
    out: list[str] = []
    for path in split_files(data, "train"):
        for batch in iter_parquet_batches(path, batch_size=batch_size, columns=["repo_name", "path", "content"]):
            cols = [batch.column(i).to_pylist() for i in range(3)]
            out.extend(c for r, p, c in zip(*cols, strict=True) if (r, p) in keep)
            if len(out) >= batch_size:
                yield out
                out = []
    if out:
        yield out


# -- evaluation ----------------------------------------------------------------------------------------
def chars_per_token(tok: Tokenizer, data: Path, split: str = "valid") -> tuple[float, int, int]:
    chars = tokens = 0
    for batch in iter_text_batches(data, split, batch_size=256):
        chars += sum(len(t) for t in batch)
        tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
    return (chars / tokens if tokens else 0.0), chars, tokens


def round_trip_failures(tok: PreTrainedTokenizerFast, data: Path, split: str = "valid") -> tuple[int, int, list[int]]:
    """decode(encode(x)) == x over a split: (files checked, failures, indices of the first failures)."""
    checked = 0
    bad: list[int] = []
    for batch in iter_text_batches(data, split, batch_size=256):
        encoded = [e.ids for e in tok.backend_tokenizer.encode_batch(batch, add_special_tokens=False)]
        decoded = tok.batch_decode(encoded, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for i, (src, back) in enumerate(zip(batch, decoded, strict=True)):
            if src != back:
                bad.append(checked + i)
        checked += len(batch)
    return checked, len(bad), bad[:10]


def keyword_report(tok: Tokenizer) -> dict[str, dict[str, Any]]:
    """Per keyword: tokens for the bare form (line start) and after a space (inside a line)."""
    report = {}
    for kind, words in (("hard", keyword.kwlist), ("soft", keyword.softkwlist)):
        for w in words:
            bare = len(tok.encode(w, add_special_tokens=False).ids)
            spaced = len(tok.encode(" " + w, add_special_tokens=False).ids)
            report[w] = {"kind": kind, "bare_tokens": bare, "spaced_tokens": spaced, "single_token": min(bare, spaced) == 1}
    return report


def indent_report(tok: Tokenizer) -> dict[str, dict[str, Any]]:
    """Tokens an indentation run costs in front of a statement (`return`), beyond the statement itself."""
    base = len(tok.encode("return", add_special_tokens=False).ids)
    out = {}
    for name, run in INDENTS.items():
        cost = len(tok.encode(run + "return", add_special_tokens=False).ids) - base
        out[name] = {"tokens": cost, "single_token": cost == 1}
    return out


def longest_tokens(tok: PreTrainedTokenizerFast, n: int = 20) -> list[str]:
    vocab = [tok.convert_tokens_to_string([t]) for t in tok.get_vocab() if t != EOS]
    return sorted(vocab, key=lambda s: (-len(s), s))[:n]


def evaluate(tok: PreTrainedTokenizerFast, baseline: Tokenizer | None, data: Path) -> dict[str, Any]:
    cpt, chars, tokens = chars_per_token(tok.backend_tokenizer, data)
    base_cpt = chars_per_token(baseline, data)[0] if baseline is not None else None
    checked, failures, examples = round_trip_failures(tok, data)
    kw = keyword_report(tok.backend_tokenizer)
    return {
        "vocab_size": len(tok),
        "valid_chars": chars,
        "valid_tokens": tokens,
        "chars_per_token": round(cpt, 4),
        "baseline_vocab_size": baseline.get_vocab_size() if baseline is not None else None,
        "baseline_chars_per_token": round(base_cpt, 4) if base_cpt is not None else None,
        "round_trip": {"files": checked, "failures": failures, "first_failures": examples},
        "keywords": kw,
        "hard_keywords_single_token": all(v["single_token"] for v in kw.values() if v["kind"] == "hard"),
        "soft_keywords_single_token": all(v["single_token"] for v in kw.values() if v["kind"] == "soft"),
        "indentation": indent_report(tok.backend_tokenizer),
        "longest_tokens": longest_tokens(tok),
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The evaluation as a markdown table (also a Prefect artifact)."""
    missing = [w for w, v in report["keywords"].items() if not v["single_token"]]
    lines = [
        "| metric | value |",
        "|---|---|",
        f"| vocabulary | {report['vocab_size']} |",
        f"| characters per token (valid) | {report['chars_per_token']:.3f} |",
        f"| baseline ({report['baseline_vocab_size']} vocab) chars/token | {report['baseline_chars_per_token']} |",
        "| book's 32,768-vocab tokenizer on its data | 3.62 |",
        f"| hard keywords single tokens | {report['hard_keywords_single_token']} |",
        f"| soft keywords single tokens | {report['soft_keywords_single_token']} |",
        f"| keywords that are not | {', '.join(missing) or '-'} |",
        f"| round trip decode(encode(x)) == x | {report['round_trip']['files'] - report['round_trip']['failures']}"
        f" / {report['round_trip']['files']} valid files |",
    ]
    lines += [f"| indentation: {k} | {v['tokens']} token(s) |" for k, v in report["indentation"].items()]
    longest = ", ".join(f"`{t!r}`" for t in report["longest_tokens"])
    return "\n".join(lines) + f"\n\nLongest tokens: {longest}\n"


# -- the stage -----------------------------------------------------------------------------------------
def default_output(dataset_identity: str, cfg: TokenizerConfig) -> Path:
    """Derived from the dataset's identity and the config, so a rerun with both unchanged is a no-op."""
    return home() / "tokenizers" / f"{dataset_identity}-{cfg.fingerprint(TOKENIZER_VERSION)[:10]}"


def load_result(out: Path) -> TokenizerResult | None:
    try:
        return TokenizerResult.model_validate_json((out / MARKER).read_text()).model_copy(update={"reused": True})
    except (OSError, ValueError):
        return None


def train_tokenizer(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: TokenizerConfig,
    *,
    dataset: str | None = None,
    dataset_identity: str | None = None,
    progress: bool = True,
) -> TokenizerResult:
    """Train, evaluate and save into `out` atomically (a completed `out` of the same dataset is reused).

    `data` is the dataset's local folder; `dataset` and `dataset_identity` name what it is a copy of
    (default: the folder itself and its content hash).
    """
    data_path, out_path = Path(data), Path(out)
    identity = dataset_identity or local_identity(data_path)
    done = load_result(out_path)
    if done is not None and done.dataset_identity == identity:
        log.info("tokenizer in %s is complete already; reusing it", out_path)
        return done
    if out_path.exists() and any(out_path.iterdir()):
        raise ConfigError(f"{out_path} exists and is not a finished tokenizer of this dataset: pick another OUT or remove it")
    split_files(data_path, "valid")  # fail early with a clear message if the dataset is incomplete
    t0 = time.monotonic()
    batches, n = training_batches(data_path, cfg, progress=progress)
    log.info("training a %d-token BPE on %d files of %s", cfg.vocab_size, n, dataset or data_path)
    tok = train_bpe(batches, cfg.vocab_size, min_frequency=cfg.min_frequency, length=n, model_max_length=cfg.model_max_length)
    train_s = time.monotonic() - t0
    base_batches, _ = training_batches(data_path, cfg, progress=False)
    assert cfg.baseline_vocab_size is not None  # filled in by the config
    baseline = train_bpe(base_batches, cfg.baseline_vocab_size, min_frequency=cfg.min_frequency).backend_tokenizer
    report = evaluate(tok, baseline, data_path)
    report.update(train_seconds=round(train_s, 2), train_files=n, dataset=dataset or str(data_path),
                  dataset_identity=identity, config=cfg.model_dump(mode="json"))  # fmt: skip

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with writing(out_path, "OUT"), tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        stage = Path(tmp) / "tok"
        tok.save_pretrained(stage)
        (stage / EVAL_FILE).write_text(json.dumps(report, indent=2))
        (stage / "eval.md").write_text(report_markdown(report))
        result = TokenizerResult(
            path=str(out_path),
            dataset=report["dataset"],
            dataset_identity=identity,
            chars_per_token=report["chars_per_token"],
            baseline_chars_per_token=report["baseline_chars_per_token"],
            keywords_single_token=report["hard_keywords_single_token"],
            round_trip_ok=report["round_trip"]["failures"] == 0,
        )
        (stage / MARKER).write_text(result.model_dump_json())
        if out_path.exists():
            out_path.rmdir()  # empty (checked above)
        os.replace(stage, out_path)
    log.info("tokenizer saved to %s: %.3f chars/token (baseline %.3f)", out_path, result.chars_per_token, result.baseline_chars_per_token)
    return result


def push_tokenizer(result: TokenizerResult, cfg: TokenizerConfig, hub: Hub, *, staging: Path | None = None) -> TokenizerResult:
    """Publish the tokenizer folder (without its completion marker) as repo `cfg.name`; the result with its URI."""
    with staging_folder(staging or home() / "staging", "tokenizer-") as tmp:
        copy = tmp / "tok"
        shutil.copytree(result.path, copy, ignore=shutil.ignore_patterns(MARKER))
        pushed = hub.push(copy, "model", cfg.name)
    log.info("tokenizer published: %s%s", pushed.uri, " (unchanged)" if pushed.skipped else "")
    return result.model_copy(update={"uri": pushed.uri, "new": not pushed.skipped})


@click.command("tokenizer")
@click.argument("data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--vocab-size", type=int, default=32768, show_default=True)
@click.option("--max-files", type=int, default=None, help="Train on a seeded sample of N files.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--baseline-vocab-size", type=int, default=None, help=TokenizerConfig.model_fields["baseline_vocab_size"].description)
@click.option("--name", default=None, help="owner/name of the tokenizer repo when pushed (default codeparrot/codeparrot-tokenizer).")
@click.option("--push/--no-push", default=False, help="Publish to the Hub target (the stand-in unless the Hub is configured).")
def tokenizer_command(data: str, out: Path | None, push: bool, **options: Any) -> None:
    """Train a byte-level BPE on DATA (hf://datasets/OWNER/NAME[@REV] or a published dataset folder) into OUT."""
    from codeparrot.services import ensure_storage

    # an invalid option is a pydantic ValidationError, which the CLI prints as one line (codeparrot.errors.explain)
    cfg = TokenizerConfig(**{k: v for k, v in options.items() if v is not None})
    with ensure_storage(data, hub=push) as resolver:
        dataset = resolver.resolve(data)
        out = out or default_output(dataset.identity, cfg)
        result = train_tokenizer(dataset.path, out, cfg, dataset=str(dataset.ref), dataset_identity=dataset.identity)
        click.echo((out / "eval.md").read_text())
        click.echo(f"{'reused' if result.reused else 'saved'} tokenizer: {out}")
        if push:
            click.echo(f"published: {push_tokenizer(result, cfg, resolver.hub).uri}")
