"""License allow-list over the values of BigQuery `bigquery-public-data.github_repos.licenses`.

That table knows exactly 15 license keys (GitHub's licensee detection at snapshot time). We group them
in three tiers; a selection is a tier name, a list of keys, or both (`permissive,mpl-2.0`). A record
whose license is missing, or is not one of the 15 keys, is dropped with its own reason: we never guess.
"""

from __future__ import annotations

from collections.abc import Iterable

PERMISSIVE = (
    "mit",
    "apache-2.0",
    "bsd-2-clause",
    "bsd-3-clause",
    "isc",
    "unlicense",
    "cc0-1.0",
    # permissive per the Blue Oak Council list; it asks for notices and marked changes, not shared source
    "artistic-2.0",
)
# file-level or library-level copyleft: the license follows the file or library, not the whole program
WEAK_COPYLEFT = ("mpl-2.0", "epl-1.0", "lgpl-2.1", "lgpl-3.0")
STRONG_COPYLEFT = ("gpl-2.0", "gpl-3.0", "agpl-3.0")
KNOWN = PERMISSIVE + WEAK_COPYLEFT + STRONG_COPYLEFT

# Tiers are cumulative: each one allows what the tier before it allows.
TIERS: dict[str, tuple[str, ...]] = {
    "permissive": PERMISSIVE,
    "weak-copyleft": PERMISSIVE + WEAK_COPYLEFT,
    "all": KNOWN,
}
#: Selection that switches the license filter off (records pass whatever their license field says).
ANY = "any"

MISSING = "license:missing"
UNKNOWN = "license:unknown"


def resolve(selection: str | Iterable[str]) -> tuple[str, ...]:
    """The sorted license keys a selection allows; `("any",)` for no filter. Raises ValueError with the
    valid names when an item is neither a tier nor a known key."""
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    names = [item.strip().lower() for item in items if item.strip()]
    if not names:
        raise ValueError(f"empty license selection: pass a tier ({', '.join(TIERS)}), '{ANY}', or license keys")
    if ANY in names:
        if len(names) > 1:
            raise ValueError(f"'{ANY}' switches the license filter off; it cannot be combined with {names}")
        return (ANY,)
    allowed: set[str] = set()
    for name in names:
        if name in TIERS:
            allowed.update(TIERS[name])
        elif name in KNOWN:
            allowed.add(name)
        else:
            raise ValueError(
                f"unknown license selection {name!r}: use a tier ({', '.join(TIERS)}), '{ANY}', "
                f"or keys of github_repos.licenses ({', '.join(KNOWN)})"
            )
    return tuple(sorted(allowed))


def normalise(value: object) -> str | None:
    """The license key of a record's `license` field, or None when it is missing or empty."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return text or None


def drop_reason(value: object, allowed: frozenset[str]) -> str | None:
    """None to keep; otherwise the reason: `license:missing`, `license:unknown` or `license:<key>`."""
    key = normalise(value)
    if key is None:
        return MISSING
    if key in allowed:
        return None
    return f"license:{key}" if key in KNOWN else UNKNOWN
