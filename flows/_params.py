"""Flow parameters as the Prefect form shows them.

Prefect 3.9 titles a flow parameter with its Python name and takes its description from the flow's
Google-style `Args:` docstring; a `pydantic.Field` default may carry a readable title (through
`json_schema_extra`, which Prefect merges last). Bounds go in the annotation, `Annotated[int, Field(ge=1)]`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field


def param(default: Any, title: str) -> Any:
    """A flow parameter's default with the form title `title`; Prefect passes `default` to the flow."""
    return Field(default, json_schema_extra={"title": title})
