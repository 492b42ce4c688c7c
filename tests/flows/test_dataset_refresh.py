from codeparrot.download import DownloadConfig
from codeparrot.export import ExportConfig
from flows.dataset_refresh import dataset_refresh
from tests.builders import SRC_PROJECT, load_source, seed_rows, task_run_states


def test_export_then_download_runs_and_a_second_run_is_all_cache_hits(prefect_harness, embedded_services, gcp, tmp_path):
    load_source(embedded_services, gcp, "flow", seed_rows())
    params = dict(
        export=ExportConfig(source_project=SRC_PROJECT, bucket="flow-test", prefix="refresh"),
        download=DownloadConfig(cache_dir=tmp_path / "cache"),
    )
    first = dataset_refresh(**params, return_state=True)
    assert first.is_completed()
    result = first.result()
    assert result.export.rows == 4 and len(result.download.files) == len(result.export.shards)
    assert task_run_states(first) == {"resolve-snapshot": ["Completed"], "export": ["Completed"], "download": ["Completed"]}

    second = dataset_refresh(**params, return_state=True)
    assert task_run_states(second) == {"resolve-snapshot": ["Completed"], "export": ["Cached"], "download": ["Cached"]}
    assert second.result() == result

    # deleted outputs are rebuilt instead of a cache hit pointing at nothing
    for f in result.download.files:
        __import__("os").unlink(f.path)
    third = dataset_refresh(**params, return_state=True)
    assert task_run_states(third)["download"] == ["Completed"]
    assert third.result().download.downloaded == len(result.download.files)
