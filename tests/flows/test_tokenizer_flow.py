from pathlib import Path

from codeparrot.artifacts import Resolver
from codeparrot.hub import StandIn
from codeparrot.storage import LocalStore
from codeparrot.tokenizer import TokenizerConfig
from flows.tokenizer import tokenizer_flow
from tests.builders import task_run_states, tiny_dataset


def test_tokenizer_flow_trains_on_a_pinned_revision_publishes_and_caches(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEPARROT_HUB_ROOT", str(tmp_path / "hub"))  # a stand-in on a local disk
    hub = StandIn(LocalStore(tmp_path / "hub"))
    dataset = hub.push(tiny_dataset(tmp_path / "data", limit=80), "dataset", "me/data")
    cfg = TokenizerConfig(vocab_size=500, baseline_vocab_size=300, name="me/tok")
    # The head, unpinned: the flow pins it and says which revision it trained on.
    first = tokenizer_flow(data="hf://datasets/me/data", cfg=cfg, return_state=True)
    assert first.is_completed()
    result = first.result()
    assert result.dataset == dataset.uri and result.round_trip_ok and result.new
    assert result.uri == f"hf://me/tok@{hub.head('model', 'me/tok')}"
    assert task_run_states(first) == {"tokenizer": ["Completed"], "push-tokenizer": ["Completed"], "announce": ["Completed"]}
    pushed = Resolver(hub, tmp_path / "cache").resolve(result.uri).path
    assert (pushed / "tokenizer.json").read_bytes() == Path(result.path, "tokenizer.json").read_bytes()
    assert not (pushed / ".complete").exists(), "the completion marker stays with the local build"

    # The run's page says what to paste where, in a code block.
    said = _reference_artifact(first)
    assert f"```\n{result.uri}\n```" in said and "the Tokenizer field of a training or pretokenize run" in said

    second = tokenizer_flow(data=dataset.uri, cfg=cfg, return_state=True)
    assert task_run_states(second)["tokenizer"] == ["Cached"]
    assert second.result().uri == result.uri and not second.result().new
    # An unchanged rerun still gives the value to paste (the newest revision), and says it is unchanged.
    again = _reference_artifact(second)
    assert f"```\n{result.uri}\n```" in again and "unchanged" in again


def _reference_artifact(state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [art] = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            key=ArtifactFilterKey(any_=["tokenizer-reference"])))  # fmt: skip
    assert art.description
    return art.data
