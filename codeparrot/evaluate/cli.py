"""`codeparrot perplexity`, `codeparrot humaneval` and `codeparrot generate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from codeparrot.evaluate.config import EvalConfig, SandboxLimits, build_config, build_limits

_F = EvalConfig.model_fields
_S = SandboxLimits.model_fields


def _default(name: str) -> Any:
    return _F[name].default


model_argument = click.argument("model")


def local_copy(ref: str) -> tuple[Path, bool]:
    """A local folder for MODEL or DATA given as a folder or a reference (hf://OWNER/NAME@REV, gs://...);
    and whether it is the user's own folder (True) or a read-only copy fetched for it (False)."""
    from codeparrot.artifacts import ArtifactRef
    from codeparrot.services import ensure_storage

    with ensure_storage(ref) as resolver:
        return resolver.resolve(ref).path, ArtifactRef.parse(ref).scheme == "local"

device_option = click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
dtype_option = click.option(
    "--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True,
    help="Model dtype; auto = bfloat16 on CUDA, float32 on CPU.",
)


@click.command()
@model_argument
@click.option("--data", "data_dir", required=True,
              help="Dataset or token set: hf://datasets/OWNER/NAME[@REV], gs://..., or a folder.")
@click.option("--batch-size", default=_default("perplexity_batch_size"), show_default=True, help="Blocks per forward pass.")
@click.option("--max-blocks", type=int, default=None, help="Evaluate at most this many blocks (default: all).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where packed token files are kept (default: $CODEPARROT_HOME/eval/tokens).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result to this JSON file.")
@device_option
@dtype_option
def perplexity(
    model: str, data_dir: str, batch_size: int, max_blocks: int | None, cache_dir: Path | None,
    json_path: Path | None, device: str | None, dtype: str,
) -> None:
    """Mean loss and perplexity of MODEL (a folder or hf://OWNER/NAME[@REV]) on the valid split, packed as in training."""
    from codeparrot.evaluate.perplexity import run_perplexity

    cfg = build_config(perplexity_batch_size=batch_size, max_perplexity_blocks=max_blocks, device=device, dtype=dtype)
    result = run_perplexity(
        local_copy(model)[0], local_copy(data_dir)[0], batch_size=cfg.perplexity_batch_size, max_blocks=cfg.max_perplexity_blocks,
        device=cfg.device, dtype=cfg.dtype, cache_dir=cache_dir,
    )
    click.echo(
        f"loss {result.loss:.4f}  perplexity {result.perplexity:.2f}  "
        f"({result.blocks} blocks of {result.seq_length} tokens)"
    )
    if json_path:
        from codeparrot.errors import writing

        with writing(json_path, "--json"):
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")


@click.command()
@model_argument
@click.option("--n-samples", default=_default("n_samples"), show_default=True, help="Completions per problem.")
@click.option("--temperature", default=_default("temperature"), show_default=True, help="Sampling temperature.")
@click.option("--top-p", default=_default("top_p"), show_default=True, help="Nucleus sampling mass.")
@click.option("--max-new-tokens", default=_default("max_new_tokens"), show_default=True, help="Tokens per completion at most.")
@click.option("--limit", type=int, default=None, help="Only the first N problems (default: all 164).")
@click.option("--batch-size", default=_default("batch_size"), show_default=True, help="Sequences per generate call.")
@click.option("--seed", default=_default("seed"), show_default=True, help="Sampling seed.")
@click.option("--timeout", "timeout_s", default=_S["timeout_s"].default, show_default=True, help="Seconds per program.")
@click.option("--memory-mb", default=_S["memory_mb"].default, show_default=True, help="Address space per program, MiB.")
@click.option("--workers", type=int, default=None, help="Programs run in parallel (default: one per CPU core).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: MODEL/eval/humaneval-<settings key>).")
@device_option
@dtype_option
def humaneval(
    model: str, n_samples: int, temperature: float, top_p: float, max_new_tokens: int, limit: int | None,
    batch_size: int, seed: int, timeout_s: float, memory_mb: int, workers: int | None, out_dir: Path | None,
    device: str | None, dtype: str,
) -> None:
    """HumanEval pass@k of MODEL, each program run in a sandbox; writes samples, summary and a table."""
    from codeparrot.env import home
    from codeparrot.evaluate.humaneval import TABLE, default_out_dir, run_humaneval
    from codeparrot.evaluate.model import check_model_dir, model_identity

    cfg = build_config(
        run_perplexity=False, n_samples=n_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, limit=limit, batch_size=batch_size, seed=seed, workers=workers,
        device=device, dtype=dtype, sandbox=build_limits(timeout_s=timeout_s, memory_mb=memory_mb),
    )
    path, own = local_copy(model)
    folder = check_model_dir(path)
    out = out_dir or default_out_dir(folder, cfg, model_identity(folder))
    if not own and out_dir is None:  # never write into a fetched read-only copy
        out = home() / "eval" / out.name
    summary = run_humaneval(folder, cfg, out_dir=out)
    click.echo((out / TABLE).read_text(), nl=False)
    gen = summary["generation"]
    if gen["samples_per_s"]:
        click.echo(f"\n{gen['samples']} samples in {gen['seconds']:.1f} s ({gen['samples_per_s']:.2f} samples/s)")
    click.echo(f"results in {out}")


@click.command()
@model_argument
@click.argument("prompt")
@click.option("-n", "--num-completions", "n", default=4, show_default=True, help="Completions to sample.")
@click.option("--max-new-tokens", default=64, show_default=True, help="Tokens per completion at most.")
@click.option("--seed", default=1, show_default=True, help="Sampling seed.")
@click.option("--temperature", default=0.4, show_default=True, help="Sampling temperature (the seed's 0.4).")
@click.option("--top-p", default=0.95, show_default=True, help="Nucleus sampling mass.")
@device_option
def generate(
    model: str, prompt: str, n: int, max_new_tokens: int, seed: int, temperature: float, top_p: float,
    device: str | None,
) -> None:
    """Print N completions of PROMPT, each cut at its first block (the seed's interactive check)."""
    from codeparrot.evaluate.generation import complete
    from codeparrot.evaluate.model import load_model

    cfg = build_config(
        run_perplexity=False, n_samples=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        seed=seed, device=device,
    )
    lm, tokenizer = load_model(local_copy(model)[0], device=cfg.device)
    completions = complete(
        lm, tokenizer, prompt, n=cfg.n_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
        temperature=cfg.temperature, top_p=cfg.top_p,
    )
    click.echo(("\n" + "=" * 80 + "\n").join(completions))
