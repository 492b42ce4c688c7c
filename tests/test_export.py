import gzip
import json

import pytest

from codeparrot.download import DownloadConfig, download
from codeparrot.errors import PermanentServiceError, ServiceError, is_transient
from codeparrot.export import ExportConfig, build_query, run_export
from codeparrot.gcp import GCPConfig
from tests.builders import SRC_PROJECT, load_source, seed_rows


def exported_records(result, gcp, tmp_path) -> list[dict]:
    local = download(result, DownloadConfig(cache_dir=tmp_path / "cache"), gcp, progress=False)
    records = []
    for f in local.files:
        with gzip.open(f.path, "rt") as fh:
            records += [json.loads(line) for line in fh]
    return records


def test_query_keeps_bounds_and_extension_as_parameters():
    q = build_query(ExportConfig(extension=".pyi", min_size=10, max_size=20))
    assert "@path_pattern" in q.sql and "@min_size" in q.sql and "@max_size" in q.sql
    assert ".pyi" not in q.sql and "10" not in q.sql
    assert q.params == [("path_pattern", "STRING", "%.pyi"), ("min_size", "INT64", 10), ("max_size", "INT64", 20)]
    assert q.digest() != build_query(ExportConfig()).digest()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("source_project", "Bad_Project", "not a valid project id"),
        ("source_dataset", "x; DROP TABLE y", "not a valid dataset id"),
        ("bucket", "UPPER", "not a valid bucket name"),
        ("prefix", "a/../b", "prefix"),
        ("prefix", "a'b", "prefix"),
        ("extension", "py' OR 1=1 --", "must look like"),
        ("max_size", 10, "min_size 1024 > max_size 10"),
    ],
)
def test_identifiers_are_validated_not_pasted(field, value, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(**{field: value})


def test_export_selects_exactly_the_rows_the_sql_filters_keep(embedded_services, gcp, tmp_path):
    load_source(embedded_services, gcp, "exact", seed_rows())
    cfg = ExportConfig(source_project=SRC_PROJECT, bucket="export-test", prefix="exact")
    result = run_export(cfg, gcp)
    records = exported_records(result, gcp, tmp_path)

    got = {(r["repo_name"], r["path"]) for r in records}
    assert got == {("r1", "pkg/ok.py"), ("r3", "vendored/ok.py"), ("r1", "pkg/lo.py"), ("r1", "pkg/hi.py")}
    assert result.rows == len(records) == 4
    for r in records:
        assert set(r) == {"repo_name", "path", "copies", "size", "content", "license"}
        assert int(r["size"]) == len(r["content"].encode())
    by_path = {r["path"]: r for r in records}
    assert int(by_path["pkg/ok.py"]["copies"]) == 2
    assert by_path["vendored/ok.py"]["license"] == "apache-2.0"
    assert result.prefix.startswith("exact/s") and result.uri.startswith("gs://export-test/exact/")

    again = run_export(cfg, gcp)
    assert again.reused and again.manifest_sha256 == result.manifest_sha256


def test_a_changed_source_snapshot_is_a_new_export(embedded_services, gcp, tmp_path):
    cfg = ExportConfig(source_project=SRC_PROJECT, bucket="export-test", prefix="snap")
    load_source(embedded_services, gcp, "snap1", seed_rows())
    first = run_export(cfg, gcp)
    load_source(embedded_services, gcp, "snap2", seed_rows(license_r2="mit"))
    second = run_export(cfg, gcp)
    assert second.snapshot_id != first.snapshot_id and not second.reused
    assert second.rows == first.rows + 1
    pinned = run_export(cfg.model_copy(update={"snapshot_id": "2026-11-01"}), gcp)
    assert pinned.prefix.startswith("snap/2026-11-01-")


def test_missing_source_fails_at_once_with_a_permanent_error(embedded_services, gcp):
    cfg = ExportConfig(source_project=SRC_PROJECT, source_dataset="no_such_dataset", bucket="export-test")
    with pytest.raises(PermanentServiceError, match="BigQuery") as info:
        run_export(cfg, gcp)
    assert not is_transient(info.value)


def test_unreachable_bigquery_names_the_endpoint_and_is_retryable():
    gcp = GCPConfig(bigquery_endpoint="http://127.0.0.1:9", storage_endpoint="http://127.0.0.1:9", retry_deadline_s=1)
    with pytest.raises(ServiceError, match=r"127\.0\.0\.1:9") as info:
        run_export(ExportConfig(), gcp)
    assert is_transient(info.value)
