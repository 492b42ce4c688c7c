"""Base class of every per-stage config: frozen, strict, hashable into a cache key."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

# How the parts of a field name read in a form title (Prefect renders a config as a form).
TITLE_WORDS = {
    "lr": "learning rate", "mb": "(MB)", "mib": "(MiB)", "s": "(s)", "url": "URL", "id": "ID", "ip": "IP",
    "api": "API", "gcp": "GCP", "humaneval": "HumanEval", "dir": "folder", "num": "number of", "frac": "fraction",
    "coeff": "coefficient", "accum": "accumulation", "seq": "sequence", "ngram": "n-gram", "compresslevel": "gzip level",
}  # fmt: skip


def field_title(name: str, _info: FieldInfo | None = None) -> str:
    """A readable form title of a field name: `timeout_s` -> "Timeout (s)", `lr` -> "Learning rate"."""
    words = " ".join(TITLE_WORDS.get(word, word) for word in name.split("_"))
    return words[:1].upper() + words[1:]


def form_schema(schema: dict[str, Any], _cls: type | None = None) -> None:
    """An optional field (`int | None`) as one plain input that may stay empty, not a type toggle.

    Pydantic writes `anyOf: [{type: integer}, {type: null}]`, which the Prefect form renders as an
    int/None switch reading 'Property is type "None"'. The field is not required and its default (None)
    is left out of the schema, so the form sends nothing for an empty input and validation fills it in;
    a form default of null would fail the form's own check ("None is not of type 'integer'"). A field whose
    default is not None (where None means "off", e.g. `line_max`) keeps the switch: it is how one picks None.
    """
    for name, prop in schema.get("properties", {}).items():
        options = prop.get("anyOf", [])
        kept = [o for o in options if o.get("type") != "null"]
        if len(options) == 2 and len(kept) == 1 and "$ref" not in kept[0] and prop.get("default") is None:
            prop = schema["properties"][name] = {**kept[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
        if "default" in prop and prop["default"] is None:
            del prop["default"]


#: What every config model shares: frozen, strict, readable titles and plain optional inputs in the form.
CONFIG_MODEL = ConfigDict(
    frozen=True, extra="forbid", validate_default=True, field_title_generator=field_title, json_schema_extra=form_schema
)


class StageConfig(BaseModel):
    """Frozen pydantic model; `fingerprint()` covers every field that changes a stage's output."""

    # inf and NaN are never a meaningful setting (`--lr inf` trained to NaN and reported success).
    model_config = ConfigDict(**CONFIG_MODEL, allow_inf_nan=False)

    #: Fields that do not change what the stage produces (cache paths, worker counts, secrets).
    volatile_fields: ClassVar[frozenset[str]] = frozenset()

    def fingerprint_fields(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in self.volatile_fields}

    def fingerprint(self, *extra: object) -> str:
        """Stable sha256 hex of the output-relevant fields and any extra identity (input hashes)."""
        payload = json.dumps([self.fingerprint_fields(), [str(e) for e in extra]], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def short_hash(*parts: object, length: int = 12) -> str:
    """First `length` hex digits of a sha256 over the parts' JSON, for names of folders and objects."""
    payload = json.dumps([str(p) for p in parts], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]
