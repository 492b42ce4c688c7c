"""The per-record filters of curation as a list of steps with one protocol, and the runner that applies them.

A step's `decide(record)` returns None to keep the record (it may have changed it: redaction rewrites the
content) or the reason that drops it. `build_steps(cfg)` lists the enabled steps in their order: the
license allow-list, each heuristic in the reference script's order, redaction, decontamination. The
runner applies them to one record until one drops it, counts the reason and writes the dropped line aside;
a new step (another benchmark check, a language filter) is one more entry in that list.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from codeparrot.curate import filters, licenses
from codeparrot.curate.config import CurateConfig
from codeparrot.curate.decontaminate import DecontaminationConfig, Decontaminator
from codeparrot.curate.filters import Doc, exact_digest
from codeparrot.curate.pii import RedactionConfig, Redactor
from codeparrot.shards import ShardWriter


@dataclass
class Record:
    """A record going through the steps: its fields, its input line (written out byte for byte unless a
    step changes it), its content as a `Doc`, and its exact-dedup digest (computed when first needed)."""

    item: dict[str, Any]
    line: bytes
    doc: Doc
    _digest: bytes | None = None

    @property
    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = exact_digest(self.doc)
        return self._digest

    def replace_content(self, text: str) -> None:
        """The record as it is published: new content and size, the line's other fields kept."""
        self.item = {**self.item, "content": text, "size": len(text.encode("utf-8", "surrogatepass"))}
        self.line = orjson.dumps(self.item) + b"\n"
        self.doc = Doc(text)
        self._digest = None  # copies that differ only by a secret collapse in exact dedup


class Step(Protocol):
    def decide(self, record: Record) -> str | None: ...


@dataclass
class LicenseStep:
    """Drops records whose license is missing, unknown or outside the allow-list."""

    allowed: frozenset[str]
    unknown: Counter[str] = field(default_factory=Counter)  # the unknown license strings seen

    def decide(self, record: Record) -> str | None:
        value = record.item.get("license")
        reason = licenses.drop_reason(value, self.allowed)
        if reason == licenses.UNKNOWN:
            self.unknown[str(value)] += 1
        return reason


@dataclass
class HeuristicStep:
    """One heuristic of the reference script: `drops(doc, record)` true means drop with `reason`."""

    reason: str
    drops: Callable[[Doc, Record], bool]

    def decide(self, record: Record) -> str | None:
        return self.reason if self.drops(record.doc, record) else None


@dataclass
class RedactionStep:
    """Replaces secrets and personal data by placeholders; never drops."""

    redactor: Redactor
    placeholders: Counter[str] = field(default_factory=Counter)
    files: int = 0

    def decide(self, record: Record) -> str | None:
        text, found = self.redactor.redact(record.doc)
        if found:
            record.replace_content(text)
            self.placeholders.update(r.kind for r in found)
            self.files += 1
        return None


@dataclass
class DecontaminationStep:
    """Drops files holding a benchmark problem, and lists each one with the problems it held."""

    decontaminator: Decontaminator
    removed: list[dict[str, Any]] = field(default_factory=list)

    def decide(self, record: Record) -> str | None:
        hit = self.decontaminator.check(record.doc)
        if hit is None:
            return None
        self.removed.append({"repo_name": record.item["repo_name"], "path": record.item["path"],
                             "reason": hit.reason, "problems": list(hit.problem_ids)})  # fmt: skip
        return hit.reason


@functools.cache
def step_of(cfg: DecontaminationConfig | RedactionConfig) -> Decontaminator | Redactor | None:
    """The step a config describes, built once per process (the benchmark index takes ~0.15 s); None when off."""
    if isinstance(cfg, DecontaminationConfig):
        return Decontaminator(cfg) if cfg.enabled else None
    return Redactor(cfg) if any(cfg.model_dump().values()) else None


