"""Flow parameters as the Prefect form shows them.

Prefect 3.9 titles a flow parameter with its Python name and takes its description from the flow's
Google-style `Args:` docstring; a `pydantic.Field` default may carry a readable title (through
`json_schema_extra`, which Prefect merges last). Bounds go in the annotation, `Annotated[int, Field(ge=1)]`.

The form sends back every default the schema shows, so no default shown may be null where the type is not
nullable: a config parameter's default holds only what differs from its fields' own defaults (which
leave out None, see codeparrot.config.form_schema), and an optional text parameter
(`Text`) is a plain text box whose empty value, "", means None.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


#: An optional string parameter as one text box (not a str/None switch); "" and None both mean "not set".
Text = Annotated[str | None, BeforeValidator(_empty_is_none), WithJsonSchema({"type": "string"})]


def param(default: Any, title: str) -> Any:
    """A flow parameter's default with the form title `title`; Prefect passes `default` to the flow."""
    extra: dict[str, Any] = {"title": title}
    if isinstance(default, BaseModel):  # only what differs from the config's own defaults, which the form shows
        mine, base = default.model_dump(mode="json"), type(default)().model_dump(mode="json")
        extra["default"] = {k: v for k, v in mine.items() if v != base[k] and v is not None}
    return Field(default, json_schema_extra=extra)


def text(title: str) -> Any:
    """The default of a `Text` parameter: None to the flow, an empty box in the form."""
    return Field(None, json_schema_extra={"title": title, "default": ""})
