"""The Codex pass@k estimator against values computed by hand."""

from __future__ import annotations

import math

import pytest

from codeparrot.evaluate.passk import ks_for, mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),  # nothing passes
        (5, 5, 3, 1.0),  # everything passes
        (10, 1, 1, 0.1),  # pass@1 is the fraction correct
        (10, 3, 1, 0.3),
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (10, 2, 5, 1 - 56 / 252),  # 1 - C(8,5)/C(10,5)
        (10, 1, 10, 1.0),  # n - c < k: any 10 of 10 include the correct one
        (1000, 1, 100, 0.1),  # one correct sample: pass@k = k/n
    ],
)
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_exact_binomials_where_they_overflow_floats() -> None:
    exact = 1 - math.comb(190, 100) / math.comb(200, 100)  # Python ints: exact, then one division
    assert pass_at_k(200, 10, 100) == pytest.approx(exact, rel=1e-12)
    assert 0.0 < pass_at_k(2000, 1, 1) < pass_at_k(2000, 1, 10) < pass_at_k(2000, 1, 100) < 1.0


def test_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="at least k samples"):
        pass_at_k(3, 1, 10)


def test_ks_only_up_to_n() -> None:
    assert ks_for(1) == [1]
    assert ks_for(20) == [1, 10]
    assert ks_for(200) == [1, 10, 100]


def test_mean_over_problems() -> None:
    scores = mean_pass_at_k({"a": (10, 1), "b": (10, 0), "c": (10, 10)})
    assert scores == pytest.approx({"pass@1": (0.1 + 0 + 1) / 3, "pass@10": (1 + 0 + 1) / 3})
    assert mean_pass_at_k({}) == {}
