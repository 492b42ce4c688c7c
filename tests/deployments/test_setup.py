"""The parts of deployments/setup.py that need no Prefect API (the live test runs the whole script)."""

from __future__ import annotations

import json

import pytest

from codeparrot.export import ExportConfig
from deployments import setup


def test_gcp_key_comes_from_the_json_variable_before_the_key_file(tmp_path) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "from-file"}))
    assert json.loads(setup.gcp_key_from_env({"GOOGLE_APPLICATION_CREDENTIALS": str(key)}))["project_id"] == "from-file"
    both = {"GOOGLE_APPLICATION_CREDENTIALS": str(key), "CODEPARROT_GCP_CREDENTIALS_JSON": '{"project_id": "inline"}'}
    assert json.loads(setup.gcp_key_from_env(both))["project_id"] == "inline"
    assert setup.gcp_key_from_env({}) is None


def test_a_missing_key_file_names_the_variable(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"GOOGLE_APPLICATION_CREDENTIALS=.*is not a file"):
        setup.gcp_key_from_env({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")})


def test_default_bucket_is_the_export_stages() -> None:
    assert ExportConfig().bucket == setup.DEFAULT_BUCKET


def test_report_says_when_nothing_secret_was_stored() -> None:
    report = setup.SetupReport(pools={"cpu-pool": "process (created)"}, variables={"codeparrot_hub_token_block": ""})
    lines = report.lines()
    assert "work pool cpu-pool: process (created)" in lines
    assert any("no secret blocks" in line for line in lines)
    assert "variable codeparrot_hub_token_block = ''" in lines
    assert lines[-1] == "no automations applied"


def test_default_shared_roots_are_the_codes_defaults() -> None:
    from codeparrot.hub import DEFAULT_STANDIN_ROOT
    from codeparrot.tokens import PretokenizeConfig

    assert setup.DEFAULT_HUB_ROOT == DEFAULT_STANDIN_ROOT
    assert PretokenizeConfig().root == f"{setup.DEFAULT_ARTIFACT_ROOT}/tokens"
