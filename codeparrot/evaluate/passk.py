"""The unbiased pass@k estimator of the Codex paper (Chen et al. 2021, arXiv:2107.03374, section 2.1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

#: The k the Codex paper and CodeParrot report.
DEFAULT_KS = (1, 10, 100)
#: pass@k in percent of the CodeParrot models, 200 samples per problem, from the CodeParrot README
#: (transformers examples/research_projects/codeparrot), the same numbers as chapter 10 of the book.
BOOK_PASS_AT_K: dict[str, dict[str, float]] = {
    "codeparrot-small (110M), reference": {"pass@1": 3.80, "pass@10": 6.57, "pass@100": 12.78},
    "codeparrot (1.5B), reference": {"pass@1": 3.99, "pass@10": 8.69, "pass@100": 17.88},
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that at least one of k samples drawn from n (c correct) passes.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), the paper's numerically stable form (no huge binomials).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}: draw at least k samples per problem")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int, ks: Iterable[int] = DEFAULT_KS) -> list[int]:
    """The k that n samples per problem can estimate (k <= n)."""
    return [k for k in ks if k <= n]


def mean_pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean pass@k over problems from {task_id: (n, c)}, for every k <= the smallest n."""
    if not counts:
        return {}
    n_min = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()])) for k in ks_for(n_min, ks)
    }
