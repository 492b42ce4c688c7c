"""Loading a trained model folder (what training writes to OUT/final) and naming its identity."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from codeparrot.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Files that define a model's outputs; anything else in the folder (e.g. eval/) is not identity.
IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def check_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """The folder as a Path, or a DataError saying what a model folder must hold."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise DataError(
            f"{folder} is not a model folder (no config.json): pass the final/ folder written by "
            "`codeparrot train`, which holds the model and its tokenizer"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise DataError(f"{folder} has a config.json but no weights (*.safetensors): did training finish?")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise DataError(f"{folder} has no tokenizer: save the tokenizer next to the model (save_pretrained)")
    return folder


def model_identity(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over the names and bytes of the model's own files (config, weights, tokenizer)."""
    folder = check_model_dir(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IDENTITY_SUFFIXES):
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def pick_device(device: str | None = None) -> torch.device:
    import torch

    if device:
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA devices that support it (2x faster sampling, same pass@k), else float32."""
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def load_model(
    model_dir: str | os.PathLike[str], *, device: str | None = None, dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode on the device, and its tokenizer; local files only (nothing is downloaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_model_dir(model_dir)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the model in {folder}: {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer in {folder} has no eos token: train it with codeparrot.tokenizer")
    check_vocabulary(model, tokenizer, folder)
    model.to(dev).eval()
    log.info("loaded %s (%.1fM parameters) on %s as %s", folder, model.num_parameters() / 1e6, dev, torch_dtype)
    return model, tokenizer


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Refuse a tokenizer with more tokens than the model has embeddings: its higher ids would index past
    the embedding table (an IndexError in the middle of a forward pass) or sample ids it cannot decode."""
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "num_embeddings", None) or getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise DataError(
            f"vocabulary mismatch in {folder}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
            f"{vocab}: put the tokenizer the model was trained with next to it (or train with this one)"
        )


def context_length(model: PreTrainedModel) -> int:
    """Positions the model can attend to (n_positions for GPT-2)."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise DataError(f"the model config names no context length (n_positions): {type(cfg).__name__}")
