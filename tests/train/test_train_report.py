"""The training run's chart and summary, rendered from metrics events (torch-free)."""

from __future__ import annotations

import base64
import math
import re
from xml.etree import ElementTree

from codeparrot.evaluate.passk import BOOK_PASS_AT_K
from codeparrot.train import report

SVG = "{http://www.w3.org/2000/svg}"


def _events(steps: range, *, loss0: float = 10.0) -> list[dict]:
    out = []
    for s in steps:
        out.append({"event": "train", "step": s, "loss": loss0 - s / 100, "lr": 1e-3 * min(1, (s + 1) / 10)})
        if s % 50 == 0:
            out.append({"event": "eval", "step": s, "val_loss": loss0 - s / 90, "perplexity": 1.0})
    return out


def test_after_a_resume_the_latest_record_of_a_step_wins_and_non_finite_values_are_left_out() -> None:
    events = [*_events(range(0, 30, 10)), {"event": "train", "step": 20, "loss": 1.5, "lr": 2e-3},
              {"event": "train", "step": 30, "loss": float("nan"), "lr": 1e-3}, {"event": "start", "step": 0}]  # fmt: skip
    points = report.curve(events)
    assert [p.step for p in points] == [0, 10, 20]
    assert points[2].loss == 1.5 and points[0].val_loss == 10.0


def test_a_long_run_is_strided_but_keeps_every_validation_and_the_last_step() -> None:
    points = report.curve(_events(range(1001)), max_points=100)
    steps = [p.step for p in points]
    assert len(points) <= 100 + 21 and steps == sorted(steps) and steps[-1] == 1000
    assert {p.step for p in points if p.val_loss is not None} == set(range(0, 1001, 50))


def test_the_chart_is_valid_svg_with_three_series_left_to_right() -> None:
    points = report.curve(_events(range(0, 200, 5)))
    svg = ElementTree.fromstring(report.chart_svg(points, "run <a&b>"))
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 3
    for line in lines:
        xs = [float(pair.split(",")[0]) for pair in line.get("points").split()]
        assert xs == sorted(xs) and len(xs) >= 4
    # Loss falls, so the train line rises on screen (y grows downwards) from first to last point.
    ys = [float(pair.split(",")[1]) for pair in lines[0].get("points").split()]
    assert ys[-1] > ys[0]
    assert "run <a&b>" in "".join(svg.itertext())


def test_the_chart_artifact_embeds_the_image_and_says_the_latest_values() -> None:
    points = report.curve(_events(range(0, 101, 10)))
    md = report.chart_markdown(points, "Training tiny", max_steps=400)
    image = re.search(r"!\[Training tiny\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", md)
    assert image and ElementTree.fromstring(base64.b64decode(image[1])).tag == f"{SVG}svg"
    assert "step 100 of 400" in md and f"validation loss {10 - 100 / 90:.4f}" in md
    assert report.chart_markdown([], "empty").endswith("no step logged yet\n")


def test_the_summary_names_the_model_the_final_loss_the_resumes_and_the_books_numbers() -> None:
    summary = {"dataset": "hf://datasets/o/d@1", "tokenizer": "hf://o/t@2", "step": 400, "tokens": 409600,
               "val_loss": 6.9, "resumed_at": [150], "checkpoints": "gs://b/c"}  # fmt: skip
    evaluation = {"loss": 6.95, "perplexity": math.exp(6.95), "pass@1": 0.0, "pass@10": 0.01,
                  "humaneval_problems": 8, "humaneval_samples": 4}  # fmt: skip
    md = report.summary_markdown(model="hf://o/m@3", summary=summary, evaluation=evaluation, references=BOOK_PASS_AT_K)
    assert "| model | `hf://o/m@3` |" in md and "| tokens trained | 409,600 |" in md
    assert "| final validation loss | 6.9500 |" in md and f"| validation perplexity | {math.exp(6.95):.2f} |" in md
    assert "| resumed | yes, at steps 150 |" in md
    assert "HumanEval (8 problems x 4 samples)" in md and "| this run | 0.00% | 1.00% |" in md
    assert "| codeparrot-small (110M), reference | 3.80% | 6.57% |" in md
    bare = report.summary_markdown(model=None, summary={**summary, "resumed_at": []}, evaluation=None, references=BOOK_PASS_AT_K)
    assert "| final validation loss | 6.9000 |" in bare and "no (one uninterrupted run)" in bare and "HumanEval: not run." in bare
