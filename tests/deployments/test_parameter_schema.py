"""Every deployment's parameter form, as `prefect deploy` stores it (parameter_openapi_schema) and the UI renders it.

A property without a title or description is a box the user must guess; a number without bounds is accepted
by the form and fails on the worker; a secret in a parameter is stored and shown in plain text; a default
that names a path of the deploying machine sends every worker there. And a normal edit of the form (another
preset) must give parameters that validate, not a run that fails on the worker.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prefect.utilities.callables import parameter_schema

from codeparrot.env import home
from tests.deployments.helpers import SETUP_VARIABLES, deployments_by_name

DEPLOYMENTS = deployments_by_name(SETUP_VARIABLES)
SECRET_NAME = re.compile(r"(^|_)(token|password|secret|credentials?|api_key|private_key)$")


def _flow(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def _schema(deployment: str) -> dict[str, Any]:
    return parameter_schema(_flow(DEPLOYMENTS[deployment]["entrypoint"])).model_dump_for_openapi()


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(dotted path, property) of every property, nested configs included."""
    defs = schema.get("definitions", {})
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, prop in props.items():
            out.append((prefix + name, prop))
            refs = [prop.get("$ref")] + [o.get("$ref") for o in prop.get("allOf", []) + prop.get("anyOf", [])]
            for ref in filter(None, refs):
                walk(defs[ref.split("/")[-1]].get("properties", {}), f"{prefix}{name}.")

    walk(schema["properties"], "")
    return out


def _numeric(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in prop.get("anyOf", [prop]) if o.get("type") in ("integer", "number")]


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_property_has_a_readable_title_and_a_description(deployment: str) -> None:
    props = _properties(_schema(deployment))
    assert len(props) > 5
    untitled = [path for path, p in props if not p.get("title") or "_" in p["title"]]
    undescribed = [path for path, p in props if not (p.get("description") or "").strip()]
    assert not untitled, f"{deployment}: no readable title: {untitled}"
    assert not undescribed, f"{deployment}: no description: {undescribed}"
    # The UI renders descriptions as markdown: a bare <reason> is read as an HTML tag and vanishes.
    tags = [path for path, p in props if re.search(r"<[A-Za-z][^>]*>", re.sub(r"`[^`]*`", "", p.get("description", "")))]
    assert not tags, f"{deployment}: descriptions with a bare <tag>: {tags}"


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_number_has_a_lower_bound_and_the_config_enforces_the_schema_bounds(deployment: str) -> None:
    """The form refuses what the worker would refuse: a value past a schema bound fails the flow's validation."""
    flow = _flow(DEPLOYMENTS[deployment]["entrypoint"])
    unbounded, unenforced = [], []
    for path, prop in _properties(_schema(deployment)):
        for option in _numeric(prop):
            bounds = {**option, **{k: v for k, v in prop.items() if k.endswith("imum")}}
            if "minimum" not in bounds and "exclusiveMinimum" not in bounds:
                unbounded.append(path)
            unenforced += [f"{path}={value}" for value in _just_outside(bounds) if _accepted(flow, path, value)]
    assert not unbounded, f"{deployment}: numbers without a lower bound: {unbounded}"
    assert not unenforced, f"{deployment}: out of the schema's bounds yet accepted: {unenforced}"


def _just_outside(bounds: dict[str, Any]) -> list[float]:
    """The nearest values the schema's bounds exclude (one below an inclusive bound, the exclusive bound itself)."""
    return [
        *([bounds["minimum"] - 1] if "minimum" in bounds else []),
        *([bounds["exclusiveMinimum"]] if "exclusiveMinimum" in bounds else []),
        *([bounds["maximum"] + 1] if "maximum" in bounds else []),
        *([bounds["exclusiveMaximum"]] if "exclusiveMaximum" in bounds else []),
    ]


