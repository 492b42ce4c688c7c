"""From LSH band hashes to duplicate clusters: candidate pairs, exact verification, union-find.

A cluster is a connected component of the graph whose edges are pairs with exact Jaccard >= threshold.
Candidates come from shared LSH bands; a cheap signature estimate rejects the clearly dissimilar ones
before exact verification. Everything is a pure function of the sets, so the clusters do not depend on
input order or worker count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from codeparrot.curate.minhash import estimated_jaccard, jaccard

log = logging.getLogger(__name__)

#: Standard deviations of the signature estimate below the threshold at which a candidate is still verified.
ESTIMATE_SIGMAS = 5.0


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def groups(self, members: np.ndarray) -> list[list[int]]:
        """The sets with two or more of `members`, each sorted, ordered by their smallest member."""
        by_root: dict[int, list[int]] = {}
        for m in members.tolist():
            by_root.setdefault(self.find(m), []).append(m)
        return sorted((sorted(g) for g in by_root.values() if len(g) > 1), key=lambda g: g[0])


def bucket_pairs(hashes: np.ndarray, rows: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j, maybe repeated) of `rows` that share a hash in one table of band hashes, and the
    hash of the bucket that made each pair.

    A bucket larger than `max_bucket` links each member to the next one and to the first one (in row
    order) instead of to every member: O(k) pairs instead of O(k^2) for template-generated families,
    whose members also meet in other bands.
    """
    n = len(hashes)
    order = np.lexsort((rows, hashes))
    col, members_all = hashes[order], rows[order]
    breaks = np.flatnonzero(col[1:] != col[:-1]) + 1
    starts = np.concatenate(([0], breaks)).astype(np.int64)
    sizes = np.diff(np.concatenate((starts, [n])))
    chunks: list[np.ndarray] = []
    of: list[np.ndarray] = []
    two = starts[sizes == 2]
    if two.size:
        chunks.append(np.stack([members_all[two], members_all[two + 1]], axis=1))
        of.append(col[two])
    for start, size in zip(starts[sizes > 2].tolist(), sizes[sizes > 2].tolist(), strict=True):
        members = members_all[start : start + size]
        if size <= max_bucket:
            i, j = np.triu_indices(size, 1)
            chunks.append(np.stack([members[i], members[j]], axis=1))
        else:
            chain = np.stack([members[:-1], members[1:]], axis=1)
            star = np.stack([np.full(size - 2, members[0]), members[2:]], axis=1)
            chunks.append(np.concatenate([chain, star]))
        of.append(np.full(len(chunks[-1]), col[start], dtype=np.uint64))
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, np.uint64)
    return np.concatenate(chunks).astype(np.int64), np.concatenate(of)


def unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Each pair once, as (i < j), sorted."""
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(pairs, axis=1)
    code = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([code // n, code % n], axis=1)


def candidate_pairs(bands: np.ndarray, max_bucket: int) -> np.ndarray:
    """Unique pairs (i < j) of rows sharing at least one band hash; rows must be in canonical order."""
    n, n_bands = bands.shape
    rows = np.arange(n, dtype=np.int64)
    chunks = [bucket_pairs(bands[:, k], rows, max_bucket)[0] for k in range(n_bands)]
    return unique_pairs(np.concatenate(chunks) if chunks else np.zeros((0, 2), np.int64), n)


def estimate_floor(threshold: float, num_perm: int) -> float:
    """Lowest signature estimate still verified: ESTIMATE_SIGMAS binomial standard deviations below the
    threshold (0.69 at 0.85 with 128 permutations), so a true pair is rejected with p < 1e-6."""
    sigma = math.sqrt(threshold * (1 - threshold) / num_perm)
    return max(0.0, threshold - max(0.05, ESTIMATE_SIGMAS * sigma))


@dataclass
class VerifyStats:
    candidates: int = 0
    after_estimate: int = 0
    verified: int = 0
    edges: int = 0
    skipped_connected: int = 0


def link_near_duplicates(
    uf: UnionFind,
    ids: np.ndarray,
    sig: np.ndarray,
    bands: np.ndarray,
    tokens: Callable[[int], np.ndarray],
    *,
    threshold: float,
    max_bucket: int,
) -> VerifyStats:
    """Union every candidate pair of `ids` (rows of sig/bands, canonical order) whose exact Jaccard
    reaches the threshold."""
    return verify_pairs(uf, ids, sig, candidate_pairs(bands, max_bucket), tokens, threshold=threshold)


def verify_pairs(
    uf: UnionFind,
    ids: np.ndarray,
    sig: np.ndarray,
    pairs: np.ndarray,
    tokens: Callable[[int], np.ndarray],
    *,
    threshold: float,
    edges: list[tuple[int, int]] | None = None,
    on_candidates: Callable[[np.ndarray], None] | None = None,
) -> VerifyStats:
    """Union the candidate `pairs` (rows of `ids` and `sig`) whose exact Jaccard reaches the threshold,
    appending each verified edge (as ids) to `edges`. Pairs already connected are skipped: they cannot
    change the components. `on_candidates` is told the pairs left after the signature estimate, before
    any token set is asked for (so it can read only those)."""
    stats = VerifyStats(candidates=len(pairs))
    if not len(pairs):
        return stats
    est = estimated_jaccard(sig, pairs[:, 0], pairs[:, 1])
    keep = est >= estimate_floor(threshold, sig.shape[1])
    pairs, est = pairs[keep], est[keep]
    stats.after_estimate = len(pairs)
    if on_candidates is not None:
        on_candidates(pairs)
    # most similar first: components form early and later pairs inside them are skipped unverified
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -est))
    for a, b in ids[pairs[order]].tolist():
        if uf.find(a) == uf.find(b):
            stats.skipped_connected += 1
            continue
        stats.verified += 1
        if jaccard(tokens(a), tokens(b)) >= threshold:
            uf.union(a, b)
            stats.edges += 1
            if edges is not None:
                edges.append((a, b))
    log.debug("near-dup candidates: %s", stats)
    return stats
