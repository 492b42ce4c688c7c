import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
from google.cloud import storage

from codeparrot.artifacts import Resolver
from codeparrot.curate.config import CurateConfig
from codeparrot.download import DownloadConfig
from codeparrot.export import ExportConfig
from codeparrot.hub import folder_hash
from flows.dataset_refresh import dataset_refresh
from tests.builders import SRC_PROJECT, load_source, python_source, task_run_states

STAGES = ("export", "download", "curate-shard", "publish", "refresh-report", "announce")
# curation's partitioned stages (one task per partition or writer range; not cached by Prefect: a curated
# folder's marker makes a finished curation free, so a rerun runs none of them)
CURATE_STAGES = ("curate-exact-dedup", "curate-identical-sets", "curate-near-dedup", "curate-write")


def local_copy(uri: str) -> Path:
    """The dataset as any later stage reads it: resolved from the Hub stand-in (on the GCS emulator)."""
    return Resolver.from_env().resolve(uri).path


@pytest.fixture(scope="module")
def source(embedded_services, gcp_module):
    load_source(embedded_services, gcp_module, "refresh-src", python_source())
    return ExportConfig(source_project=SRC_PROJECT, bucket="refresh-test", prefix="refresh")


@pytest.fixture(scope="module")
def gcp_module(embedded_services):
    from codeparrot.gcp import GCPConfig

    return GCPConfig(project=embedded_services.project, bigquery_endpoint=embedded_services.bigquery,
                     storage_endpoint=embedded_services.storage)  # fmt: skip


@pytest.fixture(scope="module")
def first_run(prefect_harness, source, tmp_path_factory):
    params = {"export": source, "download": DownloadConfig(cache_dir=tmp_path_factory.mktemp("dl"))}
    state = dataset_refresh(**params, return_state=True)
    return params, state


def test_refresh_publishes_a_loadable_dataset_whose_counts_reconcile(first_run):
    _, state = first_run
    assert state.is_completed()
    assert set(task_run_states(state)) == set(STAGES) | set(CURATE_STAGES)
    states = task_run_states(state)
    assert all(s == ["Completed"] for name, s in states.items() if name not in ("curate-shard", *CURATE_STAGES))
    assert all(set(states[name]) == {"Completed"} for name in ("curate-shard", *CURATE_STAGES))
    result = state.result()
    assert result.dataset == f"hf://datasets/codeparrot/codeparrot-clean@{result.revision}"
    folder = local_copy(result.dataset)
    ds = datasets.load_dataset(str(folder))
    assert ds["train"].num_rows + ds["valid"].num_rows == result.kept > 0
    stats = (Path(result.curated_dir) / "stats.json").read_text()
    import json

    doc = json.loads(stats)
    assert doc["records_in"] == result.rows == doc["kept"] + sum(doc["dropped"].values())
    assert doc["dropped"]["license:gpl-3.0"] > 0 and doc["dropped"]["exact-dup"] > 0  # both filters did work
    card = (folder / "README.md").read_text()
    assert f"{result.rows} rows" in card and "| curate |" in card and "exact-dup" in card


def test_an_unchanged_rerun_is_all_cache_hits(first_run):
    params, first = first_run
    second = dataset_refresh(**params, return_state=True)
    states = task_run_states(second)
    assert set(states) == set(STAGES)
    assert all(set(s) == {"Cached"} for name, s in states.items() if name != "announce"), states
    assert second.result().model_copy(update={"new": True}) == first.result()


def test_changing_the_license_list_reruns_curation_and_publish_only(first_run):
    params, first = first_run
    changed = dataset_refresh(**params, curate=CurateConfig(licenses=("all",)), return_state=True)
    states = task_run_states(changed)
    assert states["export"] == ["Cached"] and states["download"] == ["Cached"]
    assert set(states["curate-shard"]) == {"Completed"} and set(states["curate-write"]) == {"Completed"}
    assert states["publish"] == ["Completed"]
    assert changed.result().kept > first.result().kept  # gpl files are in now
    assert changed.result().revision != first.result().revision


