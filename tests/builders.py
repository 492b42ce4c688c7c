"""Builders of small test inputs shared across test modules (each test builds its own data)."""

from __future__ import annotations

from pathlib import Path

from codeparrot.gcp import GCPConfig, bigquery_client
from codeparrot.services.seed import load_tables, write_table

SRC_PROJECT = "source-project"
KIB = "k" * 1024


def content(n: int, tag: str) -> str:
    return (tag + "\n" + "x" * n)[:n]


def seed_rows(license_r2: str | None = None) -> dict[str, list[dict]]:
    """A github_repos with one row per WHERE clause of the query, including its boundaries."""
    blobs = {
        "ok": content(2048, "ok"),
        "small": content(1023, "small"),
        "lo": content(1024, "lo"),
        "hi": content(1048575, "hi"),
        "huge": content(1048576, "huge"),
        "bin": None,
        "txt": content(2048, "txt"),
        "nolic": content(2048, "nolic"),
    }
    files = [
        ("r1", "pkg/ok.py", "ok"), ("r3", "vendored/ok.py", "ok"),  # same blob in two repos: copies = 2
        ("r1", "pkg/small.py", "small"), ("r1", "pkg/lo.py", "lo"), ("r1", "pkg/hi.py", "hi"),
        ("r1", "pkg/huge.py", "huge"), ("r1", "pkg/bin.py", "bin"), ("r1", "pkg/notes.txt", "txt"),
        ("r1", "pkg/ok.py.bak", "txt"), ("r2", "lib/nolic.py", "nolic"),
    ]  # fmt: skip
    copies = {b: sum(1 for f in files if f[2] == b) for b in blobs}
    return {
        "files": [{"repo_name": r, "ref": "refs/heads/main", "path": p, "mode": 33188, "id": b} for r, p, b in files],
        "contents": [
            {"id": b, "size": 4096 if c is None else len(c), "content": c, "binary": c is None, "copies": copies[b]}
            for b, c in blobs.items()
        ],
        "licenses": [{"repo_name": "r1", "license": "mit"}, {"repo_name": "r3", "license": "apache-2.0"}]
        + ([{"repo_name": "r2", "license": license_r2}] if license_r2 else []),
    }


def load_source(embedded_services, gcp: GCPConfig, name: str, rows: dict[str, list[dict]]) -> None:
    folder = Path(embedded_services.bigquery_local_gcs_root) / "test-seeds" / name
    for table, table_rows in rows.items():
        write_table(table_rows, folder / f"{table}.json.gz")
    from google.cloud import bigquery

    client = bigquery_client(gcp)
    client.create_dataset(bigquery.Dataset(f"{SRC_PROJECT}.github_repos"), exists_ok=True)
    load_tables(client, f"{SRC_PROJECT}.github_repos", f"gs://test-seeds/{name}")


def task_run_states(flow_state, timeout: float = 60.0) -> dict[str, list[str]]:
    """Task name -> state names of every task run of a finished flow run and its subflows.

    Task-run states reach the API through events, asynchronously, so this waits until every task run
    is in a final state and two reads a second apart agree.
    """
    import time

    deadline = time.monotonic() + timeout
    previous = None
    while True:
        states, final = _task_run_states(flow_state)
        if (final and states == previous) or time.monotonic() > deadline:
            return states
        previous = states if final else None
        time.sleep(1.0)


def _task_run_states(flow_state) -> tuple[dict[str, list[str]], bool]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    states: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        pending = [flow_state.state_details.flow_run_id]
        final = bool(client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending))))
        while pending:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending)))
            final = final and all(r.state is not None and r.state.is_final() for r in runs)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[r.id for r in runs]))
            )
            parents = {c.parent_task_run_id for c in children}
            for run in runs:
                if run.id not in parents:  # a subflow's stand-in task run: its own tasks are listed instead
                    states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
            pending = [c.id for c in children]
    return states, final


def stdlib_records(limit: int = 200, *, min_bytes: int = 1024) -> list[dict]:
    """Real Python files from the standard library as export-shaped records, deterministic."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("json/*.py")) + sorted(root.glob("email/*.py")):
        data = path.read_bytes()
        if len(data) < min_bytes:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(root)
        repo = f"cpython/{rel.parts[0] if len(rel.parts) > 1 else rel.stem[:3]}"
        out.append({"repo_name": repo, "path": str(rel), "copies": 1, "size": len(data), "content": text, "license": "mit"})
        if len(out) >= limit:
            break
    return out


def tiny_dataset(folder: Path, limit: int = 200, valid_fraction: float = 0.15) -> Path:
    """A published dataset folder (Parquet train/valid + card) from stdlib files."""
    from codeparrot.publish import PublishConfig, build_dataset

    build_dataset(stdlib_records(limit), folder, PublishConfig(valid_fraction=valid_fraction))
    return folder


def source_tables(records: list[dict], licenses: dict[str, str | None]) -> dict[str, list[dict]]:
    """github_repos rows (files, contents, licenses) holding `records`, sharing blobs like git does."""
    import hashlib

    files, contents = [], {}
    for r in records:
        data = r["content"].encode()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        files.append({"repo_name": r["repo_name"], "ref": "refs/heads/main", "path": r["path"], "mode": 33188, "id": blob})
        row = contents.setdefault(blob, {"id": blob, "size": len(data), "content": r["content"], "binary": False, "copies": 0})
        row["copies"] += 1
    lic = [{"repo_name": repo, "license": v} for repo, v in sorted(licenses.items()) if v]
    return {"files": files, "contents": list(contents.values()), "licenses": lic}


def python_source(n_files: int = 160) -> dict[str, list[dict]]:
    """A small github_repos of real stdlib code in several repos, with vendored copies and mixed licenses."""
    recs = stdlib_records(n_files)
    for i, r in enumerate(recs):
        r["repo_name"] = f"org{i % 12}/project{i % 12}"
    vendored = [dict(r, repo_name="vendor/bundle", path=f"_vendor/{r['path']}") for r in recs[:15]]
    lic = {f"org{i}/project{i}": ("mit", "apache-2.0", "bsd-3-clause", "gpl-3.0")[i % 4] for i in range(12)}
    lic["vendor/bundle"] = "mit"
    return source_tables(recs + vendored, lic)
