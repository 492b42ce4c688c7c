"""Byte-level BPE for Python, trained from scratch (no pretrained tokenizer is downloaded).

GPT-2 style: byte-level pre-tokenizer and decoder, the 256-byte initial alphabet, `<|endoftext|>` as the
only special token (bos = eos = unk). Saved as a `PreTrainedTokenizerFast`, so
`AutoTokenizer.from_pretrained(folder)` loads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def new_bpe(vocab_size: int, *, min_frequency: int = 2) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS],
        show_progress=False,
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
    tok.train_from_iterator(_batches(batches), trainer=trainer, length=length)
    return wrap(tok, model_max_length=model_max_length)


def _batches(batches: Iterable[list[str]]) -> Iterator[list[str]]:
    yield from batches
