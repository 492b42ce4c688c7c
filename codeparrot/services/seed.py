"""A `github_repos` dataset for the embedded BigQuery, built from the Python files on this machine.

Same schema as `bigquery-public-data.github_repos` (the columns the seed query reads):
`files(repo_name, ref, path, mode, id)`, `contents(id, size, content, binary, copies)`,
`licenses(repo_name, license)`. One "repository" per top-level package: site-packages files belong to the
distribution whose RECORD lists them (`<dist>/<top-level>`), stdlib files to `cpython/<top-level>`.
Licenses come from package metadata (License-Expression, License, classifiers, then license text) mapped
onto BigQuery's 15 values; unmappable ones get no licenses row, as on GitHub, so the JOIN drops them.
`id` is the git blob sha1 and `copies` counts files sharing it. Non-.py text files, binary files (content
NULL), and .py files outside the size bounds are included so each WHERE clause of the query matters.

Built deterministically from the installed files into NDJSON.gz, cached by a fingerprint of the inputs,
and loaded once into the emulator (the dataset's labels record which seed it holds).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata as md
import logging
import os
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from codeparrot.config import StageConfig
from codeparrot.errors import ServiceError

log = logging.getLogger(__name__)

SEED_VERSION = "1"
SEED_BUCKET = "codeparrot-seed"

# The 15 license values of github_repos.licenses.
BIGQUERY_LICENSES = (
    "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "isc", "unlicense", "cc0-1.0", "artistic-2.0",
    "mpl-2.0", "epl-1.0", "lgpl-2.1", "lgpl-3.0", "gpl-2.0", "gpl-3.0", "agpl-3.0",
)  # fmt: skip

SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "files": [("repo_name", "STRING"), ("ref", "STRING"), ("path", "STRING"), ("mode", "INT64"), ("id", "STRING")],
    "contents": [("id", "STRING"), ("size", "INT64"), ("content", "STRING"), ("binary", "BOOL"), ("copies", "INT64")],
    "licenses": [("repo_name", "STRING"), ("license", "STRING")],
}

# Classifier / free-text names (lowercased) to BigQuery values. "BSD License" alone is ambiguous and
# is resolved from the license text.
_NAMES = {
    "mit": "mit", "mit license": "mit",
    "apache-2.0": "apache-2.0", "apache 2.0": "apache-2.0", "apache software license": "apache-2.0",
    "apache license 2.0": "apache-2.0", "apache license, version 2.0": "apache-2.0", "apache 2": "apache-2.0",
    "bsd-3-clause": "bsd-3-clause", "bsd 3-clause": "bsd-3-clause", "new bsd": "bsd-3-clause",
    "modified bsd": "bsd-3-clause", "bsd-2-clause": "bsd-2-clause", "simplified bsd": "bsd-2-clause",
    "isc": "isc", "isc license (iscl)": "isc", "isc license": "isc",
    "unlicense": "unlicense", "the unlicense (unlicense)": "unlicense",
    "cc0-1.0": "cc0-1.0", "cc0 1.0 universal (cc0 1.0) public domain dedication": "cc0-1.0",
    "artistic-2.0": "artistic-2.0", "mpl-2.0": "mpl-2.0", "mozilla public license 2.0 (mpl 2.0)": "mpl-2.0",
    "epl-1.0": "epl-1.0", "lgpl-2.1": "lgpl-2.1", "lgpl-2.1-only": "lgpl-2.1", "lgpl-2.1-or-later": "lgpl-2.1",
    "lgpl-3.0": "lgpl-3.0", "lgpl-3.0-only": "lgpl-3.0", "lgpl-3.0-or-later": "lgpl-3.0",
    "gnu lesser general public license v3 (lgplv3)": "lgpl-3.0",
    "gnu lesser general public license v2 or later (lgplv2+)": "lgpl-2.1",
    "gpl-2.0": "gpl-2.0", "gpl-2.0-only": "gpl-2.0", "gpl-2.0-or-later": "gpl-2.0",
    "gnu general public license v2 (gplv2)": "gpl-2.0", "gpl-3.0": "gpl-3.0", "gpl-3.0-only": "gpl-3.0",
    "gpl-3.0-or-later": "gpl-3.0", "gnu general public license v3 (gplv3)": "gpl-3.0",
    "agpl-3.0": "agpl-3.0", "agpl-3.0-only": "agpl-3.0", "agpl-3.0-or-later": "agpl-3.0",
    "gnu affero general public license v3": "agpl-3.0",
}  # fmt: skip

# Phrases that identify a license text (first match wins; more specific texts come first).
_TEXTS = [
    ("GNU AFFERO GENERAL PUBLIC LICENSE", "agpl-3.0"),
    ("GNU LESSER GENERAL PUBLIC LICENSE\n                       Version 3", "lgpl-3.0"),
    ("GNU LESSER GENERAL PUBLIC LICENSE", "lgpl-2.1"),
    ("GNU GENERAL PUBLIC LICENSE\n                       Version 3", "gpl-3.0"),
    ("GNU GENERAL PUBLIC LICENSE", "gpl-2.0"),
    ("Mozilla Public License Version 2.0", "mpl-2.0"),
    ("Apache License", "apache-2.0"),
    ("Permission is hereby granted, free of charge", "mit"),
    ("This is free and unencumbered software released into the public domain", "unlicense"),
    ("with or without fee is hereby granted, provided that the above", "isc"),
]

TEXT_SUFFIXES = (".pyi", ".txt", ".cfg", ".toml", ".json", ".md", ".rst", ".ini", ".html", ".js", ".css")
BINARY_SUFFIXES = (".so", ".pyc", ".png", ".gz", ".zip", ".whl", ".ico", ".exe", ".mo")
# Non-.py rows only need to exist for the WHERE clauses to matter; big shared libraries add nothing.
OTHER_MAX_BYTES = 2 * 2**20


class SeedConfig(StageConfig):
    """What goes into the embedded `github_repos` tables."""

    roots: tuple[str, ...] = Field((), description="Folders to scan; empty means the stdlib and site-packages.")
    max_mib: float | None = Field(
        96.0, gt=0, description="Cap on .py content (MiB), sampled by content hash; None takes everything."
    )
    other_files_per_100_py: int = Field(
        8, ge=0, le=100, description="Non-.py and binary rows per 100 .py rows, so every filter of the query matters."
    )
    project: str = Field("bigquery-public-data", description="Project of the seed dataset (as in production).")
    dataset: str = Field("github_repos", description="Dataset name of the seed tables.")

    def scan_roots(self) -> list[Path]:
        if self.roots:
            return [Path(r) for r in self.roots]
        paths = sysconfig.get_paths()
        return sorted({Path(paths["stdlib"]), Path(paths["purelib"])})


def map_license(text: str | None) -> str | None:
    """A license name or SPDX expression to one of BigQuery's values, or None if none fits."""
    if not text:
        return None
    text = text.strip()
    direct = _NAMES.get(text.lower())
    if direct:
        return direct
    # SPDX expression: GitHub records one license per repository; take the first term that maps.
    for term in re.split(r"\s+(?:OR|AND|WITH)\s+|[()]", text):
        mapped = _NAMES.get(term.strip().lower())
        if mapped:
            return mapped
    return None


