from pathlib import Path

from codeparrot.env import home
from codeparrot.tokenizer import TokenizerConfig
from flows.tokenizer import tokenizer_flow
from tests.builders import task_run_states, tiny_dataset


def test_tokenizer_flow_trains_pushes_locally_and_caches_on_the_dataset_revision(prefect_harness, tmp_path):
    data = tiny_dataset(tmp_path / "data", limit=80)
    cfg = TokenizerConfig(vocab_size=500, baseline_vocab_size=300, name="me/tok")
    first = tokenizer_flow(data=str(data), cfg=cfg, return_state=True)
    assert first.is_completed()
    result = first.result()
    assert Path(result.path, "tokenizer.json").exists() and result.round_trip_ok
    assert task_run_states(first) == {"tokenizer": ["Completed"], "push-tokenizer": ["Completed"]}
    pushed = home() / "hub" / "models" / "me" / "tok" / "main"
    assert (pushed / "tokenizer.json").read_bytes() == Path(result.path, "tokenizer.json").read_bytes()

    second = tokenizer_flow(data=str(data), cfg=cfg, return_state=True)
    assert task_run_states(second)["tokenizer"] == ["Cached"]
    assert second.result().tokenizer_hash() == result.tokenizer_hash()
