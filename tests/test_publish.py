import json
import multiprocessing as mp
import random
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from huggingface_hub.errors import HfHubHTTPError

from codeparrot.artifacts import Resolver
from codeparrot.errors import DataError, PermanentServiceError, ServiceError
from codeparrot.hub import HubAPI, StandIn, folder_hash
from codeparrot.publish import PublishConfig, dataset_lineage, publish, split_of
from codeparrot.shards import write_shards
from codeparrot.storage import LocalStore


def stand_in(tmp_path: Path) -> StandIn:
    return StandIn(LocalStore(tmp_path / "hub"))


def local_copy(tmp_path: Path, uri: str) -> Path:
    """The published revision as a local folder, resolved the way every later stage reads it."""
    return Resolver(stand_in(tmp_path), tmp_path / "cache").resolve(uri).path


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
    cfg = PublishConfig(valid_fraction=0.2, row_group_rows=16)
    prov = {"snapshot_id": "s123", "export_uri": "gs://b/e/", "sql": "SELECT 1",
            "counts": [{"stage": "curate", "in": 250, "kept": 200, "dropped": 50}],
            "dropped": {"exact-dup": 30, "near-dup": 20}, "curation": {"threshold": 0.85}}  # fmt: skip
    result = publish(curated_dir(tmp_path, recs), cfg, hub=stand_in(tmp_path), provenance=prov)
    assert result.uri == f"hf://datasets/codeparrot/codeparrot-clean@{result.revision}"
    folder = local_copy(tmp_path, result.uri)
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
    assert result.card == card
    # The lineage later stages copy into the model card, machine-readable in the card's YAML.
    assert dataset_lineage(folder) == {"snapshot_id": "s123", "export_uri": "gs://b/e/", "licenses": ["apache-2.0", "mit"]}


def test_shards_rotate_by_size_and_are_numbered_of_total(tmp_path):
    cfg = PublishConfig(valid_fraction=0.2, max_shard_mib=0.002, row_group_rows=4)
    result = publish(curated_dir(tmp_path, records()), cfg, hub=stand_in(tmp_path))
    folder = local_copy(tmp_path, result.uri)
    names = sorted(p.name for p in (folder / "data").glob("train-*"))
    n = len(names)
    assert n > 1 and names == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert datasets.load_dataset(str(folder))["train"].num_rows == result.splits["train"].files


def test_republishing_the_same_content_is_skipped_and_a_change_is_a_new_revision(tmp_path):
    cfg, hub = PublishConfig(valid_fraction=0.2), stand_in(tmp_path)
    first = publish(curated_dir(tmp_path, records(), "a"), cfg, hub=hub)
    again = publish(curated_dir(tmp_path, records(), "b"), cfg, hub=hub)
    assert again.skipped and again.revision == first.revision
    changed = publish(curated_dir(tmp_path, records(tag="v2"), "c"), cfg, hub=hub)
    assert not changed.skipped and changed.revision != first.revision
    assert hub.head("dataset", cfg.dataset_name) == changed.revision
    assert local_copy(tmp_path, first.uri).is_dir()  # earlier revisions stay readable
    head = json.loads((tmp_path / "hub/datasets/codeparrot/codeparrot-clean/refs/main").read_text())
    assert [head["revision"], *(e["revision"] for e in head["history"])] == [changed.revision, first.revision]


def _publish_in_process(in_dir: str, hub: str, queue) -> None:
    result = publish(in_dir, PublishConfig(valid_fraction=0.2), hub=StandIn(LocalStore(hub)), staging=Path(hub).parent / "staging")
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
    head = json.loads((repo / "refs" / "main").read_text())
    assert head["revision"] in revisions and [e["revision"] for e in head["history"]] == sorted(revisions - {head["revision"]})
    assert not list((tmp_path / "staging").iterdir())


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
    cfg = PublishConfig(dataset_name="me/my-data", valid_fraction=0.2)
    src = curated_dir(tmp_path, records())
    api = FakeHub()
    result = publish(src, cfg, hub=HubAPI(api))
    assert result.target == "hub" and result.revision == "def456" and not result.skipped
    assert result.uri == "hf://datasets/me/my-data@def456"
    (create, upload) = api.calls
    assert create[2]["exist_ok"] is True and create[2]["repo_type"] == "dataset"
    assert upload[1] == ["README.md", "data/train-00000-of-00001.parquet", "data/valid-00000-of-00001.parquet"]
    again_api = FakeHub(head_message=upload[2])
    again = publish(src, cfg, hub=HubAPI(again_api))
    assert again.skipped and again.revision == "abc123"
    assert [c[0] for c in again_api.calls] == ["create_repo"]


