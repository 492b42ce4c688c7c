"""Artifact references: parsing, resolution against the stand-in (local and on GCS), gs:// and a fake Hub, the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from codeparrot.artifacts import ArtifactRef, Resolver, marker_of
from codeparrot.errors import ConfigError, DataError, ServiceError
from codeparrot.hub import HubAPI, StandIn, folder_hash
from codeparrot.storage import GCSStore, LocalStore


@pytest.mark.parametrize(
    ("text", "scheme", "kind", "repo", "revision", "canonical"),
    [
        ("hf://datasets/codeparrot/codeparrot-clean@abc123", "hf", "dataset", "codeparrot/codeparrot-clean", "abc123", None),
        ("hf://datasets/o/n", "hf", "dataset", "o/n", None, None),
        ("hf://codeparrot/codeparrot-small@main", "hf", "model", "codeparrot/codeparrot-small", "main", None),
        ("hf://models/o/n.v2@r1", "hf", "model", "o/n.v2", "r1", "hf://o/n.v2@r1"),
        ("gs://my-bucket/tokens/a-b", "gs", "model", "", None, None),
        ("gs://my-bucket/tokens/a-b/", "gs", "model", "", None, "gs://my-bucket/tokens/a-b"),
    ],
)  # fmt: skip
def test_valid_references_parse_and_print_back(text, scheme, kind, repo, revision, canonical) -> None:
    ref = ArtifactRef.parse(text)
    assert (ref.scheme, ref.repo, ref.revision) == (scheme, repo, revision)
    if scheme == "hf":
        assert ref.kind == kind and ref.pinned == (revision is not None)
    assert str(ref) == (canonical or text)
    assert ArtifactRef.parse(str(ref)) == ref


def test_local_paths_and_file_uris_are_absolute_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ArtifactRef.parse("data/ds").path == str(tmp_path / "data" / "ds")
    assert ArtifactRef.parse(f"file://{tmp_path}/x") == ArtifactRef.parse(str(tmp_path / "x"))
    assert ArtifactRef.parse(tmp_path).scheme == "local" and ArtifactRef.parse(tmp_path).pinned


@pytest.mark.parametrize("form", ["file://{p}", "file://localhost{p}", "file://LOCALHOST{p}", "file:{p}", "FILE://{p}"])
def test_every_local_form_of_a_file_uri_is_the_path(tmp_path, form) -> None:
    folder = tmp_path / "a b%"
    uri = form.format(p=folder)
    assert ArtifactRef.parse(uri) == ArtifactRef.parse(folder)
    assert ArtifactRef.parse(folder.as_uri()).path == str(folder)  # %-escaped, as Path.as_uri() writes it
    from codeparrot.storage import open_store

    assert open_store(folder.as_uri()).local_path() == folder


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("s3://bucket/key", "unsupported scheme 's3'"),
        ("https://huggingface.co/o/n", "unsupported scheme 'https'"),
        ("hf://o/n@", "names no revision"),
        ("hf://datasets/o/n@", "names no revision"),
        ("hf://o/../etc", "OWNER/NAME"),
        ("hf://datasets/../../x@1", "OWNER/NAME"),
        ("hf://o/n@../../etc", "revision '../../etc'"),
        ("hf://o/n@a/b", "revision 'a/b'"),
        ("hf://only-one-part", "OWNER/NAME"),
        ("hf://a/b/c", "OWNER/NAME"),
        ("gs://Bad_Bucket!/x", "not a bucket name"),
        ("gs://bucket", "names a whole bucket"),
        ("gs://bucket/a/../../b", "may not contain '.', '..'"),
        ("gs://bucket/a//b", "empty parts"),
        ("file://relative/path", "absolute path"),
        ("file://otherhost/abs/path", "names host 'otherhost'"),
        ("file:relative", "absolute path"),
        ("", "empty artifact reference"),
    ],
)
def test_bad_references_fail_naming_the_uri_and_the_accepted_forms(text, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        ArtifactRef.parse(text)
    assert repr(text) in str(err.value) or not text


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "built"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(os.urandom(4096))
    (folder / "README.md").write_text("---\nlicense: other\n---\n# a dataset\n")
    return folder


def _fetches(monkeypatch, hub) -> list[str]:
    """Count the Hub's downloads: a cache hit makes none."""
    calls: list[str] = []
    real = hub.fetch

    def counted(ref, dest):
        calls.append(str(ref))
        return real(ref, dest)

    monkeypatch.setattr(hub, "fetch", counted)
    return calls


