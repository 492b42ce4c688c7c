import json
import multiprocessing as mp
import random
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from huggingface_hub.errors import HfHubHTTPError

from codeparrot.errors import ConfigError, DataError, PermanentServiceError, ServiceError
from codeparrot.hub import folder_hash
from codeparrot.publish import PublishConfig, publish, published_path, split_of
from codeparrot.shards import write_shards


def records(n_repos: int = 40, per_repo: int = 5, tag: str = "") -> list[dict]:
    return [
        {"repo_name": f"owner{r}/repo{r}", "path": f"pkg/mod{i}.py", "copies": 1, "size": 30,
         "content": f"def f{r}_{i}():\n    return {r * i}  # {tag}\n", "license": "mit" if r % 3 else "apache-2.0"}
        for r in range(n_repos) for i in range(per_repo)
    ]  # fmt: skip


def curated_dir(tmp_path: Path, recs: list[dict], name: str = "curated") -> Path:
    out = tmp_path / name
    write_shards(recs, out, max_records=37)
    return out


def test_split_keeps_each_repository_on_one_side_and_is_seeded():
    cfg = PublishConfig(valid_fraction=0.25)
    sides = {f"o/r{i}": split_of(f"o/r{i}", cfg) for i in range(2000)}
    assert 0.2 < sum(s == "valid" for s in sides.values()) / 2000 < 0.3
    other = PublishConfig(valid_fraction=0.25, seed=1)
    assert sides != {k: split_of(k, other) for k in sides}
    assert sides == {k: split_of(k, PublishConfig(valid_fraction=0.25)) for k in sides}


def test_published_folder_loads_with_datasets_and_documents_itself(tmp_path):
    recs = records()
    cfg = PublishConfig(valid_fraction=0.2, local_hub=tmp_path / "hub", row_group_rows=16)
    prov = {"snapshot_id": "s123", "sql": "SELECT 1", "counts": [{"stage": "curate", "in": 250, "kept": 200, "dropped": 50}],
            "dropped": {"exact-dup": 30, "near-dup": 20}, "curation": {"threshold": 0.85}}
    result = publish(curated_dir(tmp_path, recs), cfg, provenance=prov)
    folder = Path(result.path)
    ds = datasets.load_dataset(str(folder))
    assert set(ds) == {"train", "valid"}
    assert ds["train"].num_rows + ds["valid"].num_rows == len(recs)
    assert ds["train"].num_rows == result.splits["train"].files and ds["valid"].num_rows > 0
    train_repos, valid_repos = set(ds["train"]["repo_name"]), set(ds["valid"]["repo_name"])
    assert not train_repos & valid_repos
    assert sorted(list(ds["train"]["content"]) + list(ds["valid"]["content"])) == sorted(r["content"] for r in recs)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/valid-*" in card and "num_examples: " in card
    for needle in ("s123", "SELECT 1", "| exact-dup | 30 |", '"threshold": 0.85', "| apache-2.0 |"):
        assert needle in card
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["train-00000-of-00001.parquet", "valid-00000-of-00001.parquet"]
    assert result.revision == folder_hash(folder)[:12]


def test_shards_rotate_by_size_and_are_numbered_of_total(tmp_path):
    cfg = PublishConfig(valid_fraction=0.2, local_hub=tmp_path / "hub", max_shard_mib=0.002, row_group_rows=4)
    result = publish(curated_dir(tmp_path, records()), cfg)
    names = sorted(p.name for p in (Path(result.path) / "data").glob("train-*"))
    n = len(names)
    assert n > 1 and names == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert datasets.load_dataset(result.path)["train"].num_rows == result.splits["train"].files


def test_republishing_the_same_content_is_skipped_and_a_change_is_a_new_revision(tmp_path):
    cfg = PublishConfig(local_hub=tmp_path / "hub", valid_fraction=0.2)
    first = publish(curated_dir(tmp_path, records(), "a"), cfg)
    again = publish(curated_dir(tmp_path, records(), "b"), cfg)
    assert again.skipped and again.revision == first.revision
    changed = publish(curated_dir(tmp_path, records(tag="v2"), "c"), cfg)
    assert not changed.skipped and changed.revision != first.revision
    assert published_path(cfg) == Path(changed.path).resolve()
    assert Path(first.path).exists()  # earlier revisions stay readable
    log = [json.loads(x) for x in (tmp_path / "hub/datasets/codeparrot/codeparrot-clean/revisions.jsonl").read_text().splitlines()]
    assert [e["revision"] for e in log] == [first.revision, changed.revision]