@pytest.mark.parametrize(("status", "error"), [(403, PermanentServiceError), (503, ServiceError)])
def test_hub_errors_are_classified(tmp_path, status, error):
    cfg = PublishConfig(dataset_name="me/my-data", valid_fraction=0.2)
    with pytest.raises(error, match="me/my-data"):
        publish(curated_dir(tmp_path, records()), cfg, hub=HubAPI(FakeHub(fail=status)))


def test_a_few_repositories_still_give_a_validation_split(tmp_path):
    cfg = PublishConfig(valid_fraction=0.01)
    result = publish(curated_dir(tmp_path, records(n_repos=3)), cfg, hub=stand_in(tmp_path))
    ds = datasets.load_dataset(str(local_copy(tmp_path, result.uri)))
    assert len(set(ds["valid"]["repo_name"])) == 1 and len(set(ds["train"]["repo_name"])) == 2
    assert result.splits["valid"].files == 5


def test_a_single_repository_cannot_be_split_and_says_so(tmp_path):
    with pytest.raises(DataError, match=r"valid split is empty \(1 repositories"):
        publish(curated_dir(tmp_path, records(n_repos=1)), PublishConfig(valid_fraction=0.01), hub=stand_in(tmp_path),
                staging=tmp_path / "staging")  # fmt: skip
    assert not list((tmp_path / "staging").iterdir())
    assert not (tmp_path / "hub").exists(), "nothing reached the Hub target"


def test_the_card_states_redaction_and_decontamination_and_hands_the_benchmark_check_down(tmp_path):
    from codeparrot.evaluate.humaneval import contamination

    curated = curated_dir(tmp_path, records())
    report = {
        "redaction": {"kinds": {"emails": True, "ip_addresses": True, "api_keys": True, "passwords": False},
                      "placeholders": {"email": 7, "key": 2}, "files": 5},
        "decontamination": {"benchmarks": {"humaneval": 164}, "files_removed": 3, "problems_found": ["HumanEval/0", "HumanEval/7"]},
    }  # fmt: skip
    (curated / "stats.json").write_text(json.dumps({"dropped": {"decontaminated:humaneval": 3}, **report}))
    result = publish(curated, PublishConfig(), hub=stand_in(tmp_path))  # provenance read from stats.json
    folder = local_copy(tmp_path, result.uri)
    card = (folder / "README.md").read_text()
    assert "redacted (emails, ip_addresses, api_keys): 5 files touched; placeholders put in: email 7, key 2" in card
    assert "decontamination against humaneval (164 problems): 3 files removed, 2 problems found: HumanEval/0, HumanEval/7" in card
    assert "| decontaminated:humaneval | 3 |" in card
    assert dataset_lineage(folder)["decontamination"] == report["decontamination"]

    # The training run copies the dataset's lineage into its summary; HumanEval reads it back.
    model = tmp_path / "final"
    model.mkdir()
    (model / "train_summary.json").write_text(json.dumps({"dataset": result.uri, "lineage": dataset_lineage(folder)}))
    assert contamination(model) == {"dataset": result.uri, "checked": True, "problems_found": ["HumanEval/0", "HumanEval/7"],
                                    "files_removed": 3}  # fmt: skip
    (model / "train_summary.json").write_text(json.dumps({"dataset": "elsewhere", "lineage": {}}))
    assert contamination(model)["checked"] is False


def test_the_dataset_card_artifact_is_the_card_without_its_yaml_front_matter() -> None:
    from tasks.publish import card_body

    card = "---\nlicense: other\ntags:\n- code\n---\n\n# codeparrot-clean\n\nA table --- with dashes.\n"
    assert card_body(card) == "# codeparrot-clean\n\nA table --- with dashes.\n"
    assert card_body("# no front matter\n") == "# no front matter\n"
    assert card_body("---\nunterminated: yes\n") == "---\nunterminated: yes\n"  # not front matter: kept whole
