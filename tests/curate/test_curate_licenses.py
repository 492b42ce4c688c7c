from __future__ import annotations

import pytest

from codeparrot.curate import licenses


def test_tiers_are_cumulative_and_cover_the_15_bigquery_keys() -> None:
    assert len(licenses.KNOWN) == len(set(licenses.KNOWN)) == 15
    assert set(licenses.TIERS["permissive"]) < set(licenses.TIERS["weak-copyleft"]) < set(licenses.TIERS["all"])
    assert set(licenses.TIERS["all"]) == set(licenses.KNOWN)
    assert "gpl-3.0" not in licenses.TIERS["weak-copyleft"] and "lgpl-3.0" in licenses.TIERS["weak-copyleft"]


def test_resolve_tier_list_and_mix() -> None:
    assert licenses.resolve("permissive") == tuple(sorted(licenses.PERMISSIVE))
    assert licenses.resolve(["MIT", " gpl-3.0 "]) == ("gpl-3.0", "mit")
    assert licenses.resolve("permissive,mpl-2.0") == tuple(sorted((*licenses.PERMISSIVE, "mpl-2.0")))
    assert licenses.resolve("any") == ("any",)


@pytest.mark.parametrize("bad", ["", "psf-2.0", "permissive,wtfpl", "any,mit"])
def test_resolve_rejects_unknown_names_with_the_valid_ones(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        licenses.resolve(bad)
    assert "permissive" in str(err.value) or "any" in str(err.value)


def test_drop_reasons_never_guess() -> None:
    allowed = frozenset(licenses.resolve("permissive"))
    assert licenses.drop_reason("mit", allowed) is None
    assert licenses.drop_reason(" Apache-2.0 ", allowed) is None  # case and spaces are normalised
    assert licenses.drop_reason("gpl-3.0", allowed) == "license:gpl-3.0"
    assert licenses.drop_reason("psf-2.0", allowed) == licenses.UNKNOWN
    assert licenses.drop_reason("mit license", allowed) == licenses.UNKNOWN
    for missing in (None, "", "   "):
        assert licenses.drop_reason(missing, allowed) == licenses.MISSING