def license_from_text(text: str) -> str | None:
    if "Redistribution and use in source and binary forms" in text:
        return "bsd-3-clause" if "Neither the name" in text or "names of its contributors" in text else "bsd-2-clause"
    for phrase, value in _TEXTS:
        if phrase in text:
            return value
    return None


def distribution_license(dist: md.Distribution) -> str | None:
    meta = dist.metadata
    for field in ("License-Expression", "License"):
        value = meta.get(field)
        if value and len(value) < 100:
            mapped = map_license(value)
            if mapped:
                return mapped
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License :: "):
            mapped = map_license(classifier.rsplit(" :: ", 1)[-1])
            if mapped:
                return mapped
    for f in dist.files or []:
        name = f.name.upper()
        if "LICEN" in name or "COPYING" in name:
            try:
                mapped = license_from_text(Path(dist.locate_file(f)).read_text(errors="replace"))
            except OSError:
                continue
            if mapped:
                return mapped
    return None


def _owner_map(root: Path) -> tuple[dict[str, str], dict[str, str | None]]:
    """file path (relative to root) -> repo name, and repo name -> license, from installed distributions."""
    owner: dict[str, str] = {}
    licenses: dict[str, str | None] = {}
    for dist in md.distributions(path=[str(root)]):
        name = re.sub(r"[^a-z0-9]+", "-", (dist.metadata.get("Name") or "unknown").lower())
        lic = distribution_license(dist)
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if len(parts) < 2 or parts[0].endswith((".dist-info", ".egg-info")) or parts[0] == "..":
                continue
            repo = f"{name}/{parts[0]}"
            owner[str(f)] = repo
            licenses[repo] = lic
    return owner, licenses


