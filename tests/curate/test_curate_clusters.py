from __future__ import annotations

import numpy as np
import pytest

from codeparrot.curate import clusters
from codeparrot.curate.minhash import TokenSets, band_hashes, permutations, signatures


def test_union_find_groups() -> None:
    uf = clusters.UnionFind(6)
    assert uf.union(0, 1) and uf.union(3, 4) and uf.union(1, 4)
    assert not uf.union(0, 3)
    assert uf.groups(np.arange(6)) == [[0, 1, 3, 4]]


def test_candidate_pairs_small_and_large_buckets() -> None:
    bands = np.array([[1, 5], [1, 6], [2, 6], [3, 7]], dtype=np.uint64)
    assert clusters.candidate_pairs(bands, max_bucket=10).tolist() == [[0, 1], [1, 2]]
    big = np.zeros((6, 1), dtype=np.uint64)
    assert len(clusters.candidate_pairs(big, max_bucket=10)) == 15
    capped = clusters.candidate_pairs(big, max_bucket=4).tolist()
    assert len(capped) == 9 and [0, 5] in capped and [4, 5] in capped  # chain + star, O(k)


def test_estimate_floor_is_a_few_sigmas_below() -> None:
    floor = clusters.estimate_floor(0.85, 128)
    assert 0.65 < floor < 0.72
    assert clusters.estimate_floor(0.99, 128) == pytest.approx(0.94)


def test_chain_of_near_duplicates_is_one_component() -> None:
    rng = np.random.default_rng(0)
    base = rng.choice(1 << 40, size=600, replace=False).astype(np.uint64)
    # a ~ b (J~0.9), b ~ c (J~0.9), a vs c lower; d unrelated
    a = np.sort(base[:500])
    b = np.sort(base[25:525])
    c = np.sort(base[50:550])
    d = np.sort(rng.choice(1 << 40, size=500, replace=False).astype(np.uint64) | np.uint64(1 << 41))
    docs = [a, b, c, d]
    sets = TokenSets(np.concatenate(docs), np.concatenate([[0], np.cumsum([500] * 4)]), np.full(4, 500))
    perm = permutations(128, 1)
    sig = signatures(sets, *perm)
    bands = band_hashes(sig, 20, 6)
    uf = clusters.UnionFind(4)
    stats = clusters.link_near_duplicates(
        uf, np.arange(4), sig, bands, lambda g: docs[g], threshold=0.85, max_bucket=512
    )
    assert uf.groups(np.arange(4)) == [[0, 1, 2]]
    assert stats.edges == 2 and stats.verified >= 2
