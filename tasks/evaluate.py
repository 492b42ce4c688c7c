"""Prefect tasks of the evaluation stage: perplexity, HumanEval, and both after training.

Cache keys cover the model's files and the valid split's bytes (not their paths), the EvalConfig
fingerprint (workers and device excluded) and the task source, so a retrained model at the same path is
evaluated again and an unchanged one is not. HumanEval also keeps its own completion marker on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import CacheKeyFnPolicy, CachePolicy

from codeparrot.artifacts import ArtifactRef
from codeparrot.config import short_hash
from codeparrot.dataset import content_hash
from codeparrot.errors import ConfigError
from codeparrot.evaluate.config import EvalConfig
from codeparrot.evaluate.humaneval import TABLE, run_humaneval
from codeparrot.evaluate.humaneval import VERSION as HUMANEVAL_VERSION
from codeparrot.evaluate.model import model_identity
from codeparrot.evaluate.perplexity import SPLIT, run_perplexity
from codeparrot.tokens import MANIFEST
from tasks._common import content_cache, explained
from tasks.hub import resolver

EVALUATE_VERSION = f"1.{HUMANEVAL_VERSION}"
PathArg = str | os.PathLike[str]


def data_identity(data: PathArg) -> str:
    """What the perplexity depends on: a reference's identity, a token set's manifest, or a dataset's valid split."""
    ref = ArtifactRef.parse(data)
    if ref.scheme != "local":
        return resolver().identity(ref)
    manifest = Path(ref.path) / MANIFEST
    if manifest.is_file():
        return short_hash(manifest.read_text(), length=32)
    return content_hash(ref.path, (SPLIT,))


def _content_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """The model's and the valid split's content, whatever folders they sit in."""
    parts = {"model": model_identity(inputs["model_dir"])}
    if inputs.get("data_dir") is not None:
        parts["data"] = data_identity(inputs["data_dir"])
    return short_hash(json.dumps(parts, sort_keys=True), length=32)


def _cache(stage: str) -> CachePolicy:
    ignore = ("model_dir", "data_dir", "out_dir", "hub_token_block")
    return content_cache(stage, EVALUATE_VERSION, ignore=ignore) + CacheKeyFnPolicy(cache_key_fn=_content_key)


def _humaneval_with_artifact(model_dir: PathArg, cfg: EvalConfig, out_dir: PathArg | None) -> dict[str, Any]:
    summary = run_humaneval(model_dir, cfg, out_dir=out_dir)
    markdown = (Path(summary["out_dir"]) / TABLE).read_text(encoding="utf-8")
    gen = summary["generation"]
    markdown += (
        f"\n{summary['problems']} problems x {summary['n_samples']} samples, temperature "
        f"{cfg.temperature}, top_p {cfg.top_p}; generation {gen['samples_per_s'] or '-'} samples/s on "
        f"{summary['device']}; sandbox {summary['sandbox']}.\n"
    )
    create_markdown_artifact(markdown, key=f"humaneval-{summary['key']}", description=f"HumanEval pass@k of {model_dir}")
    get_run_logger().info(
        "HumanEval %s", ", ".join(f"{k} {100 * summary[k]:.2f}%" for k in summary["pass_at_k"])
    )
    return summary


@task(name="perplexity", cache_policy=_cache("perplexity"), persist_result=True)
@explained
def perplexity_task(model_dir: PathArg, data_dir: PathArg, cfg: EvalConfig, hub_token_block: str | None = None) -> dict[str, Any]:
    """Validation loss and perplexity of a model folder on a dataset or token set (a reference or a folder)."""
    result = run_perplexity(
        model_dir, resolver(hub_token_block).resolve(data_dir).path, batch_size=cfg.perplexity_batch_size, max_blocks=cfg.max_perplexity_blocks,
        device=cfg.device, dtype=cfg.dtype,
    )
    get_run_logger().info("loss %.4f, perplexity %.2f over %d blocks", result.loss, result.perplexity, result.blocks)
    return result.to_dict()


@task(name="humaneval", cache_policy=_cache("humaneval"), persist_result=True)
@explained
def humaneval_task(model_dir: PathArg, cfg: EvalConfig, out_dir: PathArg | None = None) -> dict[str, Any]:
    """HumanEval pass@k with sandboxed execution; the results table becomes a markdown artifact."""
    return _humaneval_with_artifact(model_dir, cfg, out_dir)


@task(name="evaluate-model", cache_policy=_cache("evaluate-model"), persist_result=True)
@explained
def evaluate_model_task(
    model_dir: PathArg, data_dir: PathArg | None, cfg: EvalConfig, hub_token_block: str | None = None
) -> dict[str, Any]:
    """What the config enables (perplexity, HumanEval) on a trained model; a small summary.

    `data_dir`: the dataset or token set (a reference or a folder) whose valid split perplexity uses."""
    summary: dict[str, Any] = {"model_dir": os.fspath(model_dir)}
    if cfg.run_perplexity:
        if data_dir is None:
            raise ConfigError("run_perplexity is on but no dataset folder was given: pass data_dir or turn it off")
        ppl = run_perplexity(
            model_dir, resolver(hub_token_block).resolve(data_dir).path, batch_size=cfg.perplexity_batch_size, max_blocks=cfg.max_perplexity_blocks,
            device=cfg.device, dtype=cfg.dtype,
        )
        summary.update(loss=ppl.loss, perplexity=ppl.perplexity, perplexity_blocks=ppl.blocks)
        get_run_logger().info("loss %.4f, perplexity %.2f", ppl.loss, ppl.perplexity)
    if cfg.run_humaneval:
        he = _humaneval_with_artifact(model_dir, cfg, None)
        summary.update({k: he[k] for k in he["pass_at_k"]})
        summary.update(humaneval_problems=he["problems"], humaneval_samples=he["n_samples"], humaneval_key=he["key"],
                       humaneval_contamination=he.get("contamination"))
    return summary


@task(name="sample-completions", cache_policy=_cache("sample-completions"), persist_result=True)
@explained
def samples_task(model_dir: PathArg, prompt: str, n: int = 3, max_new_tokens: int = 64, seed: int = 1) -> list[str]:
    """The seed's interactive check: n completions of a prompt, each cut at its first block."""
    from codeparrot.evaluate.generation import complete
    from codeparrot.evaluate.model import load_model

    model, tokenizer = load_model(model_dir)
    completions = complete(model, tokenizer, prompt, n=n, max_new_tokens=max_new_tokens, seed=seed)
    body = "\n\n".join(f"```python\n{prompt}{c}\n```" for c in completions)
    create_markdown_artifact(f"## Completions of `{prompt}`\n\n{body}", key="sample-completions", description=f"{n} sampled completions of the book's prompt by {model_dir}")
    return completions
