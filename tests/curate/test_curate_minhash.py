"""Token sets against the reference's regex, signatures against exact Jaccard, the S-curve."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from codeparrot.curate import minhash as mh

NON_ALPHA = re.compile("[^A-Za-z_0-9]")


def regex_set(text: str) -> set[str]:
    return {t for t in NON_ALPHA.split(text) if t.strip()}


def random_doc(rng: random.Random) -> str:
    pieces = ["x", "foo_bar", "A1", "é", "中文", "self", "_", "9", " ", "\n", "(", ")", "==", "\t",
              "a" * 8, "b" * 9, "c" * 17, "d" * 100, "ok_token_with_many_chars_more_than_24"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))


def test_token_sets_equal_the_reference_split() -> None:
    rng = random.Random(0)
    docs = [random_doc(rng) for _ in range(400)] + ["", "abc", "abc def", "  x  ", "\u00e9x\u00e9"]
    sets = mh.token_sets([d.encode() for d in docs])
    for i, doc in enumerate(docs):
        ref = regex_set(doc)
        assert sets.n_tokens[i] == len(ref) == len(sets.doc(i))
        assert np.all(np.diff(sets.doc(i).astype(np.int64)) > 0)  # sorted and unique
    # the hashes are token identities: Jaccard over hashes equals Jaccard over strings
    for _ in range(300):
        i, j = rng.randrange(len(docs)), rng.randrange(len(docs))
        a, b = regex_set(docs[i]), regex_set(docs[j])
        exact = len(a & b) / len(a | b) if a | b else 0.0
        assert mh.jaccard(sets.doc(i), sets.doc(j)) == pytest.approx(exact)


def test_a_documents_set_does_not_depend_on_its_batch() -> None:
    rng = random.Random(1)
    docs = [random_doc(rng).encode() for _ in range(50)]
    together = mh.token_sets(docs)
    for i in (0, 17, 49):
        alone = mh.token_sets([docs[i]])
        assert np.array_equal(alone.doc(0), together.doc(i))
    assert np.array_equal(mh.set_digest(mh.token_sets(docs[:3]))[1], mh.set_digest(mh.token_sets([docs[1]]))[0])


def test_five_gram_shingles() -> None:
    text = "a b c d e f a b c d e"
    tokens = [t for t in NON_ALPHA.split(text) if t]
    grams = {tuple(tokens[k : k + 5]) for k in range(len(tokens) - 4)}
    sets = mh.token_sets([text.encode(), b"a b c d", b"a b c d e"], shingle=5)
    assert len(sets.doc(0)) == len(grams)
    assert len(sets.doc(1)) == 0  # fewer than 5 tokens: no shingle
    assert len(sets.doc(2)) == 1
    assert sets.n_tokens.tolist() == [6, 4, 5]  # unique tokens, what min_tokens compares against


def test_signature_estimates_track_exact_jaccard() -> None:
    rng = np.random.default_rng(0)
    universe = rng.choice(1 << 40, size=4000, replace=False).astype(np.uint64)
    a_set = np.sort(universe[:1000])
    docs, truths = [], []
    for overlap in (1000, 900, 800, 500, 100):
        b_set = np.sort(np.concatenate([universe[:overlap], universe[2000 : 2000 + 1000 - overlap]]))
        docs += [a_set, b_set]
        truths.append(mh.jaccard(a_set, b_set))
    sets = mh.TokenSets(np.concatenate(docs), np.concatenate([[0], np.cumsum([len(d) for d in docs])]), np.array([len(d) for d in docs]))
    a, b = mh.permutations(256, 7)
    sig = mh.signatures(sets, a, b)
    est = mh.estimated_jaccard(sig, np.arange(0, len(docs), 2), np.arange(1, len(docs), 2))
    for e, t in zip(est.tolist(), truths, strict=True):
        assert abs(e - t) < 4 * np.sqrt(t * (1 - t) / 256) + 1e-9
    assert est[0] == 1.0


def test_band_hashes_match_only_on_equal_bands() -> None:
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 2, 3, 4]], dtype=np.uint32)
    bands = mh.band_hashes(sig, bands=2, rows=2)
    assert bands[0, 0] == bands[1, 0] and bands[0, 0] != bands[2, 0]
    assert bands[0, 1] == bands[2, 1] and bands[0, 1] != bands[1, 1]
    assert bands[0, 0] != bands[0, 1] or sig[0, :2].tolist() != sig[0, 2:].tolist()
    with pytest.raises(ValueError, match="need 6 permutations"):
        mh.band_hashes(sig, bands=3, rows=2)


def test_s_curve_of_the_default_banding() -> None:
    assert mh.candidate_probability(0.85, 20, 6) > 0.9999
    assert mh.candidate_probability(0.8, 20, 6) > 0.997
    # CodeParrot's datasketch choice for 0.85 / 256 perms (13 x 19) finds under half the pairs at 0.85
    assert mh.candidate_probability(0.85, 13, 19) < 0.5
    bands, rows = mh.bands_for(0.85, 128, recall=0.9999)
    assert bands * rows <= 128 and mh.candidate_probability(0.85, bands, rows) >= 0.9999


@pytest.mark.skipif(mh.NATIVE is None, reason="the C accelerator was not built (no compiler at install)")
def test_c_accelerator_computes_exactly_what_numpy_computes(monkeypatch):
    rng = random.Random(3)
    alphabet = "abcXYZ_09 \t\n()=.:'\"é\u2603"
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))).encode() for _ in range(300)]
    docs += [b"", b"   ", b"x" * 41 + b" " + b"y" * 16, b"\x80\x81abc\xff_1"]
    a, b = mh.permutations(128, 7)
    native_sets = mh.token_sets(docs)
    native_sig = mh.signatures(native_sets, a, b)
    monkeypatch.setattr(mh, "NATIVE", None)
    numpy_sets = mh.token_sets(docs)
    numpy_sig = mh.signatures(numpy_sets, a, b)
    assert np.array_equal(native_sets.hashes, numpy_sets.hashes)
    assert np.array_equal(native_sets.offsets, numpy_sets.offsets)
    assert np.array_equal(native_sig, numpy_sig)
