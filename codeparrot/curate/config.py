"""Configs of the curation stage: `CurateConfig` (filters, exact dedup, output layout) and the nested
`DedupConfig` (MinHash LSH near-dedup)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from codeparrot.config import StageConfig
from codeparrot.curate import licenses
from codeparrot.curate.decontaminate import DecontaminationConfig
from codeparrot.curate.minhash import bands_for, candidate_probability
from codeparrot.curate.pii import RedactionConfig

#: Smallest chance that a pair exactly at the threshold becomes a candidate that we accept from a banding.
MIN_RECALL_AT_THRESHOLD = 0.99
#: Recall at the threshold of the banding chosen when bands and rows are not given.
DEFAULT_RECALL = 0.9999


class DedupConfig(StageConfig):
    """MinHash LSH near-dedup: which files count as near-duplicates and which copy survives."""

    threshold: float = Field(0.85, gt=0.0, le=1.0, description="Jaccard similarity from which two files are duplicates.")
    shingling: Literal["tokens", "5gram"] = Field(
        "tokens",
        description="'tokens': sets of tokens split on [^A-Za-z_0-9] (CodeParrot); '5gram': 5-grams of them (bigcode).",
    )
    min_tokens: int = Field(10, ge=1, description="Files with fewer unique tokens are never duplicates (CodeParrot: 10).")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length).")
    # Unset, bands x rows is chosen for the threshold by `bands_for`: recall >= 0.9999 at the threshold with
    # the fewest candidates 0.2 below it. For 0.85 and 128 permutations that is 21 x 6:
    # P(candidate) = 1 - (1 - J^6)^21 = 0.99995 at J = 0.85 and 0.998 at J = 0.8. CodeParrot's datasketch
    # setting (threshold 0.85, 256 perms) picks 13 x 19, balancing false positives against misses:
    # P = 0.455 at J = 0.85, 0.17 at 0.8. Our price, candidates at J ~ 0.6 (P = 0.63), is paid by the
    # signature estimate and exact Jaccard, which reject them.
    bands: int = Field(None, ge=1, description="LSH bands; a pair is a candidate when one band matches (default: from the threshold).")
    rows: int = Field(None, ge=1, description="Signature rows per band, bands x rows <= num_perm (default: from the threshold).")
    keep: Literal["most-copies", "min-key"] = Field(
        "most-copies",
        description="Survivor of a cluster: most `copies`, ties to the smallest (repo_name, path); or just the smallest key.",
    )
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations.")
    max_bucket: int = Field(
        512,
        ge=2,
        description="LSH buckets larger than this pair each member with its neighbours in key order and with "
        "the bucket's first member, not with every member, to bound the work on template-generated families.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_banding(cls, data: Any) -> Any:
        if not isinstance(data, dict) or (data.get("bands") is not None and data.get("rows") is not None):
            return data
        data = dict(data)
        num_perm, threshold = data.get("num_perm", 128), data.get("threshold", 0.85)
        if data.get("bands") is not None:
            data["rows"] = max(1, num_perm // data["bands"])
        elif data.get("rows") is not None:
            data["bands"] = max(1, num_perm // data["rows"])
        elif isinstance(threshold, int | float) and 0 < threshold <= 1 and isinstance(num_perm, int) and num_perm >= 1:
            data["bands"], data["rows"] = bands_for(threshold, num_perm, recall=DEFAULT_RECALL)
        return data

    @model_validator(mode="after")
    def _check_banding(self) -> DedupConfig:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}: "
                "raise num_perm or lower bands/rows"
            )
        recall = candidate_probability(self.threshold, self.bands, self.rows)
        if recall < MIN_RECALL_AT_THRESHOLD:
            raise ValueError(
                f"{self.bands} bands x {self.rows} rows find a pair at J = {self.threshold} with probability "
                f"{recall:.3f} < {MIN_RECALL_AT_THRESHOLD}: use more bands or fewer rows"
            )
        return self

    @property
    def shingle(self) -> int:
        return 5 if self.shingling == "5gram" else 1


class CurateConfig(StageConfig):
    """License allow-list, CodeParrot heuristics (each switchable; None switches a threshold off), exact and
    near dedup, and the layout of the output shards."""

    licenses: tuple[str, ...] = Field(
        ("permissive",),
        description="Tier (permissive | weak-copyleft | all), license keys, or 'any' for no license filter.",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the probabilistic drops (config-or-test, no-keywords).")
    exact_dedup: bool = Field(True, description="Drop exact copies (md5 of the content without whitespace).")
    autogenerated: bool = Field(True, description="Drop files with an auto-generated marker in the first lines.")
    line_max: int | None = Field(1000, ge=1, description="Drop files with a line longer than this.")
    line_mean: float | None = Field(100.0, gt=0, description="Drop files whose mean line length is above this.")
    alpha_frac: float | None = Field(0.25, ge=0, le=1, description="Drop files with a smaller alphanumeric fraction.")
    config_or_test: bool = Field(True, description="Drop config and test files with probability drop_probability.")
    no_keywords: bool = Field(True, description="Drop files without def/class/for/while with probability drop_probability.")
    drop_probability: float = Field(0.7, ge=0, le=1, description="Chance of each probabilistic drop (reference: 0.7).")
    few_assignments: int | None = Field(4, ge=0, description="Drop files with at most this many '=' characters.")
    scan_lines: int = Field(5, ge=1, description="Lines scanned for auto-generated and config/test markers.")
    config_test_coeff: float = Field(0.05, gt=0, le=1, description="config/test counts above this x lines mark a file.")
    tokenizer_dir: Path | None = Field(None, description="Tokenizer folder (tokenizer.json) for the char/token filter.")
    min_token_ratio: float = Field(1.5, gt=0, description="Drop files with fewer characters per token (with a tokenizer).")
    # Both run per record on what the heuristics keep, before exact and near dedup (two copies that differ
    # only by a secret collapse): redaction, then decontamination.
    redaction: RedactionConfig = Field(
        default_factory=RedactionConfig, description="Secrets and personal data replaced by placeholders."
    )
    decontamination: DecontaminationConfig = Field(
        default_factory=DecontaminationConfig, description="Benchmarks whose problems and solutions are removed."
    )
    near_dedup: bool = Field(True, description="MinHash LSH near-dedup after the filters and exact dedup.")
    dedup: DedupConfig = Field(
        default_factory=DedupConfig, title="Near-dedup settings",
        description="MinHash LSH near-deduplication: Jaccard threshold, shingles, permutations, bands and rows.",
    )  # fmt: skip
    write_dropped: bool = Field(False, description="Also write dropped records to dropped/REASON/ (one folder per reason).")
    shard_max_records: int = Field(10_000, ge=1, description="Records per output shard at most.")
    # 64 MiB of JSON per shard: a few shards per GB, which the writer threads compress in parallel
    shard_max_bytes: int = Field(64 * 2**20, ge=1, description="Uncompressed bytes per output shard at most.")
    # level 1 is ~3x faster than 6 for ~15 % more bytes; these shards are an intermediate for publish
    compresslevel: int = Field(1, ge=0, le=9, description="gzip level of the output shards.")
    strict: bool = Field(False, description="Fail on the first unreadable line instead of counting it.")

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"strict"})

    @field_validator("licenses", mode="before")
    @classmethod
    def _resolve_licenses(cls, value: Any) -> tuple[str, ...]:
        return licenses.resolve(value)

    @model_validator(mode="after")
    def _check(self) -> CurateConfig:
        if self.tokenizer_dir is not None and not (Path(self.tokenizer_dir) / "tokenizer.json").is_file():
            raise ValueError(
                f"tokenizer_dir {self.tokenizer_dir} has no tokenizer.json: pass a folder written by "
                "`codeparrot tokenizer`, or leave it unset to skip the char/token filter"
            )
        return self

    @property
    def license_filter(self) -> frozenset[str] | None:
        """The allowed keys, or None when the license filter is off."""
        return None if self.licenses == (licenses.ANY,) else frozenset(self.licenses)

    def shard_fingerprint(self) -> str:
        """Fingerprint of what `filter_shard` produces: the settings only `finalize` reads left out, so
        changing the threshold or the output layout reuses the per-shard work."""
        fields = self.fingerprint_fields()
        for name in ("shard_max_records", "shard_max_bytes", "compresslevel"):
            fields.pop(name)
        fields["dedup"] = {k: v for k, v in fields["dedup"].items() if k not in ("threshold", "keep", "max_bucket")}
        # The benchmark files' and detect-secrets' content, not just their settings.
        fields["steps"] = [_step_fingerprint(self.decontamination), _step_fingerprint(self.redaction)]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @classmethod
    def dedup_only(cls, dedup: DedupConfig | None = None, **overrides: Any) -> CurateConfig:
        """Near-dedup alone: no license filter, no heuristics, no exact dedup."""
        off: dict[str, Any] = {
            "licenses": licenses.ANY,
            "exact_dedup": False,
            "autogenerated": False,
            "line_max": None,
            "line_mean": None,
            "alpha_frac": None,
            "config_or_test": False,
            "no_keywords": False,
            "few_assignments": None,
            "near_dedup": True,
            "redaction": RedactionConfig(emails=False, ip_addresses=False, api_keys=False, passwords=False),
            "decontamination": DecontaminationConfig(enabled=False),
            "dedup": dedup or DedupConfig(),
        }
        return cls(**{**off, **overrides})


@functools.cache
def _step_fingerprint(cfg: DecontaminationConfig | RedactionConfig) -> str:
    from codeparrot.curate import decontaminate, pii

    if isinstance(cfg, DecontaminationConfig):
        return decontaminate.fingerprint(cfg) if cfg.enabled else "off"
    return pii.fingerprint(cfg) if any(cfg.model_dump().values()) else "off"
