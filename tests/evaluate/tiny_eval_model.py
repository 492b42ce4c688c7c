"""Builders of a tiny trained model and a tiny published dataset from stdlib sources (seconds, offline).

Shared by tests/evaluate/conftest.py and tests/tasks/test_evaluate_task.py.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

# Plain, typical Python (functions, docstrings, loops) to train on, and two other modules to validate on.
TRAIN_MODULES = ("textwrap", "heapq", "bisect", "fnmatch", "string", "shlex", "colorsys", "difflib")
VALID_MODULES = ("glob", "calendar")


def sources(names: tuple[str, ...]) -> list[str]:
    return [inspect.getsource(importlib.import_module(name)) for name in names]


def build_tiny_model(folder: Path, *, steps: int = 40) -> Path:
    """save_pretrained of a 2-layer GPT-2 (n_positions 128) and its 512-token BPE, trained briefly."""
    import torch
    from transformers import GPT2Config

    from codeparrot.tokenizer import train_bpe

    texts = sources(TRAIN_MODULES)
    tokenizer = train_bpe([texts], vocab_size=512, model_max_length=128)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos
    )
    threads = torch.get_num_threads()
    # One thread: a model this small gains nothing from more, and on a shared 2-core machine
    # oversubscribed threads made the build 6x slower (44 s against 7 s, measured).
    torch.set_num_threads(1)
    try:
        return _train_and_save(folder, tokenizer, config, steps)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(folder: Path, tokenizer: Any, config: Any, steps: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    eos = tokenizer.eos_token_id
    texts = sources(TRAIN_MODULES)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [eos]
    data = torch.tensor(ids[: len(ids) // 128 * 128]).view(-1, 128)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (8,))]
        model(input_ids=batch, labels=batch).loss.backward()
        optim.step()
        optim.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_dataset(root: Path) -> Path:
    """A published dataset folder: data/{train,valid}-00000-of-00001.parquet with the export columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, names in (("train", TRAIN_MODULES), ("valid", VALID_MODULES)):
        texts = sources(names)
        table = pa.table({
            "repo_name": [f"stdlib/{n}" for n in names],
            "path": [f"{n}.py" for n in names],
            "copies": ["1"] * len(names),
            "size": [str(len(t)) for t in texts],
            "content": texts,
            "license": ["psf"] * len(names),
        })
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root
