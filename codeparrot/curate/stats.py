"""Drop counts per reason, the in = kept + dropped invariant, and the human-readable tables.

Records are counted per reason; a shard that cannot be read at all (not gzip) holds no records to count
and is reported as a shard set aside, by reason, below the record counts.
"""

from __future__ import annotations

from collections.abc import Mapping

from codeparrot.curate import filters

EXACT_DUP = "exact-dup"
NEAR_DUP = "near-dup"
EMPTY_SHARD = "empty-shard"
# unreadable input, in the order of codeparrot.shards' reasons, then ours
BAD_INPUT = ("bad-gzip", "truncated-shard", "bad-json", "bad-utf8", "missing-field", "bad-field", EMPTY_SHARD)


def reason_rank(reason: str) -> tuple[int, str]:
    """Pipeline order: bad input, license, heuristics, exact dedup, near dedup; unknown reasons last."""
    if reason in BAD_INPUT:
        return (0, f"{BAD_INPUT.index(reason):02d}")
    if reason.startswith("license:"):
        return (1, reason)
    if reason in filters.REASONS:
        return (2, f"{filters.REASONS.index(reason):02d}")
    return {EXACT_DUP: (3, ""), NEAR_DUP: (4, "")}.get(reason, (5, reason))


def ordered(dropped: Mapping[str, int]) -> dict[str, int]:
    """Non-zero counts in pipeline order."""
    return {k: dropped[k] for k in sorted(dropped, key=reason_rank) if dropped[k]}


def check_balance(records_in: int, kept: int, dropped: Mapping[str, int]) -> None:
    """Every input record is kept or dropped for exactly one reason."""
    total = kept + sum(dropped.values())
    if total != records_in:
        raise AssertionError(f"records in ({records_in}) != kept ({kept}) + dropped ({total - kept}): a record was lost")


def rows(
    records_in: int, kept: int, dropped: Mapping[str, int], set_aside: Mapping[str, int] | None = None
) -> list[dict[str, str]]:
    """Table rows: records in, then each drop reason, then kept, with shares of the input; then the shards
    set aside per reason (`set_aside`), which hold no countable records."""

    def share(n: int) -> str:
        return f"{100 * n / records_in:.2f}%" if records_in else "-"

    out = [{"": "records in", "count": str(records_in), "share": share(records_in)}]
    out += [{"": f"dropped: {reason}", "count": str(n), "share": share(n)} for reason, n in ordered(dropped).items()]
    out.append({"": "kept", "count": str(kept), "share": share(kept)})
    out += [{"": f"shards set aside: {reason}", "count": str(n), "share": "-"} for reason, n in sorted((set_aside or {}).items())]
    return out


def summary_line(records_in: int, kept: int, dropped: Mapping[str, int], set_aside: Mapping[str, int] | None = None) -> str:
    """The counts in one line: '0 of 4 records kept (license:gpl-3.0 3, bad-gzip 1); 1 shard set aside (not-gzip 1)'."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in ordered(dropped).items()) or "nothing dropped"
    line = f"{kept} of {records_in} records kept ({reasons})"
    if set_aside:
        n = sum(set_aside.values())
        line += f"; {n} shard{'s' * (n != 1)} set aside ({', '.join(f'{r} {c}' for r, c in sorted(set_aside.items()))})"
    return line


def text_table(records_in: int, kept: int, dropped: Mapping[str, int], set_aside: Mapping[str, int] | None = None) -> str:
    """A fixed-width table for the terminal."""
    table = rows(records_in, kept, dropped, set_aside)
    width = max(len(r[""]) for r in table)
    num = max(len(r["count"]) for r in table)
    return "\n".join(f"{r['']:<{width}}  {r['count']:>{num}}  {r['share']:>7}" for r in table)


def markdown_table(records_in: int, kept: int, dropped: Mapping[str, int], set_aside: Mapping[str, int] | None = None) -> str:
    """The same table in GitHub markdown, for Prefect artifacts and stats.md."""
    table = rows(records_in, kept, dropped, set_aside)
    lines = ["| | count | share |", "|---|---:|---:|"]
    lines += [f"| {r['']} | {r['count']} | {r['share']} |" for r in table]
    return "\n".join(lines)