def test_a_stand_in_on_gcs_resolves_once_per_machine_and_pins_the_head(embedded_services, dataset, tmp_path, monkeypatch) -> None:
    hub = StandIn(GCSStore("gs://artifact-tests/hub"))
    pushed = hub.push(dataset, "dataset", "me/data")
    resolver = Resolver(hub, tmp_path / "cache")
    calls = _fetches(monkeypatch, hub)

    head = resolver.resolve("hf://datasets/me/data")
    assert head.ref == ArtifactRef.parse(pushed.uri) and head.identity == pushed.revision
    assert folder_hash(head.path) == folder_hash(dataset)
    assert all(p.stat().st_mode & 0o222 == 0 for p in head.path.rglob("*") if p.is_file()), "read-only copies"
    again = resolver.resolve(pushed.uri)
    assert again.path == head.path and calls == [pushed.uri], "the second resolve is a cache hit"

    # Another machine: an empty cache, the same bucket.
    elsewhere = Resolver(StandIn(GCSStore("gs://artifact-tests/hub")), tmp_path / "other-vm")
    assert folder_hash(elsewhere.resolve(pushed.uri).path) == folder_hash(dataset)

    # With the Hub down, a pinned revision already on this machine still resolves; the head cannot.
    def down(ref):
        raise ServiceError(f"{ref}: the stand-in is unreachable")

    monkeypatch.setattr(hub, "resolve", down)
    assert resolver.resolve(pushed.uri).path == head.path
    with pytest.raises(ServiceError, match="unreachable"):
        resolver.resolve("hf://datasets/me/data")


def test_a_damaged_or_half_downloaded_cache_entry_is_fetched_again(embedded_services, dataset, tmp_path, monkeypatch, caplog) -> None:
    hub = StandIn(GCSStore("gs://artifact-tests/hub-damage"))
    pushed = hub.push(dataset, "dataset", "me/data")
    resolver = Resolver(hub, tmp_path / "cache")
    calls = _fetches(monkeypatch, hub)
    folder = resolver.resolve(pushed.uri).path
    shard = folder / "data" / "train-00000-of-00001.parquet"

    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    assert resolver.resolve(pushed.uri).path == folder and len(calls) == 2
    assert "changed since it was fetched" in caplog.text
    assert folder_hash(folder) == folder_hash(dataset)

    shard.chmod(0o644)
    shard.write_bytes(b"trunc")  # truncated
    resolver.resolve(pushed.uri)
    assert len(calls) == 3 and folder_hash(folder) == folder_hash(dataset)

    # A copy that never got its marker (the process died mid-fetch) is not trusted, whatever it holds.
    marker_of(folder).unlink()
    resolver.resolve(pushed.uri)
    assert len(calls) == 4 and json.loads(marker_of(folder).read_text())["uri"] == pushed.uri
    leftovers = [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name]
    assert not leftovers


def test_a_source_that_does_not_match_its_record_is_refused(embedded_services, dataset, tmp_path) -> None:
    store = GCSStore("gs://artifact-tests/hub-bad")
    hub = StandIn(store)
    pushed = hub.push(dataset, "dataset", "me/data")
    store.write(f"datasets/me/data/revisions/{pushed.revision}/README.md", b"tampered")
    with pytest.raises(DataError, match=r"do not match the source's checksums .*README.md"):
        Resolver(hub, tmp_path / "cache").resolve(pushed.uri)
    assert not list((tmp_path / "cache").rglob("README.md")), "nothing half-fetched is left as a copy"


def test_unknown_revisions_and_repos_fail_naming_the_uri(embedded_services, dataset, tmp_path) -> None:
    hub = StandIn(GCSStore("gs://artifact-tests/hub-unknown"))
    pushed = hub.push(dataset, "dataset", "me/data")
    resolver = Resolver(hub, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"hf://datasets/me/data@0123abcd: no revision .*known revisions: {pushed.revision}"):
        resolver.resolve("hf://datasets/me/data@0123abcd")
    with pytest.raises(DataError, match=r"hf://datasets/me/other: no such dataset .*publish it first"):
        resolver.resolve("hf://datasets/me/other")
    with pytest.raises(DataError, match=r"hf://me/data: no such model"):
        resolver.resolve("hf://me/data")  # a dataset repo is not a model repo


def test_a_local_stand_in_hands_out_its_own_immutable_folder(dataset, tmp_path) -> None:
    hub = StandIn(LocalStore(tmp_path / "hub"))
    pushed = hub.push(dataset, "model", "me/tok")
    found = Resolver(hub, tmp_path / "cache").resolve("hf://me/tok")
    assert found.path == tmp_path / "hub" / "models" / "me" / "tok" / "revisions" / pushed.revision
    assert not (tmp_path / "cache").exists(), "already on this disk: nothing copied"
    (found.path / "README.md").write_text("damaged")
    with pytest.raises(DataError, match="wrong size in the Hub stand-in"):
        Resolver(hub, tmp_path / "cache").resolve(pushed.uri)


