import gzip
import json
from pathlib import Path

import pytest

from codeparrot.services.seed import BIGQUERY_LICENSES, SeedConfig, build_seed, license_from_text, map_license

CORE = "def f(x):\n    return x * 2\n" * 60  # ~1.7 KiB


def make_dist(root: Path, name: str, top: str, files: dict[str, bytes], metadata: str, license_text: str | None = None) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{metadata}")
    record = []
    for rel, data in files.items():
        p = root / top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        record.append(f"{top}/{rel},,")
    if license_text:
        (info / "LICENSE").write_text(license_text)
        record.append(f"{info.name}/LICENSE,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site-packages"
    make_dist(
        root, "alpha-pkg", "alpha",
        {
            "__init__.py": b"x = 1\n",
            "core.py": CORE.encode(),
            "big.py": b"y = 2\n" * 200_000,
            "notes.txt": b"some notes\n" * 200,
            "lib.so": b"\x7fELF\x00\x00" * 300,
            "latin.py": "# caf\xe9\n".encode("latin-1") * 300,
        },
        "License-Expression: MIT\n",
    )  # fmt: skip
    make_dist(
        root, "beta", "beta", {"mod.py": CORE.encode(), "other.py": b"z = 3\n" * 300},
        "Classifier: License :: OSI Approved :: BSD License\n",
        "Redistribution and use in source and binary forms ... Neither the name of the copyright holder ...",
    )  # fmt: skip
    make_dist(root, "gamma", "gamma", {"g.py": b"g = 1\n" * 300}, "License: Proprietary\n")
    return root


def read(folder: Path, table: str) -> list[dict]:
    with gzip.open(folder / f"{table}.json.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def test_seed_tables_follow_the_public_schema_and_installed_metadata(site, tmp_path):
    cfg = SeedConfig(roots=(str(site),), max_mib=None, other_files_per_100_py=100)
    out = tmp_path / "seed"
    stats = build_seed(cfg, out)
    files = {r["path"]: r for r in read(out, "files")}
    contents = {r["id"]: r for r in read(out, "contents")}
    licenses = {r["repo_name"]: r["license"] for r in read(out, "licenses")}

    assert files["alpha/core.py"]["repo_name"] == "alpha-pkg/alpha"
    assert files["beta/mod.py"]["repo_name"] == "beta/beta"
    # identical files share one contents row (git blob id) with copies = 2
    assert files["alpha/core.py"]["id"] == files["beta/mod.py"]["id"]
    assert contents[files["alpha/core.py"]["id"]]["copies"] == 2
    assert contents[files["alpha/core.py"]["id"]]["content"] == CORE
    # binary: NUL bytes, non-UTF-8 .py; content is NULL as in github_repos
    for path in ("alpha/lib.so", "alpha/latin.py"):
        row = contents[files[path]["id"]]
        assert row["binary"] is True and row["content"] is None
    assert contents[files["alpha/notes.txt"]["id"]]["binary"] is False
    assert contents[files["alpha/big.py"]["id"]]["size"] == 1_200_000
    # licenses: SPDX expression, BSD classifier resolved by its text, proprietary -> no row
    assert licenses == {"alpha-pkg/alpha": "mit", "beta/beta": "bsd-3-clause"}
    assert stats["files"] == len(files) == 9 and stats["licensed_repos"] == 2


def test_seed_is_deterministic_and_the_cap_samples_by_content(site, tmp_path):
    cfg = SeedConfig(roots=(str(site),), max_mib=None)
    build_seed(cfg, tmp_path / "a")
    build_seed(cfg, tmp_path / "b")
    for table in ("files", "contents", "licenses"):
        assert (tmp_path / "a" / f"{table}.json.gz").read_bytes() == (tmp_path / "b" / f"{table}.json.gz").read_bytes()
    capped = SeedConfig(roots=(str(site),), max_mib=0.6)
    build_seed(capped, tmp_path / "c")
    paths = {r["path"] for r in read(tmp_path / "c", "files")}
    assert 0 < len(paths) < 9
    # both copies of a shared file are in or out together
    assert ("alpha/core.py" in paths) == ("beta/mod.py" in paths)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MIT", "mit"),
        ("Apache-2.0", "apache-2.0"),
        ("Apache Software License", "apache-2.0"),
        ("MIT OR Apache-2.0", "mit"),
        ("MPL-2.0 AND (Apache-2.0 OR MIT)", "mpl-2.0"),
        ("PSF-2.0", None),
        ("MIT-0", None),
        ("GNU General Public License v3 (GPLv3)", "gpl-3.0"),
        ("LGPL-2.1-or-later", "lgpl-2.1"),
        ("", None),
        (None, None),
    ],
)
def test_license_names_map_onto_bigquery_values(text, expected):
    got = map_license(text)
    assert got == expected
    assert got is None or got in BIGQUERY_LICENSES


def test_license_texts_are_recognised():
    assert license_from_text("Permission is hereby granted, free of charge, to any person") == "mit"
    assert license_from_text("Redistribution and use in source and binary forms, with or without") == "bsd-2-clause"
    assert license_from_text("                                 Apache License\n Version 2.0") == "apache-2.0"
    assert license_from_text("just some words") is None
