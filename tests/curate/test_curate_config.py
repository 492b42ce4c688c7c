from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from codeparrot.config import StageConfig
from codeparrot.curate.config import CurateConfig, DedupConfig
from codeparrot.curate.minhash import candidate_probability


def test_configs_are_stage_configs_frozen_and_strict() -> None:
    cfg = CurateConfig()
    assert isinstance(cfg, StageConfig) and isinstance(cfg.dedup, StageConfig)
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        CurateConfig(sed=3)


def test_license_selection_is_normalised_into_the_fingerprint() -> None:
    a = CurateConfig(licenses="permissive")
    b = CurateConfig(licenses=["ISC", "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "unlicense", "cc0-1.0", "artistic-2.0"])
    assert a.licenses == b.licenses and a.fingerprint() == b.fingerprint()
    assert CurateConfig(licenses="all").fingerprint() != a.fingerprint()
    with pytest.raises(ValidationError, match="unknown license selection 'gpl'"):
        CurateConfig(licenses="gpl")


def test_volatile_and_finalize_only_fields() -> None:
    base = CurateConfig()
    assert CurateConfig(strict=True).fingerprint() == base.fingerprint()
    looser = CurateConfig(dedup=DedupConfig(threshold=0.8))
    assert looser.fingerprint() != base.fingerprint()
    assert looser.dedup.bands * looser.dedup.rows <= 128
    # the threshold only matters to finalize... unless it changes the banding, which the shards compute
    same_banding = CurateConfig(dedup=DedupConfig(threshold=0.86, bands=21, rows=6))
    assert same_banding.shard_fingerprint() == base.shard_fingerprint()
    assert CurateConfig(shard_max_records=5).shard_fingerprint() == base.shard_fingerprint()
    assert CurateConfig(seed=1).shard_fingerprint() != base.shard_fingerprint()


def test_default_banding_has_high_recall_at_any_threshold() -> None:
    for threshold in (0.6, 0.7, 0.8, 0.85, 0.9, 0.95):
        d = DedupConfig(threshold=threshold)
        assert d.bands * d.rows <= d.num_perm
        assert candidate_probability(threshold, d.bands, d.rows) >= 0.9999
    with pytest.raises(ValidationError, match="use more bands or fewer rows"):
        DedupConfig(bands=5, rows=20)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        DedupConfig(num_perm=64, bands=20, rows=6)


def test_tokenizer_dir_must_hold_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"has no tokenizer\.json"):
        CurateConfig(tokenizer_dir=tmp_path)


def test_dedup_only_switches_everything_else_off() -> None:
    cfg = CurateConfig.dedup_only(DedupConfig(threshold=0.9))
    assert cfg.license_filter is None and not cfg.exact_dedup and cfg.near_dedup
    assert cfg.line_max is None and cfg.alpha_frac is None and not cfg.no_keywords
    assert cfg.dedup.threshold == 0.9
