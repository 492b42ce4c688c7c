"""The base of every stage config: readable form titles and plain optional inputs in its JSON schema."""

from __future__ import annotations

from pydantic import Field

from codeparrot.config import StageConfig, field_title


class _Example(StageConfig):
    timeout_s: float = Field(3.0, gt=0, description="Seconds.")
    memory_mb: int | None = Field(None, ge=1, description="Optional memory.")
    name: str | None = Field(None, description="Optional name.")
    lr: float = Field(1e-3, gt=0, title="Peak learning rate", description="An explicit title wins.")


def test_titles_read_as_words_with_units() -> None:
    assert field_title("timeout_s") == "Timeout (s)"
    assert field_title("max_shard_mib") == "Max shard (MiB)"
    assert field_title("preemption_url") == "Preemption URL"
    assert field_title("lr") == "Learning rate"
    props = _Example.model_json_schema()["properties"]
    assert props["lr"]["title"] == "Peak learning rate" and props["memory_mb"]["title"] == "Memory (MB)"


def test_an_optional_field_is_one_plain_input_without_a_null_default() -> None:
    """The Prefect form sends back every default it shows: a null default on an integer input would fail its
    own validation, and anyOf [int, null] renders as an int/None switch."""
    schema = _Example.model_json_schema()
    memory, name = schema["properties"]["memory_mb"], schema["properties"]["name"]
    assert memory == {"type": "integer", "minimum": 1, "title": "Memory (MB)", "description": "Optional memory."}
    assert name["type"] == "string" and "default" not in name and "anyOf" not in name
    assert "memory_mb" not in schema.get("required", [])
    assert schema["properties"]["timeout_s"]["default"] == 3.0
    # Validation is unchanged: empty is None, set values are checked.
    assert _Example().memory_mb is None and _Example(memory_mb=5).memory_mb == 5


def test_an_optional_field_with_a_value_by_default_keeps_the_switch_to_none() -> None:
    """`line_max: int | None = 1000`: None turns the filter off, and the form's switch is how one picks it."""

    class _Filter(StageConfig):
        line_max: int | None = Field(1000, ge=1, description="Longest line; None: no limit.")

    prop = _Filter.model_json_schema()["properties"]["line_max"]
    assert prop["default"] == 1000 and {"type": "null"} in prop["anyOf"]