def test_killing_gcs_mid_download_still_ends_with_the_identical_dataset(first_run, services, monkeypatch, tmp_path):
    params, first = first_run
    real = storage.Blob.download_to_file
    started, restarted = threading.Event(), threading.Event()

    def watched(self, *args, **kwargs):
        started.set()
        time.sleep(0.3)  # the emulator goes down while this request is in flight
        return real(self, *args, **kwargs)

    def kill_and_restart():
        started.wait(60)
        services.gcs.stop()
        time.sleep(2.0)
        services.restart_gcs()
        restarted.set()

    monkeypatch.setattr(storage.Blob, "download_to_file", watched)
    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    other = {"export": params["export"], "download": DownloadConfig(cache_dir=tmp_path / "dl2")}
    state = dataset_refresh(**other, force_refresh=True, return_state=True)
    killer.join()
    assert restarted.is_set() and state.is_completed()
    result = state.result()
    assert result.revision == first.result().revision
    assert folder_hash(local_copy(result.dataset)) == folder_hash(local_copy(first.result().dataset))


def _refresh_cli(home: Path) -> subprocess.Popen:
    env = dict(os.environ, CODEPARROT_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "codeparrot.cli", "refresh"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
def test_two_refreshes_at_once_share_cache_and_hub_without_corruption(embedded_services, gcp_module, tmp_path):
    from codeparrot.services.seed import load_tables, write_table

    folder = Path(embedded_services.bigquery_local_gcs_root) / "test-seeds" / "public"
    for table, rows in python_source().items():
        write_table(rows, folder / f"{table}.json.gz")
    from google.cloud import bigquery

    from codeparrot.gcp import bigquery_client

    client = bigquery_client(gcp_module)
    client.create_dataset(bigquery.Dataset("bigquery-public-data.github_repos"), exists_ok=True)
    load_tables(client, "bigquery-public-data.github_repos", "gs://test-seeds/public")
    procs = [_refresh_cli(tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    uris = {line.split()[1] for o in outputs for line in o.splitlines() if line.startswith("dataset:")}
    assert len(uris) == 1
    (uri,) = uris
    folder = local_copy(uri)
    assert folder_hash(folder)[:12] == uri.rsplit("@", 1)[1]
    assert Resolver.from_env().pin(uri.split("@")[0]) == Resolver.from_env().pin(uri), "the head is that revision"
    ds = datasets.load_dataset(str(folder))
    assert ds["train"].num_rows > 0 and ds["valid"].num_rows > 0


@pytest.mark.slow
def test_curation_on_a_local_dask_cluster_gives_the_same_dataset(first_run, tmp_path):
    params, first = first_run
    state = dataset_refresh(**params, dask_address="local", force_refresh=True, return_state=True)
    assert state.is_completed()
    assert set(task_run_states(state)["curate-shard"]) == {"Completed"}
    assert state.result().revision == first.result().revision


@pytest.mark.slow
def test_two_first_refreshes_on_a_fresh_home_both_succeed(tmp_path):
    # `codeparrot refresh & sleep 0.5; codeparrot refresh` with a fresh CODEPARROT_HOME and no endpoints
    # configured: one used to fail with "Could not set lock on ...bqemulator.duckdb".
    endpoint_vars = ("CODEPARROT_BIGQUERY_ENDPOINT", "STORAGE_EMULATOR_HOST", "CODEPARROT_GCP_PROJECT")
    env = {k: v for k, v in os.environ.items() if k not in endpoint_vars}
    env.update(CODEPARROT_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "codeparrot.cli", "refresh"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
        time.sleep(0.5)
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    uris = {line.split()[1] for o in outputs for line in o.splitlines() if line.startswith("dataset:")}
    assert len(uris) == 1  # the same revision, published once
    assert not (tmp_path / "services" / "state.json").exists()  # the last one out stopped the emulators