def test_gs_prefixes_resolve_by_generation(embedded_services, tmp_path) -> None:
    store = GCSStore("gs://artifact-tests/prefix")
    store.write("a.bin", b"one")
    store.write("sub/b.bin", b"two")
    resolver = Resolver(StandIn(LocalStore(tmp_path / "unused")), tmp_path / "cache")
    first = resolver.resolve("gs://artifact-tests/prefix")
    assert (first.path / "a.bin").read_bytes() == b"one" and (first.path / "sub" / "b.bin").read_bytes() == b"two"
    assert resolver.resolve("gs://artifact-tests/prefix").path == first.path
    store.write("a.bin", b"one, rewritten")  # a new generation: a new identity, a new copy
    second = resolver.resolve("gs://artifact-tests/prefix")
    assert second.identity != first.identity and (second.path / "a.bin").read_bytes() == b"one, rewritten"
    with pytest.raises(DataError, match=r"gs://artifact-tests/nothing-here: no objects"):
        resolver.resolve("gs://artifact-tests/nothing-here")


def test_local_paths_resolve_in_place_with_a_content_identity(dataset, tmp_path) -> None:
    resolver = Resolver(StandIn(LocalStore(tmp_path / "unused")), tmp_path / "cache")
    found = resolver.resolve(dataset)
    assert found.path == dataset and found.identity == resolver.identity(str(dataset))
    (dataset / "README.md").write_text("changed")
    assert resolver.identity(dataset) != found.identity
    with pytest.raises(DataError, match="no such file or folder on this machine"):
        resolver.resolve(tmp_path / "absent")


class FakeHfApi:
    """The HfApi calls HubAPI makes, answered from a dict of repos: what a fake Hub needs to be."""

    def __init__(self, repos: dict[tuple[str, str], dict[str, dict[str, bytes]]]) -> None:
        self.repos = repos  # (repo_type, repo_id) -> commit -> files
        self.downloads = 0

    def repo_info(self, repo_id, repo_type="model", revision=None, **_):
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        commits = self.repos.get((repo_type, repo_id))
        response = SimpleNamespace(status_code=404, headers={}, request=None)
        if commits is None:
            raise RepositoryNotFoundError("no repo", response=response)
        if revision in (None, "main"):
            return SimpleNamespace(sha=next(reversed(commits)))
        if revision not in commits:
            raise RevisionNotFoundError("no revision", response=response)
        return SimpleNamespace(sha=revision)

    def snapshot_download(self, repo_id, repo_type, revision, local_dir):
        self.downloads += 1
        for name, data in self.repos[(repo_type, repo_id)][revision].items():
            path = Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)  # what the real one leaves
        return local_dir


def test_hf_references_resolve_against_the_hub_through_the_same_code(tmp_path) -> None:
    api = FakeHfApi({("model", "me/tok"): {"c0ffee": {"tokenizer.json": b"{}"}, "beef00": {"tokenizer.json": b"{\"v\": 2}"}}})
    resolver = Resolver(HubAPI(api), tmp_path / "cache")
    assert str(resolver.pin("hf://me/tok")) == "hf://me/tok@beef00"
    found = resolver.resolve("hf://me/tok@c0ffee")
    assert (found.path / "tokenizer.json").read_bytes() == b"{}" and not (found.path / ".cache").exists()
    assert found.path == tmp_path / "cache" / "hf" / "models" / "me" / "tok" / "c0ffee"
    resolver.resolve("hf://me/tok@c0ffee")
    assert api.downloads == 1
    with pytest.raises(DataError, match=r"hf://me/tok@deadbeef: no revision"):
        resolver.resolve("hf://me/tok@deadbeef")
    with pytest.raises(DataError, match=r"hf://me/missing: no such model on the Hub"):
        resolver.resolve("hf://me/missing")


def test_the_hub_is_used_only_when_allowed_and_configured(monkeypatch) -> None:
    from codeparrot.hub import HubSettings, open_hub

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "CODEPARROT_HUB_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(open_hub(HubSettings.from_env(token="hf_x")), StandIn)  # offline: the stand-in (and a warning)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert isinstance(open_hub(HubSettings.from_env()), StandIn)  # online but nothing configured
    assert isinstance(open_hub(HubSettings.from_env(token="hf_x")), HubAPI)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    assert isinstance(open_hub(HubSettings.from_env()), HubAPI)
    monkeypatch.setenv("CODEPARROT_HUB_ROOT", "/shared/hub")
    monkeypatch.delenv("HF_ENDPOINT")
    hub = open_hub(HubSettings.from_env())
    assert isinstance(hub, StandIn) and hub.location == "/shared/hub"
