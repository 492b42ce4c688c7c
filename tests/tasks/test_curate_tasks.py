"""The curate tasks in a flow on a local Dask cluster give what the local driver gives."""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson
import pytest

from codeparrot.curate.config import CurateConfig
from codeparrot.curate.pipeline import curate
from codeparrot.env import restored_environ


def python_file(rng: random.Random) -> str:
    tag = "".join(rng.choice("abcdefghij") for _ in range(8))
    body = [f"def f_{tag}_{i}(x_{tag}):\n    y_{tag} = x_{tag} + {i}\n    for k in range(y_{tag}):\n        y_{tag} = y_{tag} * k\n    return y_{tag}\n" for i in range(5)]
    return "\n".join(body)


def write_corpus(folder: Path) -> list[Path]:
    import gzip

    rng = random.Random(0)
    recs = []
    for i in range(12):
        text = python_file(rng)
        recs.append({"repo_name": f"r{i}", "path": "m.py", "copies": 1, "size": len(text), "content": text, "license": "mit"})
        if i % 3 == 0:
            recs.append({**recs[-1], "repo_name": f"fork/r{i}", "content": text + "\n# fork\n"})
    folder.mkdir()
    paths = []
    for k in range(0, len(recs), 4):
        path = folder / f"s{k:03d}.json.gz"
        path.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in recs[k : k + 4])))
        paths.append(path)
    return paths


def test_every_stage_on_a_local_dask_cluster_with_four_partitions_matches_the_threaded_run(
    prefect_harness: Path, tmp_path: Path
) -> None:
    from prefect import flow

    from tasks.curate import _NANNY_ENVIRON, curate_shards, dask_runner

    shards = write_corpus(tmp_path / "in")
    cfg = CurateConfig(shard_max_records=3)  # several output shards, so the writer ranges split them

    @flow
    def curate_flow(paths: list[Path], work: Path, out: Path, partitions: int | None) -> dict:
        return curate_shards(paths, cfg, work, out, workers=2, partitions=partitions, memory_mb=64).model_dump()

    # two single-threaded worker processes of 400 MB each; P = 4 partitions of every later stage
    on_cluster = curate_flow.with_options(task_runner=dask_runner(None, n_workers=2, memory_limit="400MB"))
    with restored_environ(*_NANNY_ENVIRON):
        got = on_cluster(shards, tmp_path / "work-dask", tmp_path / "dask", 4)
    threaded = curate_flow(shards, tmp_path / "work-threads", tmp_path / "threads", None)
    want = curate(tmp_path / "in", tmp_path / "local", cfg, workers=1)
    assert got["content_hash"] == threaded["content_hash"] == want.content_hash
    assert {k: v for k, v in got.items() if k != "out_dir"} == want.model_dump(exclude={"out_dir"})
    assert got["dropped"] == {"near-dup": 4} and len(got["shards"]) > 1
    names = sorted(p.name for p in (tmp_path / "dask").glob("part-*.json.gz"))
    assert names == sorted(p.name for p in (tmp_path / "local").glob("part-*.json.gz"))
    assert [(tmp_path / "dask" / n).read_bytes() for n in names] == [(tmp_path / "local" / n).read_bytes() for n in names]
    for name in ("duplicate_clusters.jsonl", "stats.md"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_on_dask_puts_the_environment_back(prefect_harness: Path, tmp_path: Path) -> None:
    from prefect import flow

    from tasks.curate import _NANNY_ENVIRON, curate_shards, on_dask

    shards = write_corpus(tmp_path / "in")

    @flow
    def curate_flow(paths: list[Path], work: Path, out: Path) -> str:
        return curate_shards(paths, CurateConfig.dedup_only(), work, out).content_hash

    before = {k: os.environ.get(k) for k in _NANNY_ENVIRON}
    assert on_dask(curate_flow, "local", shards, tmp_path / "work", tmp_path / "flow")
    # Dask's nanny sets OMP_NUM_THREADS=1 (and more) in the process that starts it; a trainer launched
    # from this process afterwards would inherit one thread. on_dask puts the environment back.
    assert {k: os.environ.get(k) for k in _NANNY_ENVIRON} == before


@pytest.mark.parametrize("deleted", ["work", "out"])
def test_stage_recomputes_when_cached_outputs_are_gone(prefect_harness: Path, tmp_path: Path, deleted: str) -> None:
    import shutil

    from prefect import flow

    from tasks.curate import curate_shards

    shards = write_corpus(tmp_path / "in")
    cfg = CurateConfig.dedup_only()

    @flow
    def run(out: Path) -> str:
        return curate_shards(shards, cfg, tmp_path / "work", out).content_hash

    first = run(tmp_path / "out")
    shutil.rmtree(tmp_path / deleted)
    assert run(tmp_path / "out") == first
    assert (tmp_path / "out" / "_SUCCESS").is_file()
