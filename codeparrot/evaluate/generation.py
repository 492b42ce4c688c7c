"""Sampling code completions: eos + prompt in, completions cut at the first stop string out."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# CodeParrot's (and Codex's) end of a function body: a new top-level statement begins.
STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")
_STOP_RE = re.compile("|".join(re.escape(s) for s in STOP_STRINGS))


def first_block(text: str) -> str:
    """The seed's `first_block`: the completion up to the first stop string, trailing space removed."""
    return _STOP_RE.split(text, maxsplit=1)[0].rstrip()


def cut_at_stop(text: str) -> str:
    """The completion up to (not including) the first stop string; all of it when there is none."""
    match = _STOP_RE.search(text)
    return text[: match.start()] if match else text


class StopOnStrings(StoppingCriteria):
    """Marks each sequence done once its generated text holds a stop string; generate ends when all are."""

    def __init__(self, prompt_length: int, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str] = STOP_STRINGS):
        self.prompt_length = prompt_length
        self.tokenizer = tokenizer
        self.stops = tuple(stops)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def token_budget(context: int, max_new_tokens: int) -> tuple[int, int]:
    """(new tokens, prompt tokens) that fit the context; new tokens get at most half of it."""
    new = max_new_tokens
    if new > context // 2:
        new = context // 2
        log.warning("max_new_tokens %d does not fit a %d-token context with a prompt: using %d", max_new_tokens, context, new)
    return new, context - new


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_tokens: int) -> tuple[list[int], bool]:
    """eos + prompt (the model saw eos before every file in training), left-truncated to max_tokens.

    Returns the ids and whether the prompt was truncated.
    """
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    keep = max_tokens - 1
    truncated = len(ids) > keep
    if truncated:
        ids = ids[len(ids) - keep :]
    return [tokenizer.eos_token_id, *ids], truncated


@torch.inference_mode()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    n: int,
    *,
    batch_size: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    stop_early: bool = True,
) -> list[str]:
    """n sampled completions of one prompt (raw text after the prompt), batch_size sequences per call."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    completions: list[str] = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        input_ids = prompt.expand(rows, -1)
        criteria = StoppingCriteriaList([StopOnStrings(len(prompt_ids), tokenizer)] if stop_early else [])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,  # CodeParrot's setting: nucleus sampling only
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stopping_criteria=criteria,
        )
        completions.extend(tokenizer.batch_decode(out[:, len(prompt_ids) :], skip_special_tokens=True))
    return completions


def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    n: int = 4,
    max_new_tokens: int = 64,
    seed: int = 1,
    temperature: float = 0.4,
    top_p: float = 0.95,
) -> list[str]:
    """The seed's `complete_code`: n completions of a prompt, each cut at its first block."""
    from codeparrot.evaluate.model import context_length

    new, room = token_budget(context_length(model), max_new_tokens)
    ids, truncated = encode_prompt(tokenizer, prompt, room)
    if truncated:
        log.warning("the prompt is longer than the model's context allows: kept its last %d tokens", room - 1)
    raw = sample(
        model, tokenizer, ids, n, batch_size=n, temperature=temperature, top_p=top_p, max_new_tokens=new, seed=seed
    )
    return [first_block(text) for text in raw]
