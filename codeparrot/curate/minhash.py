"""MinHash maths, vectorised with NumPy: token sets, shingles, signatures, LSH band hashes, S-curve.

Tokens follow the CodeParrot near-dedup script: the content split on `[^A-Za-z_0-9]`, empty pieces
dropped, as a set. Token characters are ASCII, so we find them on the UTF-8 bytes of a whole batch of
documents at once (every non-ASCII byte is a separator, as every non-ASCII character is in the str regex)
and hash each token with a stable 64-bit hash (no per-process salt, unlike `hash()`), so signatures
computed by different workers or runs agree.

A document becomes its sorted set of 44-bit token (or 5-gram) hashes: the top 20 bits of a sort key
hold the document's index within the batch, so one `np.sort` dedups every document of a batch. 44 bits
keep the chance that two distinct tokens of a corpus share a hash negligible (~1e-2 expected collisions
for a 500k-token vocabulary), and the sets double as the exact-Jaccard ground truth for verification.

Signatures use multiply-shift hashing, `((a * x + b) mod 2**64) >> 32` with random 64-bit `a`, `b` and
32-bit `x` (Dietzfelbinger 1996: strongly universal), one permutation per row, min over the set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

try:  # the C accelerator (setup.py builds it when a compiler is there); same results as the NumPy path
    from codeparrot.curate import _native
except ImportError:  # pragma: no cover - exercised by forcing NATIVE = None in tests
    _native = None
NATIVE = _native

TOKEN_HASH_BITS = 44
_DOC_BITS = 64 - TOKEN_HASH_BITS
#: Documents per `token_sets` call: the batch index must fit in the sort key's top bits.
MAX_BATCH_DOCS = 1 << _DOC_BITS
_TOKEN_MASK = np.uint64((1 << TOKEN_HASH_BITS) - 1)

_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants (Steele et al. 2014)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)

_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
_TOKEN_TABLE = bytes(int(i in _TOKEN_CHARS) for i in range(256))
# little-endian masks keeping the first k bytes of an 8-byte word
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that spreads every input bit over the output."""
    x = x ^ (x >> _S30)
    tmp = np.empty_like(x)
    x *= _M1
    x ^= np.right_shift(x, _S27, out=tmp)
    x *= _M2
    x ^= np.right_shift(x, _S31, out=tmp)
    return x


@dataclass(frozen=True, slots=True)
class TokenSets:
    """Per-document sorted unique token hashes of one batch, concatenated (CSR layout)."""

    hashes: np.ndarray  # uint64, TOKEN_HASH_BITS significant bits, sorted within each document
    offsets: np.ndarray  # int64, len(docs) + 1
    n_tokens: np.ndarray  # int64: unique tokens per document (equals the set size for 'tokens')

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]