def _accepted(flow: Any, path: str, value: Any) -> bool:
    """Whether the flow's parameter validation (what the worker runs first) takes `value` at dotted `path`."""
    *parents, leaf = path.split(".")
    params: dict[str, Any] = {}
    node = params
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    try:
        flow.validate_parameters(params)
    except Exception:  # refused, as the worker would refuse it
        return False
    return True


def test_the_bounds_the_issue_names_are_in_the_form() -> None:
    props = dict(_properties(_schema("train-spot")))
    assert props["config.keep_last"]["minimum"] == 2
    assert props["num_processes"]["minimum"] == 1
    temperature = next(o for o in props["eval_config.temperature"].get("anyOf", [props["eval_config.temperature"]]))
    assert (temperature["exclusiveMinimum"], temperature["maximum"]) == (0, 5)
    assert props["eval_config.top_p"]["maximum"] == 1
    refresh = dict(_properties(_schema("dataset-refresh")))
    assert refresh["curate_workers"]["minimum"] == 1 and refresh["download.workers"]["maximum"] == 64


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_no_parameter_is_a_secret_and_no_default_is_this_machines_path(deployment: str) -> None:
    schema = _schema(deployment)
    secrets = [path for path, p in _properties(schema) if SECRET_NAME.search(path.rsplit(".", 1)[-1]) or p.get("format") == "password"]
    assert not secrets, f"{deployment}: secrets as parameters (use a Secret block's name): {secrets}"
    text = json.dumps(schema) + json.dumps(DEPLOYMENTS[deployment].get("parameters", {}))
    for local in {str(home()), str(Path.home()), "/tmp/"}:
        assert local not in text, f"{deployment}: a default names {local}, a path of the deploying machine"
    blocks = [path for path, _ in _properties(schema) if path.endswith("_block")]
    assert all("Secret block" in dict(_properties(schema))[b]["description"] for b in blocks)


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_the_deployments_parameters_fit_their_form_and_their_flow(deployment: str) -> None:
    params = DEPLOYMENTS[deployment].get("parameters", {})
    jsonschema.validate(params, {**_schema(deployment), "definitions": _schema(deployment).get("definitions", {})})
    _flow(DEPLOYMENTS[deployment]["entrypoint"]).validate_parameters(params)


@pytest.mark.parametrize("deployment", ["train-spot", "train-k8s", "train-smoke"])
@pytest.mark.parametrize("preset", ["tiny", "small", "large"])
def test_choosing_another_preset_in_the_form_gives_a_valid_run_of_that_preset(deployment: str, preset: str) -> None:
    """The form keeps every other value of the deployment's config; the preset brings its own context,
    warmup, learning rate and step count because the deployment leaves them empty."""
    params = json.loads(json.dumps(DEPLOYMENTS[deployment]["parameters"]))
    params["config"]["preset"] = preset
    config = _flow(DEPLOYMENTS[deployment]["entrypoint"]).validate_parameters(params)["config"]
    from codeparrot.train.config import PRESET_RECIPES, PRESET_SHAPES

    assert config.context_length == PRESET_SHAPES[preset]["n_positions"]
    assert config.peak_lr == PRESET_RECIPES[preset]["lr"]
    assert config.warmup_steps < config.max_steps
    if "max_steps" not in DEPLOYMENTS[deployment]["parameters"]["config"]:
        assert config.max_steps == PRESET_RECIPES[preset]["max_steps"]


def test_an_empty_text_box_means_not_set() -> None:
    """Optional text parameters are plain boxes ("" by default, not a str/None switch); "" reaches the flow as None."""
    schema = _schema("train-spot")
    assert schema["properties"]["tokens"] == {**schema["properties"]["tokens"], "type": "string", "default": ""}
    params = _flow(DEPLOYMENTS["train-spot"]["entrypoint"]).validate_parameters({"tokens": "", "model_repo": "", "hub_token_block": ""})
    assert params["tokens"] is None and params["model_repo"] is None and params["hub_token_block"] is None
