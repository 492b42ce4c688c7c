import os
import subprocess
import sys

import pytest
from google.cloud import bigquery

from codeparrot.errors import ServiceError
from codeparrot.gcp import GCPConfig, bigquery_client, storage_client
from codeparrot.services.emulators import EmbeddedServices, ensure_services, pid_alive

ENDPOINT_VARS = ("CODEPARROT_BIGQUERY_ENDPOINT", "STORAGE_EMULATOR_HOST", "CODEPARROT_GCP_PROJECT")


def cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env["CODEPARROT_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "codeparrot.cli", *args], env=env, capture_output=True, text=True, timeout=180)


def test_real_clients_talk_to_the_emulators(gcp):
    bq = bigquery_client(gcp)
    bq.create_dataset(bigquery.Dataset(f"{gcp.project}.smoke"), exists_ok=True)
    rows = list(bq.query("SELECT @x * 2 AS y", job_config=bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("x", "INT64", 21)])).result())
    assert rows[0]["y"] == 42
    gcs = storage_client(gcp)
    bucket = gcs.lookup_bucket("smoke") or gcs.create_bucket("smoke")
    bucket.blob("a/b.txt").upload_from_string(b"hello")
    assert bucket.blob("a/b.txt").download_as_bytes() == b"hello"


def test_services_up_status_down_through_the_cli(tmp_path, monkeypatch):
    up = cli("services", "up", "--no-seed", home=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "export CODEPARROT_BIGQUERY_ENDPOINT=http://127.0.0.1:" in up.stdout
    status = cli("services", "status", home=tmp_path)
    assert status.returncode == 0 and status.stdout.count("healthy") == 2
    svc = EmbeddedServices(tmp_path / "services")
    running = svc.running()
    assert running is not None
    pids = [info.pid for info, _ in svc.status()]
    # a second start refuses instead of orphaning the first pair
    with pytest.raises(ServiceError, match="already run"):
        svc.start()
    # later commands find the running services without being told
    monkeypatch.setenv("CODEPARROT_HOME", str(tmp_path))
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    with ensure_services(seed=False) as found:
        assert found is not None and found.bigquery == running.bigquery
        assert GCPConfig.from_env().bigquery_endpoint == running.bigquery
    down = cli("services", "down", home=tmp_path)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not any(pid_alive(p) for p in pids)
    after = cli("services", "status", home=tmp_path)
    assert after.returncode == 1 and "not running" in after.stdout


def test_context_manager_stops_both_emulators(tmp_path):
    svc = EmbeddedServices(tmp_path)
    with svc as endpoints:
        pids = [info.pid for info, _ in svc.status()]
        assert all(pid_alive(p) for p in pids) and endpoints.storage.startswith("http://127.0.0.1:")
    assert not any(pid_alive(p) for p in pids)
    assert not (tmp_path / "state.json").exists()


SHARED_USER = """
import sys, time
from codeparrot.gcp import GCPConfig, storage_client
from codeparrot.services.emulators import ensure_services
with ensure_services(seed=False) as found:
    print(found.storage, flush=True)
    time.sleep(float(sys.argv[1]))
    client = storage_client(GCPConfig.from_env())
    bucket = client.lookup_bucket("shared") or client.create_bucket("shared")
    bucket.blob(sys.argv[2]).upload_from_string(b"done")
    print("wrote", sys.argv[2], flush=True)
"""


def test_two_first_commands_at_once_share_one_start_and_the_last_out_stops_them(tmp_path):
    # Before: both started emulators on one DuckDB file ("Could not set lock on ...bqemulator.duckdb"),
    # and the first to finish stopped the services under the other.
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env["CODEPARROT_HOME"] = str(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", SHARED_USER, pause, name], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for pause, name in (("0", "quick"), ("4", "slow"))
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    assert len({o.splitlines()[0] for o in outputs}) == 1  # one pair of emulators, used by both
    assert "wrote slow" in outputs[1]  # the quick one's exit did not stop them under the slow one
    svc = EmbeddedServices(tmp_path / "services")
    assert svc.running() is None and not (tmp_path / "services" / "state.json").exists()
