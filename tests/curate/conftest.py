"""Tiny corpora built on the fly: Python-like files, near-duplicate forks, and shards of them."""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

WORDS = [
    "value", "index", "result", "option", "buffer", "parser", "token", "stream", "handler", "request",
    "response", "matrix", "vector", "counter", "window", "record", "schema", "column", "layer", "module",
]


def python_file(rng: random.Random, n_funcs: int = 6) -> str:
    """A syntactically plausible Python file with its own identifiers (distinct files share few tokens)."""
    tag = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    out = [f'"""Module {tag}."""', "import os", ""]
    for f in range(n_funcs):
        a, b = rng.sample(WORDS, 2)
        name = f"{a}_{b}_{tag}{f}"
        out += [
            f"def {name}({a}_{tag}, {b}_{tag}{f}=None):",
            f"    total_{tag}{f} = {rng.randint(0, 99)}",
            f"    for item_{tag}{f} in range({a}_{tag}):",
            f"        total_{tag}{f} = total_{tag}{f} + item_{tag}{f} * {rng.randint(2, 9)}",
            f"    return total_{tag}{f}",
            "",
        ]
    return "\n".join(out) + "\n"


def fork(content: str, rng: random.Random) -> str:
    """A near-duplicate: one line dropped, one duplicated (Jaccard to the original stays high)."""
    lines = content.split("\n")
    del lines[rng.randrange(3, len(lines) - 1)]
    i = rng.randrange(3, len(lines) - 1)
    lines.insert(i, lines[i])
    return "\n".join(lines)


def record(repo: str, path: str, content: str, license: str | None = "mit", copies: int = 1) -> dict[str, Any]:
    rec: dict[str, Any] = {"repo_name": repo, "path": path, "copies": copies, "size": len(content.encode())}
    rec["content"] = content
    if license is not None:
        rec["license"] = license
    return rec


def write_raw_shard(path: Path, lines: list[bytes]) -> Path:
    """A shard from raw lines (to include malformed ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
    return path


def write_records(folder: Path, records: list[dict[str, Any]], per_shard: int, stem: str = "file") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(0, len(records), per_shard):
        paths.append(write_raw_shard(folder / f"{stem}-{k // per_shard:05d}.json.gz", [orjson.dumps(r) for r in records[k : k + per_shard]]))
    return paths


@pytest.fixture
def dup_corpus() -> Callable[[int], list[dict[str, Any]]]:
    """Records: distinct files plus forks of some of them (near-dups) and a whitespace copy (exact dup)."""

    def make(seed: int = 0, n: int = 24, n_forks: int = 6) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        recs = [record(f"org{i % 5}/repo{i}", f"pkg/mod{i}.py", python_file(rng)) for i in range(n)]
        for k in range(n_forks):
            src = recs[k]
            recs.append(record(f"fork{k}/{src['repo_name']}", src["path"], fork(src["content"], rng)))
        src = recs[n - 1]
        recs.append(record(f"copy/{src['repo_name']}", src["path"], src["content"].replace("\n", "  \n")))
        return recs

    return make


@pytest.fixture
def tools() -> SimpleNamespace:
    """The builders above, for tests (conftest modules cannot be imported under --import-mode=importlib)."""
    return SimpleNamespace(
        python_file=python_file, fork=fork, record=record, write_raw_shard=write_raw_shard, write_records=write_records
    )