def _token_runs(contents: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """The joined batch buffer, and start, end and document index of every token occurrence."""
    # a separator before, between and after the documents: no token spans two of them, and token runs
    # alternate start, end, start, end along the buffer. 8 zero bytes let an 8-byte word be read at
    # any token start.
    joined = b"\n" + b"\n".join(contents) + b"\n" + bytes(8)
    is_tok = np.frombuffer(joined.translate(_TOKEN_TABLE), dtype=bool)  # bytes.translate: ~1 GB/s
    edges = np.flatnonzero(is_tok[1:] != is_tok[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    lengths = np.fromiter(map(len, contents), dtype=np.int64, count=len(contents))
    doc_starts = np.ones(len(contents), dtype=np.int64)
    doc_starts[1:] += np.cumsum(lengths[:-1] + 1)
    first = np.searchsorted(starts, doc_starts)
    doc_ids = np.repeat(np.arange(len(contents), dtype=np.int64), np.diff(np.append(first, len(starts))))
    return joined, starts, ends, doc_ids


def _hash_runs(joined: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each byte run `joined[start:end]`, 8 bytes per vector step."""
    words = np.ndarray((len(joined) - 7,), dtype="<u8", buffer=joined, strides=(1,))
    lengths = ends - starts
    h = words[starts] & _BYTE_MASKS[np.minimum(lengths, 8)]
    todo = np.flatnonzero(lengths > 8)
    step = 1
    while todo.size:  # long tokens only: each pass folds in the next 8 bytes of what is still left
        rest = lengths[todo] - 8 * step
        h[todo] = mix64(h[todo]) ^ (words[starts[todo] + 8 * step] & _BYTE_MASKS[np.minimum(rest, 8)])
        step += 1
        todo = todo[rest > 8]
    return mix64(h ^ (lengths.astype(np.uint64) * _GOLDEN))


def _native_hashes(contents: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """What `_token_runs` + `_hash_runs` compute, in one C pass over the documents."""
    joined = b"\n".join(contents) + bytes(8)  # padding: the C side loads whole 8-byte words
    lengths = np.fromiter(map(len, contents), dtype=np.int64, count=len(contents))
    starts = np.zeros(len(contents), dtype=np.int64)
    starts[1:] = np.cumsum(lengths[:-1] + 1)
    cap = len(joined) // 2 + len(contents) + 1  # token runs alternate with separators
    h = np.empty(cap, dtype=np.uint64)
    docs = np.empty(cap, dtype=np.int64)
    n = NATIVE.token_hashes(joined, starts, starts + lengths, h, docs)
    return h[:n], docs[:n]


def _shingle(h: np.ndarray, doc_ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-grams of consecutive tokens inside one document (bigcode-style shingles)."""
    if len(h) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    valid = doc_ids[: len(h) - n + 1] == doc_ids[n - 1 :]
    acc = h[: len(h) - n + 1].copy()
    for k in range(1, n):
        acc = mix64(acc) ^ h[k : len(h) - n + 1 + k]
    return mix64(acc)[valid], doc_ids[: len(h) - n + 1][valid]


def _unique_per_doc(h: np.ndarray, doc_ids: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    key = (doc_ids.astype(np.uint64) << np.uint64(TOKEN_HASH_BITS)) | (h >> np.uint64(_DOC_BITS))
    key.sort()
    if key.size:
        keep = np.empty(key.size, dtype=bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        key = key[keep]
    counts = np.bincount((key >> np.uint64(TOKEN_HASH_BITS)).astype(np.int64), minlength=n_docs)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return key & _TOKEN_MASK, offsets


def token_sets(contents: list[bytes], *, shingle: int = 1) -> TokenSets:
    """Sorted unique token hashes (or hashes of `shingle`-grams of tokens) of each UTF-8 document."""
    n_docs = len(contents)
    if n_docs > MAX_BATCH_DOCS:
        raise ValueError(f"at most {MAX_BATCH_DOCS} documents per batch, got {n_docs}: split the batch")
    if n_docs == 0:
        return TokenSets(np.zeros(0, np.uint64), np.zeros(1, np.int64), np.zeros(0, np.int64))
    if NATIVE is not None:
        h, doc_ids = _native_hashes(contents)
    else:
        joined, starts, ends, doc_ids = _token_runs(contents)
        h = _hash_runs(joined, starts, ends)
    tokens, offsets = _unique_per_doc(h, doc_ids, n_docs)
    n_tokens = np.diff(offsets)
    if shingle > 1:
        sh, sh_docs = _shingle(h, doc_ids, shingle)
        tokens, offsets = _unique_per_doc(sh, sh_docs, n_docs)
    return TokenSets(tokens, offsets, n_tokens)


def set_digest(sets: TokenSets) -> np.ndarray:
    """An order-free 64-bit digest of each set: equal sets give equal digests (to find exact copies)."""
    mixed = mix64(sets.hashes ^ _GOLDEN)
    out = np.zeros(len(sets), dtype=np.uint64)
    nonempty = np.flatnonzero(np.diff(sets.offsets) > 0)
    if nonempty.size:
        out[nonempty] = np.add.reduceat(mixed, sets.offsets[nonempty])
    return mix64(out ^ np.diff(sets.offsets).astype(np.uint64))


@functools.cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The `a` (odd) and `b` coefficients of `num_perm` multiply-shift hash functions (read-only, cached:
    numpy.random's import alone is ~0.1 s, once per process instead of once per shard)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, num_perm, dtype=np.uint64)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def signatures(sets: TokenSets, a: np.ndarray, b: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """MinHash signatures (len(rows) x num_perm, uint32) of the selected non-empty documents."""
    docs = np.flatnonzero(np.diff(sets.offsets) > 0) if rows is None else np.asarray(rows)
    if len(docs) == 0:
        return np.empty((0, len(a)), dtype=np.uint32)
    lengths = sets.offsets[docs + 1] - sets.offsets[docs]
    if np.any(lengths == 0):
        raise ValueError("cannot sign an empty set")
    if NATIVE is not None:
        sig = np.empty((len(docs), len(a)), dtype=np.uint32)
        NATIVE.minhash(
            np.ascontiguousarray(sets.hashes, np.uint64), np.ascontiguousarray(sets.offsets, np.int64),
            np.ascontiguousarray(docs, np.int64), np.ascontiguousarray(a, np.uint64), np.ascontiguousarray(b, np.uint64), sig,
        )  # fmt: skip
        return sig
    # the selected documents' tokens contiguously, then one vector pass over them per permutation
    if np.array_equal(docs, np.arange(docs[0], docs[0] + len(docs))):
        x = sets.hashes[sets.offsets[docs[0]] : sets.offsets[docs[-1] + 1]] & np.uint64(0xFFFFFFFF)
    else:
        x = np.concatenate([sets.doc(int(i)) for i in docs]) & np.uint64(0xFFFFFFFF)
    bounds = np.zeros(len(docs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=bounds[1:])
    out = np.empty((len(a), len(docs)), dtype=np.uint64)
    buf = np.empty_like(x)
    for j in range(len(a)):
        np.multiply(x, a[j], out=buf)
        buf += b[j]
        buf >>= _S32
        np.minimum.reduceat(buf, bounds, out=out[j])
    return out.T.astype(np.uint32)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per band of `rows` signature values (n x bands): equal bands, equal hashes."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, have {sig.shape[1]}")
    out = np.empty((bands, sig.shape[0]), dtype=np.uint64)
    s = np.ascontiguousarray(sig.T, dtype=np.uint64)  # one contiguous row per permutation
    for k in range(bands):
        h = np.full(sig.shape[0], mix64(np.array([k], dtype=np.uint64))[0], dtype=np.uint64)
        for r in range(k * rows, (k + 1) * rows):
            h = mix64(h ^ s[r])
        out[k] = h
    return out.T.copy()


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Chance that two sets of this Jaccard similarity share at least one band: 1 - (1 - J^r)^b."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted arrays of unique hashes."""
    if a.size == 0 and b.size == 0:
        return 0.0
    if a.size > b.size:
        a, b = b, a
    pos = np.searchsorted(b, a)
    pos[pos == b.size] = 0
    inter = int(np.count_nonzero(b[pos] == a)) if b.size else 0
    return inter / (a.size + b.size - inter)


def estimated_jaccard(sig: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Fraction of equal signature rows for each pair (left[k], right[k]): an unbiased estimate of J."""
    out = np.empty(len(left), dtype=np.float32)
    for s in range(0, len(left), chunk):
        eq = sig[left[s : s + chunk]] == sig[right[s : s + chunk]]
        out[s : s + chunk] = eq.mean(axis=1)
    return out


def bands_for(threshold: float, num_perm: int, *, recall: float = 0.999) -> tuple[int, int]:
    """The (bands, rows) within `num_perm` with recall >= `recall` at `threshold` and the fewest false
    candidates at threshold - 0.2 (a helper for choosing defaults; candidates are verified exactly)."""
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands == 0:
            break
        if candidate_probability(threshold, bands, rows) < recall:
            continue
        low = candidate_probability(max(threshold - 0.2, 0.0), bands, rows)
        if best is None or low < best[0]:
            best = (low, bands, rows)
    if best is None:
        raise ValueError(f"no banding of {num_perm} permutations reaches recall {recall} at J={threshold}")
    return best[1], best[2]
