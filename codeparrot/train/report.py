"""What a person reads of a training run: its curves as an SVG chart and a summary, both markdown.

Torch-free, from the trainer's metrics events (`metrics.jsonl`) and its final summary, so the Prefect task
that supervises the trainer can render them while the run goes. The chart is an inline `data:` image,
which the Prefect UI's markdown renderer shows as a picture (raw `<svg>` would be stripped as HTML).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The chart's size in CSS pixels: wide enough for 100 points a few pixels apart, low enough to read
# beside the run's other artifacts without scrolling.
WIDTH, HEIGHT = 720, 320
MARGIN = {"left": 56, "right": 64, "top": 48, "bottom": 40}  # the legend sits in the top margin
TRAIN_COLOUR, VALID_COLOUR, LR_COLOUR = "#1f77b4", "#d62728", "#7f7f7f"
MAX_POINTS = 100  # per series: a long run is strided, its last point always kept


@dataclass(frozen=True)
class Point:
    step: int
    loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None


def curve(events: Iterable[Mapping[str, Any]], max_points: int = MAX_POINTS) -> list[Point]:
    """Train loss, validation loss and lr by step; after a resume a step's latest record wins."""
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        kind, step = event.get("event"), event.get("step")
        if not isinstance(step, int):
            continue
        if kind == "train" and _finite(event.get("loss")):
            rows.setdefault(step, {}).update(loss=float(event["loss"]), lr=float(event["lr"]))
        elif kind == "eval" and _finite(event.get("val_loss")):
            rows.setdefault(step, {})["val_loss"] = float(event["val_loss"])
    points = [Point(step, **rows[step]) for step in sorted(rows)]
    if len(points) > max_points:
        keep = {p.step for p in points if p.val_loss is not None}  # every validation point: they are few
        stride = -(-len(points) // max_points)
        keep |= {p.step for p in points[::stride]} | {points[-1].step}
        points = [p for p in points if p.step in keep]
    return points


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def chart_svg(points: Sequence[Point], title: str) -> str:
    """Train and validation loss on the left axis, the learning rate on the right one, against the step."""
    left, right, top, bottom = MARGIN["left"], WIDTH - MARGIN["right"], MARGIN["top"], HEIGHT - MARGIN["bottom"]
    losses = [v for p in points for v in (p.loss, p.val_loss) if v is not None]
    lrs = [p.lr for p in points if p.lr is not None]
    first, last = (points[0].step, points[-1].step) if points else (0, 1)
    lo, hi = (min(losses), max(losses)) if losses else (0.0, 1.0)
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi)
    lr_hi = max(lrs) if lrs else 1.0

    def x(step: int) -> float:
        return left + (right - left) * (step - first) / max(last - first, 1)

    def y(value: float, low: float, high: float) -> float:
        return bottom - (bottom - top) * (value - low) / (high - low)

    def line(pairs: list[tuple[float, float]], colour: str, dash: str = "") -> str:
        if not pairs:
            return ""
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in pairs)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dashed} points="{coords}"/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="14">{_escape(title)}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{right}" y1="{top}" x2="{right}" y2="{bottom}" stroke="{LR_COLOUR}"/>',
    ]
    for i in range(5):  # ticks: loss on the left, lr on the right, steps below
        frac = i / 4
        ly = bottom - (bottom - top) * frac
        parts.append(f'<text x="{left - 6}" y="{ly + 4:.1f}" text-anchor="end">{lo + (hi - lo) * frac:.2f}</text>')
        parts.append(f'<text x="{right + 6}" y="{ly + 4:.1f}" fill="{LR_COLOUR}">{lr_hi * frac:.1e}</text>')
        step = round(first + (last - first) * frac)
        parts.append(f'<text x="{x(step):.1f}" y="{bottom + 16}" text-anchor="middle">{step}</text>')
    parts.append(f'<text x="{(left + right) / 2}" y="{HEIGHT - 6}" text-anchor="middle">step</text>')
    parts.append(line([(x(p.step), y(p.loss, lo, hi)) for p in points if p.loss is not None], TRAIN_COLOUR))
    parts.append(line([(x(p.step), y(p.val_loss, lo, hi)) for p in points if p.val_loss is not None], VALID_COLOUR))
    parts.append(line([(x(p.step), y(p.lr, 0.0, lr_hi)) for p in points if p.lr is not None], LR_COLOUR, "4 3"))
    for n, (name, colour) in enumerate((("train loss", TRAIN_COLOUR), ("validation loss", VALID_COLOUR), ("learning rate", LR_COLOUR))):
        lx = left + 12 + 130 * n
        parts.append(f'<line x1="{lx}" y1="{top - 14}" x2="{lx + 20}" y2="{top - 14}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{lx + 26}" y="{top - 10}">{name}</text>')
    parts.append("</svg>")
    return "".join(p for p in parts if p)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart_markdown(points: Sequence[Point], title: str, max_steps: int | None = None) -> str:
    """The chart as an inline image, then the latest values in words (what a screen reader gets)."""
    svg = base64.b64encode(chart_svg(points, title).encode()).decode()
    latest = points[-1] if points else None
    valid = next((p for p in reversed(points) if p.val_loss is not None), None)
    said = []
    if latest is not None:
        said.append(f"step {latest.step}" + (f" of {max_steps}" if max_steps else ""))
        if latest.loss is not None:
            said.append(f"train loss {latest.loss:.4f}")
    if valid is not None:
        said.append(f"validation loss {valid.val_loss:.4f} (perplexity {math.exp(min(valid.val_loss or 0.0, 50)):.2f}) at step {valid.step}")
    return f"## {title}\n\n![{title}](data:image/svg+xml;base64,{svg})\n\n{', '.join(said) or 'no step logged yet'}\n"