def heuristic_steps(cfg: CurateConfig, tokenizer: Any = None) -> list[HeuristicStep]:
    """The enabled heuristics in the reference script's order (the first that matches names the drop)."""

    def drawn(name: str) -> Callable[[Record], bool]:  # the probabilistic drops: reproducible per content
        return lambda r: filters.draw(cfg.seed, name, r.digest) <= cfg.drop_probability

    def line_length(doc: Doc, _: Record) -> bool:
        longest, mean = filters.line_stats(doc)
        return (cfg.line_max is not None and longest > cfg.line_max) or (cfg.line_mean is not None and mean > cfg.line_mean)

    out: list[HeuristicStep] = []
    if cfg.autogenerated:
        out.append(HeuristicStep(filters.AUTOGENERATED, lambda d, _: filters.is_autogenerated(d, cfg.scan_lines)))
    if cfg.line_max is not None or cfg.line_mean is not None:
        out.append(HeuristicStep(filters.LINE_LENGTH, line_length))
    if cfg.alpha_frac is not None:
        out.append(HeuristicStep(filters.ALPHA, lambda d, _: filters.alnum_fraction(d) < cfg.alpha_frac))
    if tokenizer is not None:
        ratio = cfg.min_token_ratio
        out.append(HeuristicStep(filters.CHAR_TOKEN,
                                 lambda d, _: filters.char_token_ratio(d, len(tokenizer.encode(d.text).ids)) < ratio))  # fmt: skip
    if cfg.config_or_test:
        drop = drawn(filters.CONFIG_OR_TEST)
        out.append(HeuristicStep(filters.CONFIG_OR_TEST,
                                 lambda d, r: filters.is_config_or_test(d, cfg.scan_lines, cfg.config_test_coeff) and drop(r)))  # fmt: skip
    if cfg.no_keywords:
        drop_nk = drawn(filters.NO_KEYWORDS)
        out.append(HeuristicStep(filters.NO_KEYWORDS, lambda d, r: filters.has_no_keywords(d) and drop_nk(r)))
    if cfg.few_assignments is not None:
        out.append(HeuristicStep(filters.FEW_ASSIGNMENTS, lambda d, _: filters.count_assignments(d) <= cfg.few_assignments))
    return out


def load_tokenizer(cfg: CurateConfig) -> Any:
    if cfg.tokenizer_dir is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(cfg.tokenizer_dir) / "tokenizer.json"))


def build_steps(cfg: CurateConfig) -> list[Step]:
    """The enabled steps of `cfg`, in order: license, heuristics, redaction, decontamination.

    Redaction and decontamination run on what the heuristics keep (half the work) and before both
    dedups, so copies that differ only by a secret collapse and a benchmark copy never survives a dedup.
    """
    steps: list[Step] = []
    if cfg.license_filter is not None:
        steps.append(LicenseStep(cfg.license_filter))
    steps.extend(heuristic_steps(cfg, load_tokenizer(cfg)))
    redactor = step_of(cfg.redaction)
    if redactor is not None:
        steps.append(RedactionStep(redactor))  # type: ignore[arg-type]
    decontaminator = step_of(cfg.decontamination)
    if decontaminator is not None:
        steps.append(DecontaminationStep(decontaminator))  # type: ignore[arg-type]
    return steps


def _safe(reason: str) -> str:
    return reason.replace(":", "_").replace("/", "_")


class Dropped:
    """Dropped records of one shard, one gzip shard per reason (only with write_dropped)."""

    def __init__(self, folder: Path, stem: str, enabled: bool) -> None:
        self.folder, self.stem, self.enabled = folder, stem, enabled
        self.writers: dict[str, ShardWriter] = {}

    def write(self, reason: str, line: bytes) -> None:
        if not self.enabled:
            return
        if reason not in self.writers:
            # one file per reason and shard: no roll-over (these limits are never reached)
            self.writers[reason] = ShardWriter(self.folder / _safe(reason), self.stem, max_records=1 << 62, max_bytes=1 << 62)
        self.writers[reason].write_line(line)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


class StepRunner:
    """Applies the steps to each record: None when it survives, else its (counted, set aside) reason."""

    def __init__(self, steps: list[Step], dropped: Dropped) -> None:
        self.steps, self.sink = steps, dropped
        self.counts: Counter[str] = Counter()

    def drop(self, reason: str, line: bytes) -> None:
        self.counts[reason] += 1
        self.sink.write(reason, line)

    def run(self, record: Record) -> str | None:
        for step in self.steps:
            reason = step.decide(record)
            if reason is not None:
                self.drop(reason, record.line)
                return reason
        return None

    def find(self, kind: type) -> Any:
        return next((s for s in self.steps if isinstance(s, kind)), None)
