"""The final model's card (lineage + evaluation in the HF model-card format) and its publication by reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeparrot.artifacts import Resolver
from codeparrot.errors import DataError
from codeparrot.hub import StandIn
from codeparrot.model_card import CARD_FILE, SUMMARY_FILE, publish_model, render
from codeparrot.storage import LocalStore
from tests.evaluate.tiny_eval_model import build_tiny_model

SUMMARY = {
    "step": 400, "tokens": 409600, "val_loss": 6.9, "run_hash": "ab" * 32,
    "dataset": "hf://datasets/codeparrot/codeparrot-clean@34ce68c87d54",
    "tokenizer": "hf://codeparrot/codeparrot-tokenizer@d27492c83a60",
    "token_set": "gs://codeparrot-artifacts/tokens/34ce68c87d54-d27492c83a60",
    "checkpoints": "gs://codeparrot-artifacts/checkpoints/abababababab", "resumed_at": [120, 310],
    "lineage": {"snapshot_id": "snap-2026-11-30", "export_uri": "gs://codeparrot-exports/x/", "licenses": ["apache-2.0", "mit"]},
    "config": {"preset": "tiny", "max_steps": 400},
}  # fmt: skip
EVALUATION = {"loss": 6.95, "perplexity": 1043.2, "pass@1": 0.0125, "pass@10": 0.05, "humaneval_problems": 8, "humaneval_samples": 4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = build_tiny_model(tmp_path_factory.mktemp("card") / "final", steps=5)
    (folder / SUMMARY_FILE).write_text(json.dumps(SUMMARY))
    (folder / "COMPLETE").write_text(SUMMARY["run_hash"])
    return folder


def test_the_card_is_hf_format_with_lineage_and_a_model_index(tmp_path) -> None:
    from huggingface_hub import ModelCard

    path = tmp_path / "README.md"
    path.write_text(render("me/codeparrot-tiny", SUMMARY, EVALUATION))
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["datasets"] == ["codeparrot/codeparrot-clean"]
    lineage = data["codeparrot"]
    assert lineage["dataset"] == SUMMARY["dataset"] and lineage["tokenizer"] == SUMMARY["tokenizer"]
    assert lineage["export_snapshot"] == "snap-2026-11-30" and lineage["licenses"] == ["apache-2.0", "mit"]
    assert lineage["config_hash"] == SUMMARY["run_hash"] and lineage["resumed_at"] == [120, 310]
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("openai_humaneval", "pass@1"): 0.0125, ("openai_humaneval", "pass@10"): 0.05,
                       ("codeparrot/codeparrot-clean", "perplexity"): 1043.2}  # fmt: skip
    text = card.text
    for row in (
        f"| dataset | `{SUMMARY['dataset']}` |",
        "| export snapshot | `snap-2026-11-30` |",
        "| licenses | apache-2.0, mit |",
        f"| tokenizer | `{SUMMARY['tokenizer']}` |",
        f"| config hash | `{SUMMARY['run_hash']}` |",
        "| trained | 400 steps, 409,600 tokens |",
        f"| resumed | yes, at steps 120, 310 from `{SUMMARY['checkpoints']}` |",
        "| HumanEval pass@1 | 1.25% |",
    ):
        assert row in text, row


def test_an_unevaluated_uninterrupted_run_says_so(tmp_path) -> None:
    from huggingface_hub import ModelCard

    text = render("me/m", {**SUMMARY, "resumed_at": []}, None)
    card = ModelCard(text)
    assert "| resumed | no (one uninterrupted run) |" in text and "Not evaluated." in text
    assert not card.data.eval_results


def test_the_published_model_loads_with_from_pretrained_from_its_uri(model_dir, tmp_path) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = StandIn(LocalStore(tmp_path / "hub"))
    pushed = publish_model(model_dir, "me/codeparrot-tiny", hub, evaluation=EVALUATION, staging=tmp_path / "staging")
    assert pushed.uri == f"hf://me/codeparrot-tiny@{pushed.revision}"
    folder = Resolver(hub, tmp_path / "cache").resolve("hf://me/codeparrot-tiny").path
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)
    assert ModelCard.load(folder / CARD_FILE).data.to_dict()["codeparrot"]["dataset"] == SUMMARY["dataset"]
    assert not (folder / "COMPLETE").exists(), "the run's marker stays with the run"
    assert (model_dir / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert not (model_dir / CARD_FILE).exists(), "the run's final/ is left as training wrote it"
    again = publish_model(model_dir, "me/codeparrot-tiny", hub, evaluation=EVALUATION, staging=tmp_path / "staging")
    assert again.skipped and again.revision == pushed.revision, "the card is deterministic: same run, same revision"


def test_a_folder_without_a_training_summary_is_refused(tmp_path) -> None:
    with pytest.raises(DataError, match=r"train_summary\.json is missing"):
        publish_model(tmp_path, "me/m", StandIn(LocalStore(tmp_path / "hub")))