def summary_markdown(
    *, model: str | None, summary: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
    references: Mapping[str, Mapping[str, float]],
) -> str:  # fmt: skip
    """The run in one table: where the model is, what it reached, what it cost, whether it resumed."""
    evaluation = evaluation or {}
    val_loss = evaluation.get("loss", summary.get("val_loss"))
    ppl = evaluation.get("perplexity", math.exp(val_loss) if _finite(val_loss) else None)
    resumed = summary.get("resumed_at") or []
    rows = [
        ("model", f"`{model}`" if model else "not published"),
        ("dataset", f"`{summary.get('dataset')}`"),
        ("tokenizer", f"`{summary.get('tokenizer')}`"),
        ("steps", f"{summary.get('step')}"),
        ("tokens trained", f"{summary['tokens']:,}" if isinstance(summary.get("tokens"), int) else "-"),
        ("final validation loss", f"{val_loss:.4f}" if _finite(val_loss) else "-"),
        ("validation perplexity", f"{ppl:.2f}" if _finite(ppl) else "-"),
        ("resumed", f"yes, at steps {', '.join(map(str, resumed))}" if resumed else "no (one uninterrupted run)"),
        ("checkpoints", f"`{summary.get('checkpoints')}`" if summary.get("checkpoints") else "-"),
    ]
    lines = ["## Training run", "", "| | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    ks = sorted((k for k in evaluation if k.startswith("pass@")), key=lambda k: int(k.split("@")[1]))
    if ks:
        lines += [
            f"### HumanEval ({evaluation.get('humaneval_problems')} problems x {evaluation.get('humaneval_samples')} samples)",
            "", "| model | " + " | ".join(ks) + " |", "|---" * (len(ks) + 1) + "|",
            "| this run | " + " | ".join(f"{100 * float(evaluation[k]):.2f}%" for k in ks) + " |",
            *[f"| {name} | " + " | ".join(f"{ref[k]:.2f}%" if k in ref else "-" for k in ks) + " |" for name, ref in references.items()],
            "",
        ]  # fmt: skip
    else:
        lines += ["HumanEval: not run.", ""]
    return "\n".join(lines)
