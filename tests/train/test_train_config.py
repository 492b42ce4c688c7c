from __future__ import annotations

import pytest
from pydantic import ValidationError

from codeparrot.errors import ConfigError
from codeparrot.train.cli import build_config
from codeparrot.train.config import ModelOverrides, TrainConfig, make_config


def test_defaults_are_the_tiny_preset_with_its_context() -> None:
    config = TrainConfig()
    assert config.preset == "tiny"
    assert config.context_length == config.model_shape()["n_positions"]
    assert config.tokens_per_step(2) == 2 * config.batch_size * config.grad_accum * config.context_length


def test_keep_last_below_two_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="keep_last must be >= 2"):
        TrainConfig(keep_last=1)


def test_seq_length_beyond_context_says_how_to_fix() -> None:
    with pytest.raises(ValidationError, match=r"raise model\.n_positions"):
        TrainConfig(seq_length=4096)
    assert TrainConfig(seq_length=256, model=ModelOverrides(n_positions=256)).context_length == 256


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValidationError, match="not divisible by n_head"):
        TrainConfig(model=ModelOverrides(n_head=3))


def test_warmup_must_end_before_the_run() -> None:
    with pytest.raises(ValidationError, match="shorten the warmup"):
        TrainConfig(max_steps=10, warmup_steps=10)


def test_config_is_frozen_and_strict() -> None:
    config = TrainConfig()
    with pytest.raises(ValidationError):
        config.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        TrainConfig(learning_rate=1.0)  # type: ignore[call-arg]


def test_volatile_fields_do_not_change_the_resume_hash() -> None:
    base = TrainConfig()
    moved = TrainConfig(
        save_every=7, keep_last=5, log_every=1, eval_every=3, checkpoint_dir="gs://b/x", token_cache="/t",
        save_every_minutes=1.0, preemption_url="http://127.0.0.1:1/p",
    )
    assert base.fingerprint() == moved.fingerprint()


@pytest.mark.parametrize(
    "change",
    [{"lr": 1e-4}, {"max_steps": 300}, {"seed": 2}, {"batch_size": 4}, {"grad_accum": 2},
     {"model": ModelOverrides(n_layer=3)}, {"preset": "small"}, {"mixed_precision": "bf16"}],
)
def test_trajectory_fields_change_the_resume_hash(change: dict[str, object]) -> None:
    assert TrainConfig(**change).fingerprint() != TrainConfig().fingerprint()


def test_make_config_turns_validation_into_one_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^invalid training config: keep_last must be >= 2"):
        make_config(keep_last=0)
    with pytest.raises(ConfigError, match=r"batch_size: Input should be greater than or equal to 1"):
        make_config(batch_size=0)


def test_config_round_trips_as_json_for_the_prefect_form() -> None:
    config = TrainConfig(model=ModelOverrides(n_layer=3, dropout=0.0), lr=1e-3)
    assert TrainConfig.model_validate_json(config.model_dump_json()) == config
    schema = TrainConfig.model_json_schema()
    assert all("description" in prop for name, prop in schema["properties"].items() if name != "model")


def test_cli_options_override_the_config_file(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(TrainConfig(lr=1e-3, max_steps=50).model_dump_json())
    config = build_config(str(path), ("n_layer=3", "dropout=0.0"), {"max_steps": 60, "warmup": 5, "seed": None})
    assert (config.lr, config.max_steps, config.warmup_steps, config.seed) == (1e-3, 60, 5, 1)
    assert config.model.n_layer == 3 and config.model.dropout == 0.0
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config(None, ("n_layer",), {})


def test_each_preset_brings_its_recipe_and_a_value_set_by_hand_wins() -> None:
    from codeparrot.train.config import PRESET_RECIPES

    # The tiny defaults are the ones measured before presets carried recipes.
    tiny = TrainConfig()
    assert (tiny.max_steps, tiny.warmup_steps, tiny.batch_size, tiny.grad_accum, tiny.peak_lr, tiny.save_every, tiny.eval_every) == (
        400, 20, 8, 1, 4e-3, 50, 100)  # fmt: skip
    small = TrainConfig(preset="small")
    assert {k: getattr(small, k) for k in PRESET_RECIPES["small"]} == PRESET_RECIPES["small"]
    assert small.context_length == 1024 and small.tokens_per_step() == 12 * 16 * 1024
    mine = TrainConfig(preset="small", batch_size=4, lr=1e-4)
    assert (mine.batch_size, mine.peak_lr, mine.grad_accum) == (4, 1e-4, 16)
    # None is "not set", as the form sends an empty field.
    assert TrainConfig.model_validate({"preset": "large", "max_steps": None}).max_steps == 50_000


def test_an_unset_warmup_shrinks_with_a_short_run_but_a_set_one_is_checked() -> None:
    assert TrainConfig(preset="small", max_steps=100).warmup_steps == 10
    assert TrainConfig(max_steps=12).warmup_steps == 1
    with pytest.raises(ValidationError, match="warmup_steps 2000 must be below max_steps 100"):
        TrainConfig(preset="small", max_steps=100, warmup_steps=2000)
    # A context typed by hand is still checked against the chosen preset's.
    with pytest.raises(ValidationError, match="seq_length 1024 exceeds the model's context 128"):
        TrainConfig(preset="tiny", seq_length=1024)