def _blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sampled(key: str, rate: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < rate


def scan(cfg: SeedConfig) -> Iterator[tuple[str, str, Path]]:
    """(repo_name, path, file) for every candidate file, in a deterministic order."""
    roots = cfg.scan_roots()
    for root in roots:
        if not root.is_dir():
            raise ServiceError(f"seed root {root} is not a folder")
        owner, _ = _owner_map(root)
        stdlib = "site-packages" not in root.parts
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            # Skip nested scanned roots, caches, and the site-packages inside the stdlib folder.
            dirnames[:] = sorted(
                d for d in dirnames
                if d not in ("__pycache__", "site-packages") and here / d not in roots and not d.endswith(".dist-info")
            )  # fmt: skip
            for fname in sorted(filenames):
                path = here / fname
                rel = path.relative_to(root)
                if len(rel.parts) < 2:
                    continue
                repo = f"cpython/{rel.parts[0]}" if stdlib else owner.get(str(rel), f"unknown/{rel.parts[0]}")
                yield repo, str(rel), path


def build_seed(cfg: SeedConfig, out_dir: Path) -> dict[str, Any]:
    """Write files/contents/licenses NDJSON.gz into `out_dir`; returns counts. Deterministic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    py: list[tuple[str, str, Path, int]] = []
    other: list[tuple[str, str, Path, int]] = []
    for repo, rel, path in scan(cfg):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        if rel.endswith(".py"):
            py.append((repo, rel, path, size))
        elif rel.endswith(TEXT_SUFFIXES + BINARY_SUFFIXES) and size <= OTHER_MAX_BYTES:
            other.append((repo, rel, path, size))
    total = sum(s for *_, s in py)
    rate = 1.0 if cfg.max_mib is None else min(1.0, cfg.max_mib * 2**20 / max(total, 1))
    other_rate = min(1.0, len(py) * rate * cfg.other_files_per_100_py / 100 / max(len(other), 1))

    licenses: dict[str, str | None] = {}
    for root in cfg.scan_roots():
        licenses.update(_owner_map(root)[1])

    files_rows: list[dict[str, Any]] = []
    contents: dict[str, dict[str, Any]] = {}
    copies: Counter[str] = Counter()
    for repo, rel, path, _size in sorted(py + other, key=lambda t: (t[0], t[1])):
        is_py = rel.endswith(".py")
        data = path.read_bytes()
        blob = _blob_sha1(data)
        # Sampling by content keeps every copy of a file together, so `copies` and exact duplicates stay real.
        if not _sampled(blob, rate if is_py else other_rate):
            continue
        binary = b"\0" in data or rel.endswith(BINARY_SUFFIXES)
        text: str | None = None
        if not binary:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                binary = True
        files_rows.append({"repo_name": repo, "ref": "refs/heads/main", "path": rel, "mode": 33188, "id": blob})
        copies[blob] += 1
        contents.setdefault(blob, {"id": blob, "size": len(data), "content": text, "binary": binary})
    for blob, row in contents.items():
        row["copies"] = copies[blob]

    repos = sorted({r["repo_name"] for r in files_rows})
    license_rows = [{"repo_name": r, "license": licenses[r]} for r in repos if licenses.get(r)]
    for name, rows in (("files", files_rows), ("contents", list(contents.values())), ("licenses", license_rows)):
        write_table(rows, out_dir / f"{name}.json.gz")
    stats = {
        "files": len(files_rows),
        "contents": len(contents),
        "licensed_repos": len(license_rows),
        "repos": len(repos),
        "py_files": sum(1 for r in files_rows if r["path"].endswith(".py")),
        "text_mib": round(sum(c["size"] for c in contents.values() if not c["binary"]) / 2**20, 1),
        "py_mib": round(sum(contents[r["id"]]["size"] for r in files_rows if r["path"].endswith(".py")) / 2**20, 1),
    }
    (out_dir / "stats.json").write_bytes(orjson.dumps(stats))
    return stats


def seed_fingerprint(cfg: SeedConfig) -> str:
    """Identity of the seed: config + the scanned roots' listing (names, sizes, mtimes)."""
    h = hashlib.sha256(cfg.fingerprint(SEED_VERSION).encode())
    for root in cfg.scan_roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, fname))
                    h.update(f"{dirpath}/{fname}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load_tables(client: Any, dataset_id: str, gs_folder: str) -> None:
    """Load `<gs_folder>/{files,contents,licenses}.json.gz` into `dataset_id`, replacing the tables."""
    from google.cloud import bigquery

    for table, schema in SCHEMAS.items():
        job = client.load_table_from_uri(
            f"{gs_folder}/{table}.json.gz",
            f"{dataset_id}.{table}",
            job_config=bigquery.LoadJobConfig(
                schema=[bigquery.SchemaField(n, t) for n, t in schema],
                source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            ),
        )
        job.result(timeout=600)


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """NDJSON.gz, atomically and byte-reproducibly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.GzipFile(tmp, "wb", compresslevel=1, mtime=0) as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")
    os.replace(tmp, path)


def ensure_seed(client: Any, cfg: SeedConfig, local_gcs_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Build (once) and load (once) the seed into the emulator behind `client`; returns its stats."""
    from google.cloud import bigquery

    fp = seed_fingerprint(cfg)
    dataset_id = f"{cfg.project}.{cfg.dataset}"
    try:
        existing = client.get_dataset(dataset_id)
        if (existing.labels or {}).get("seed") == fp:
            log.info("seed %s already loaded into %s", fp, dataset_id)
            return {"fingerprint": fp, "loaded": False}
    except Exception as exc:
        log.debug("no seed dataset yet: %s", exc)
    folder = Path(local_gcs_root) / SEED_BUCKET / fp
    if not (folder / "stats.json").exists():
        log.info("building the github_repos seed from %s", ", ".join(map(str, cfg.scan_roots())))
        build_seed(cfg, folder)
    stats = orjson.loads((folder / "stats.json").read_bytes())
    ds = bigquery.Dataset(dataset_id)
    ds.labels = {"seed": "loading"}
    client.create_dataset(ds, exists_ok=True)
    load_tables(client, dataset_id, f"gs://{SEED_BUCKET}/{fp}")
    ds = client.get_dataset(dataset_id)
    ds.labels = {"seed": fp}
    client.update_dataset(ds, ["labels"])
    log.info("loaded seed %s into %s: %s", fp, dataset_id, stats)
    return {"fingerprint": fp, "loaded": True, **stats}

