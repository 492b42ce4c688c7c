"""The final model's card (`README.md`, the Hugging Face model-card format) and its push to the Hub target.

The card's YAML is `huggingface_hub.ModelCardData`: library, pipeline, tags, the dataset, a `model-index`
with the evaluation results, and a `codeparrot` block with the lineage a run is reproducible from. The
body shows the same lineage as a table: dataset URI@revision, export snapshot, licenses, tokenizer
URI@revision, token set, config hash, steps and tokens trained, whether and where the run resumed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from codeparrot.artifacts import ArtifactRef
from codeparrot.errors import DataError
from codeparrot.evaluate.passk import BOOK_PASS_AT_K
from codeparrot.hub import Hub, PushResult, staging_folder

log = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"  # written by codeparrot.train.loop beside the weights
CARD_FILE = "README.md"
# Left out of the pushed folder: the run's completion marker means nothing outside its run folder.
NOT_PUSHED = ("COMPLETE",)


def read_summary(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is missing or unreadable: pass the final/ folder of a finished training run") from exc


def lineage(summary: dict[str, Any]) -> dict[str, Any]:
    """What the model was built from and how, from the run's summary: the card's `codeparrot` block."""
    data = summary.get("lineage") or {}
    return {
        "dataset": summary.get("dataset"),
        "export_snapshot": data.get("snapshot_id"),
        "export_uri": data.get("export_uri"),
        "licenses": data.get("licenses") or [],
        "decontamination": data.get("decontamination"),
        "tokenizer": summary.get("tokenizer"),
        "tokens": summary.get("token_set"),
        "config_hash": summary.get("run_hash"),
        "steps": summary.get("step"),
        "tokens_trained": summary.get("tokens"),
        "resumed_at": summary.get("resumed_at") or [],
        "checkpoints": summary.get("checkpoints"),
        "config": summary.get("config"),
    }


def _decontamination_cell(report: dict[str, Any] | None) -> str:
    if not report:
        return "not recorded: the training data may hold benchmark problems"
    checked = ", ".join(f"{b} ({n} problems)" for b, n in (report.get("benchmarks") or {}).items()) or "none"
    found = report.get("problems_found") or []
    return f"against {checked}: {report.get('files_removed', 0)} files removed, {len(found)} problems found"


def render(repo: str, summary: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    """The model card text: YAML metadata (with a model-index when evaluated), then the lineage and results."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = lineage(summary)
    name = repo.split("/")[-1]
    dataset = info["dataset"] or ""
    dataset_repo = ArtifactRef.parse(dataset).repo if dataset.startswith("hf://") else None
    evaluation = evaluation or {}
    humaneval = {"task_type": "text-generation", "dataset_type": "openai_humaneval", "dataset_name": "HumanEval"}
    results = [
        EvalResult(**humaneval, metric_type=k, metric_name=k, metric_value=round(float(v), 4))
        for k, v in sorted(evaluation.items())
        if k.startswith("pass@")
    ]
    if "perplexity" in evaluation:
        valid = {"task_type": "text-generation", "dataset_type": dataset_repo or "codeparrot-clean",
                 "dataset_name": dataset_repo or "validation split", "dataset_split": "valid"}  # fmt: skip
        ppl = round(float(evaluation["perplexity"]), 3)
        results.append(EvalResult(**valid, metric_type="perplexity", metric_name="perplexity", metric_value=ppl))
    data = ModelCardData(
        language="code", license="other", library_name="transformers", pipeline_tag="text-generation",
        tags=["code", "gpt2", "codeparrot", "python"], datasets=[dataset_repo] if dataset_repo else None,
        model_name=name, eval_results=results or None, codeparrot=info,
    )  # fmt: skip
    resumed = info["resumed_at"]
    rows = [
        ("dataset", f"`{dataset}`"),
        ("export snapshot", f"`{info['export_snapshot']}`" if info["export_snapshot"] else "-"),
        ("licenses", ", ".join(info["licenses"]) or "-"),
        ("tokenizer", f"`{info['tokenizer']}`"),
        ("token set", f"`{info['tokens']}`" if info["tokens"] else "-"),
        ("config hash", f"`{info['config_hash']}`"),
        ("trained", f"{info['steps']} steps, {info['tokens_trained']:,} tokens" if info["tokens_trained"] else f"{info['steps']} steps"),
        ("resumed", f"yes, at steps {', '.join(map(str, resumed))} from `{info['checkpoints']}`" if resumed else "no (one uninterrupted run)"),
        ("decontamination", _decontamination_cell(info["decontamination"])),
    ]
    body = [
        f"# {name}",
        "",
        "A GPT-2 for Python trained from scratch with the CodeParrot recipe (chapter 10 of *Natural Language "
        "Processing with Transformers*) by CodeParrot Flows.",
        "",
        "## Lineage",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        body += ["| metric | value |", "|---|---|"]
        if "perplexity" in evaluation:
            body.append(f"| validation perplexity | {evaluation['perplexity']:.2f} (loss {evaluation.get('loss', float('nan')):.4f}) |")
        body += [f"| HumanEval {k} | {100 * float(v):.2f}% |" for k, v in sorted(evaluation.items()) if k.startswith("pass@")]
        if any(k.startswith("pass@") for k in evaluation):
            problems, samples = evaluation.get("humaneval_problems"), evaluation.get("humaneval_samples")
            body += ["", f"HumanEval on {problems} problems x {samples} samples. The book's figures for scale:", ""]
            body += [f"- {model}: " + ", ".join(f"{k} {v:.2f}%" for k, v in ks.items()) for model, ks in BOOK_PASS_AT_K.items()]
    else:
        body.append("Not evaluated.")
    body += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             "tokenizer = AutoTokenizer.from_pretrained(folder)", "model = AutoModelForCausalLM.from_pretrained(folder)", "```"]  # fmt: skip
    if info["config"]:
        body += ["", "## Training config", "", "```json", json.dumps(info["config"], indent=2, sort_keys=True), "```"]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))


def publish_model(
    model_dir: str | Path, repo: str, hub: Hub, *, evaluation: dict[str, Any] | None = None, staging: Path | None = None
) -> PushResult:
    """Copy the final model with its card into a staging folder and push it as repo `repo` (a model repo)."""
    from codeparrot.env import home

    summary = read_summary(model_dir)
    with staging_folder(staging or home() / "staging", "model-") as tmp:
        folder = tmp / "model"
        shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns(*NOT_PUSHED))
        (folder / CARD_FILE).write_text(render(repo, summary, evaluation), encoding="utf-8")
        pushed = hub.push(folder, "model", repo)
    log.info("model published: %s%s", pushed.uri, " (unchanged)" if pushed.skipped else "")
    return pushed