def _publish_in_process(in_dir: str, hub: str, queue) -> None:
    result = publish(in_dir, PublishConfig(local_hub=Path(hub), valid_fraction=0.2))
    queue.put(result.revision)


def test_concurrent_publishers_do_not_corrupt_each_other(tmp_path):
    big = [r | {"content": r["content"] * 50} for r in records(60, 8)]
    dirs = [curated_dir(tmp_path, big, "x"), curated_dir(tmp_path, [r | {"content": r["content"] + "# y\n"} for r in big], "y")]
    random.Random(0).shuffle(dirs)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_publish_in_process, args=(str(d), str(tmp_path / "hub"), queue)) for d in dirs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    revisions = {queue.get(timeout=5), queue.get(timeout=5)}
    repo = tmp_path / "hub/datasets/codeparrot/codeparrot-clean"
    assert len(revisions) == 2
    for rev in revisions:
        assert folder_hash(repo / "revisions" / rev)[:12] == rev  # each revision complete and intact
    assert (repo / "main").resolve().name in revisions
    assert len((repo / "revisions.jsonl").read_text().splitlines()) == 2
    assert not list((tmp_path / "hub" / ".staging").iterdir())


class FakeHub:
    """Records calls the way HfApi answers them; enough to check our push decisions."""

    def __init__(self, head_message: str | None = None, fail: int | None = None):
        self.head_message, self.fail, self.calls = head_message, fail, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        if self.fail:
            raise HfHubHTTPError("nope", response=SimpleNamespace(status_code=self.fail, headers={}, request=None))

    def list_repo_commits(self, repo_id, **kw):
        if self.head_message is None:
            return []
        return [SimpleNamespace(message=self.head_message, commit_id="abc123")]

    def upload_folder(self, **kw):
        files = sorted(str(p.relative_to(kw["folder_path"])) for p in Path(kw["folder_path"]).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", files, kw["commit_description"]))
        return SimpleNamespace(oid="def456")


def test_hub_push_is_one_commit_and_skipped_when_the_head_has_the_same_content(tmp_path):
    cfg = PublishConfig(local_hub=tmp_path / "hub", hub_repo="me/my-data", valid_fraction=0.2)
    src = curated_dir(tmp_path, records())
    api = FakeHub()
    result = publish(src, cfg, api=api)
    assert result.target == "hub" and result.revision == "def456" and not result.skipped
    (create, upload) = api.calls
    assert create[2]["exist_ok"] is True and create[2]["repo_type"] == "dataset"
    assert upload[1] == ["README.md", "data/train-00000-of-00001.parquet", "data/valid-00000-of-00001.parquet"]
    again_api = FakeHub(head_message=upload[2])
    again = publish(src, cfg, api=again_api)
    assert again.skipped and again.revision == "abc123"
    assert [c[0] for c in again_api.calls] == ["create_repo"]


@pytest.mark.parametrize(("status", "error"), [(403, PermanentServiceError), (503, ServiceError)])
def test_hub_errors_are_classified(tmp_path, status, error):
    cfg = PublishConfig(local_hub=tmp_path / "hub", hub_repo="me/my-data", valid_fraction=0.2)
    with pytest.raises(error, match="me/my-data"):
        publish(curated_dir(tmp_path, records()), cfg, api=FakeHub(fail=status))


def test_a_few_repositories_still_give_a_validation_split(tmp_path):
    cfg = PublishConfig(local_hub=tmp_path / "hub", valid_fraction=0.01)
    result = publish(curated_dir(tmp_path, records(n_repos=3)), cfg)
    ds = datasets.load_dataset(result.path)
    assert len(set(ds["valid"]["repo_name"])) == 1 and len(set(ds["train"]["repo_name"])) == 2
    assert result.splits["valid"].files == 5


def test_a_single_repository_cannot_be_split_and_says_so(tmp_path):
    with pytest.raises(DataError, match=r"valid split is empty \(1 repositories"):
        publish(curated_dir(tmp_path, records(n_repos=1)), PublishConfig(local_hub=tmp_path / "hub", valid_fraction=0.01))
    assert not list((tmp_path / "hub" / ".staging").iterdir())


def test_hub_repo_without_network_permission_says_how_to_fix(tmp_path, monkeypatch):
    cfg = PublishConfig(local_hub=tmp_path / "hub", hub_repo="me/my-data", valid_fraction=0.2)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=0"):
        publish(curated_dir(tmp_path, records()), cfg)
