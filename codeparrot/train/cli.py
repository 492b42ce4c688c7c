"""`codeparrot train`: one command that trains, and resumes when rerun. Heavy imports wait for the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from codeparrot.errors import ConfigError

# CLI option -> TrainConfig field, for the options that map one to one.
_FIELDS = {
    "preset": "preset",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "seq_length": "seq_length",
    "save_every": "save_every",
    "seed": "seed",
    "grad_accum": "grad_accum",
    "lr": "lr",
    "warmup": "warmup_steps",
    "weight_decay": "weight_decay",
    "save_every_minutes": "save_every_minutes",
    "keep_last": "keep_last",
    "eval_every": "eval_every",
    "eval_sequences": "eval_sequences",
    "log_every": "log_every",
    "checkpoint_dir": "checkpoint_dir",
    "token_cache": "token_cache",
    "mixed_precision": "mixed_precision",
    "compile": "compile",
    "gradient_checkpointing": "gradient_checkpointing",
    "preemption_url": "preemption_url",
    "preemption_poll_seconds": "preemption_poll_seconds",
    "max_skipped_steps": "max_skipped_steps",
}


def build_config(config_file: str | None, model_overrides: tuple[str, ...], options: dict[str, Any]) -> Any:
    """TrainConfig from an optional JSON file, then the options given on the command line."""
    from codeparrot.train.config import make_config

    fields: dict[str, Any] = {}
    if config_file:
        try:
            fields = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read training config {config_file}: {exc}") from None
    fields.update({_FIELDS[k]: v for k, v in options.items() if k in _FIELDS and v is not None})
    if model_overrides:
        model = dict(fields.get("model") or {})
        for item in model_overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--model {item!r}: use KEY=VALUE, e.g. --model n_layer=4")
            model[key.strip()] = _parse_value(value.strip())
        fields["model"] = model
    return make_config(**fields)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@click.command("train")
@click.option("--data", help="Dataset: hf://datasets/OWNER/NAME[@REV] or a published folder (unless --tokens).")
@click.option("--tokenizer", required=True, help="Tokenizer: hf://OWNER/NAME[@REV] or a folder.")
@click.option("--tokens", help="Token set built by pretokenize: gs://BUCKET/PREFIX or a folder (default: built from --data).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run folder: metrics, final model.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="TrainConfig as JSON; options below override it.")
@click.option("--preset", type=click.Choice(["tiny", "small", "large"]), help="Model shape (default tiny).")
@click.option("--model", "model_overrides", multiple=True, metavar="KEY=VALUE", help="Override a model field, e.g. n_layer=4 (repeatable).")
@click.option("--max-steps", type=int, help="Optimizer steps of the whole run.")
@click.option("--batch-size", type=int, help="Sequences per process per micro-batch.")
@click.option("--seq-length", type=int, help="Tokens per sequence (default: the model's context).")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--warmup", type=int, help="Warmup steps.")
@click.option("--weight-decay", type=float, help="AdamW weight decay.")
@click.option("--seed", type=int, help="Seed of weights, dropout and data order.")
@click.option("--save-every", type=int, help="Checkpoint every N steps.")
@click.option("--save-every-minutes", type=float, help="Also checkpoint after this many minutes.")
@click.option("--keep-last", type=int, help="Committed checkpoints to keep (>= 2).")
@click.option("--eval-every", type=int, help="Validation every N steps.")
@click.option("--eval-sequences", type=int, help="Validation sequences per evaluation.")
@click.option("--log-every", type=int, help="Train metrics every N steps.")
@click.option("--checkpoint-dir", help="Checkpoint folder or gs://bucket/prefix (default OUTPUT/checkpoints).")
@click.option("--token-cache", help="Where the token set is built without --tokens (folder or gs://; default CODEPARROT_HOME/tokens).")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), help="Autocast dtype.")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="Recompute activations.")
@click.option("--preemption-url", help="Poll this metadata URL; TRUE stops the run like SIGTERM.")
@click.option("--preemption-poll-seconds", type=float, help="Seconds between preemption polls.")
@click.option("--max-skipped-steps", type=int, help="Non-finite updates skipped before stopping as diverged (default 0).")
@click.option("--restart", is_flag=True, help="When no checkpoint can be resumed, move them aside (kept) and start over from step 0.")
def train(
    data: str | None, tokenizer: str, tokens: str | None, output: str, config_file: str | None,
    model_overrides: tuple[str, ...], restart: bool, **options: Any,
) -> None:  # fmt: skip
    """Train a GPT-2 on a published dataset; rerunning the same command resumes from its last checkpoint.

    SIGTERM or SIGINT finishes the current step, writes a checkpoint and exits with code 143.
    """
    config = build_config(config_file, model_overrides, options)
    from codeparrot.services import ensure_storage
    from codeparrot.train.loop import train as run

    with ensure_storage(data, tokenizer, tokens, config.checkpoint_dir, config.token_cache) as resolver:
        result = run(config, tokenizer, output, data=data, tokens=tokens, resolver=resolver, restart=restart)
    click.echo(str(result.final))
