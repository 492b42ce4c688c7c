"""EvalConfig validation and what its fingerprint covers."""

from __future__ import annotations

import pytest

from codeparrot.errors import ConfigError
from codeparrot.evaluate.config import EvalConfig, SandboxLimits, build_config, build_limits


def test_defaults_are_codeparrots_protocol() -> None:
    cfg = EvalConfig()
    assert (cfg.n_samples, cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (200, 0.2, 0.95, 256)
    assert cfg.sandbox.timeout_s == 3.0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"temperature": 0}, "temperature must be in (0, 5]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"n_samples": 0}, "n_samples"),
        ({"run_perplexity": False, "run_humaneval": False}, "enable at least one"),
        ({"n_sample": 3}, "n_sample"),  # a typo is refused, not ignored
    ],
)
def test_invalid_settings_say_what_to_fix(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match="invalid evaluation settings") as info:
        build_config(**values)
    assert needle in str(info.value)


def test_invalid_limits() -> None:
    with pytest.raises(ConfigError, match="memory_mb"):
        build_limits(memory_mb=16)
    with pytest.raises(ConfigError, match="timeout_s"):
        build_limits(timeout_s=-1)


def test_fingerprint_ignores_where_and_how_parallel() -> None:
    base = EvalConfig()
    assert EvalConfig(workers=7, device="cpu").fingerprint() == base.fingerprint()
    assert EvalConfig(sandbox=SandboxLimits(uid_base=60000)).fingerprint() == base.fingerprint()
    assert EvalConfig(temperature=0.8).fingerprint() != base.fingerprint()
    assert EvalConfig(sandbox=SandboxLimits(timeout_s=5)).fingerprint() != base.fingerprint()


def test_humaneval_fields_leave_perplexity_out() -> None:
    a = EvalConfig(perplexity_batch_size=2).humaneval_fields()
    assert a == EvalConfig(perplexity_batch_size=32).humaneval_fields()
    assert a != EvalConfig(seed=2).humaneval_fields()


def test_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        EvalConfig().n_samples = 3  # type: ignore[misc]
