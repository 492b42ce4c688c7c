"""Stop strings, prompt encoding and seeded sampling on the tiny trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from codeparrot.evaluate.generation import (
    STOP_STRINGS,
    StopOnStrings,
    complete,
    cut_at_stop,
    encode_prompt,
    first_block,
    sample,
    token_budget,
)
from codeparrot.evaluate.model import load_model


@pytest.fixture(scope="module")
def lm(tiny_model: Path) -> tuple[Any, Any]:
    """(model, tokenizer) on the CPU."""
    return load_model(tiny_model, device="cpu")


def test_first_block_is_the_seeds() -> None:
    text = "\n    return a * b\n\ndef volume(a, b, c):\n    return a * b * c\n"
    assert first_block(text) == "\n    return a * b"
    for stop in STOP_STRINGS:
        assert first_block(f"    x = 1{stop} tail") == "    x = 1"
    assert first_block("    return 1   \n") == "    return 1"


def test_cut_at_stop_keeps_everything_before_the_first_stop() -> None:
    assert cut_at_stop("\n    return x\n\nif __name__ == '__main__':\n    main()") == "\n    return x\n"
    assert cut_at_stop("\n    if x:\n        return 1\n") == "\n    if x:\n        return 1\n"  # indented: not a stop
    assert cut_at_stop("no stop here") == "no stop here"
    assert cut_at_stop("\nprint(1)\n#x") == ""


def test_stop_criterion_marks_each_sequence(lm: tuple[Any, Any]) -> None:
    _, tok = lm
    prompt = tok("def f():", add_special_tokens=False)["input_ids"]
    done = tok("def f():\n    return 1\n\ndef g", add_special_tokens=False)["input_ids"]
    open_ = tok("def f():\n    return 1\n", add_special_tokens=False)["input_ids"]
    width = max(len(done), len(open_))
    pad = tok.eos_token_id
    batch = torch.tensor([done + [pad] * (width - len(done)), open_ + [pad] * (width - len(open_))])
    flags = StopOnStrings(len(prompt), tok)(batch, None)
    assert flags.tolist() == [True, False]
    # A stop string inside the prompt does not count: only generated text is checked.
    flags = StopOnStrings(len(done), tok)(torch.tensor([done]), None)
    assert flags.tolist() == [False]


def test_encode_prompt_starts_with_eos_and_keeps_the_tail(lm: tuple[Any, Any]) -> None:
    _, tok = lm
    ids, cut = encode_prompt(tok, "def add(a, b):\n    return a + b\n", 1000)
    assert ids[0] == tok.eos_token_id and not cut
    assert tok.decode(ids[1:]) == "def add(a, b):\n    return a + b\n"
    short, cut = encode_prompt(tok, "x = 1\n" * 100, 10)
    assert cut and len(short) == 10 and short[0] == tok.eos_token_id
    assert short[1:] == ids_tail(tok, "x = 1\n" * 100, 9)


def ids_tail(tok: Any, text: str, n: int) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"][-n:]


def test_token_budget() -> None:
    assert token_budget(1024, 256) == (256, 768)
    assert token_budget(128, 256) == (64, 64)  # a tiny context keeps half for the prompt


def test_sampling_is_seeded_and_batched(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    ids, _ = encode_prompt(tok, "def add(a, b):", 64)
    kwargs = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 12}
    a = sample(model, tok, ids, 5, batch_size=2, seed=3, **kwargs)
    b = sample(model, tok, ids, 5, batch_size=2, seed=3, **kwargs)
    c = sample(model, tok, ids, 5, batch_size=2, seed=4, **kwargs)
    assert len(a) == 5 and a == b
    assert a != c


def test_early_stopping_does_not_change_the_cut_completions(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    ids, _ = encode_prompt(tok, "import os\n", 64)
    kwargs = {"batch_size": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 40, "seed": 0}
    early = sample(model, tok, ids, 4, stop_early=True, **kwargs)
    full = sample(model, tok, ids, 4, stop_early=False, **kwargs)
    assert [cut_at_stop(t) for t in early] == [cut_at_stop(t) for t in full]
    assert sum(map(len, early)) <= sum(map(len, full))


def test_complete_returns_first_blocks(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    out = complete(model, tok, "def area(a, b):\n", n=3, max_new_tokens=24, seed=1)
    assert len(out) == 3
    for text in out:
        assert text == first_block(text)
    assert out == complete(model, tok, "def area(a, b):\n", n=3, max_new_tokens=24, seed=1)
