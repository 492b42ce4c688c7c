"""The Kubernetes base job template, rendered with train-k8s's job variables as a worker renders it.

No cluster here: the test fills the template the way Prefect's workers do (variable defaults, then the
deployment's job variables, through `apply_values`) and reads the Job manifest that would be submitted.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from prefect.utilities.templating import apply_values, find_placeholders

from deployments import setup
from tests.deployments.helpers import K8S_TEMPLATE, SETUP_VARIABLES, deployments_by_name


def _template() -> dict[str, Any]:
    return json.loads(K8S_TEMPLATE.read_text())


def _render(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """BaseJobConfiguration.from_template_and_values without the API lookups (the template has none)."""
    props = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in props.items() if "default" in spec}
    values.update(job_variables)
    return apply_values(template["job_configuration"], values)


def test_train_k8s_job_variables_fit_the_template() -> None:
    template = _template()
    job_variables = deployments_by_name(SETUP_VARIABLES)["train-k8s"]["work_pool"]["job_variables"]
    assert set(job_variables) <= set(template["variables"]["properties"]), "a job variable the template ignores"
    jsonschema.validate(job_variables, template["variables"])


def test_rendered_job_is_a_spot_gpu_pod_that_reschedules_on_sigterm() -> None:
    job_variables = deployments_by_name(SETUP_VARIABLES)["train-k8s"]["work_pool"]["job_variables"]
    config = _render(_template(), job_variables)
    job = config["job_manifest"]
    # Kubernetes must not rerun the pod: the flow run is rescheduled by Prefect and a new Job resumes it.
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == job_variables["gpu_type"]
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] == 120
    [container] = pod["containers"]
    assert container["name"] == "prefect-job"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # tini as PID 1 forwards the kubelet's SIGTERM; the image's worker entrypoint is replaced.
    assert container["command"] == ["tini", "--"]
    assert container["args"] == config["command"] == "prefect flow-run execute"
    assert container["env"]["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
    assert container["env"]["CODEPARROT_HOME"].startswith("/data/")
    assert container["env"]["CODEPARROT_HUB_ROOT"] == SETUP_VARIABLES["codeparrot_hub_root"]
    [data] = [v for v in pod["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == job_variables["data_volume_claim"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert not find_placeholders(config), "every placeholder has a value"


def test_gpu_count_and_grace_period_follow_job_variables() -> None:
    pod = _render(_template(), {"gpu_count": 4, "termination_grace_period_seconds": 300})["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["terminationGracePeriodSeconds"] == 300


def test_manifest_has_what_the_kubernetes_worker_requires() -> None:
    """prefect-kubernetes rejects a Job without these paths (its `_get_base_job_manifest`)."""
    job = _template()["job_configuration"]["job_manifest"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]["template"]["spec"]
    assert (spec["parallelism"], spec["completions"], spec["restartPolicy"]) == (1, 1, "Never")
    assert spec["containers"][0]["name"] == "prefect-job"


def test_setup_refuses_a_template_with_an_undeclared_placeholder(tmp_path) -> None:
    assert setup.k8s_template(K8S_TEMPLATE) == _template()
    broken = copy.deepcopy(_template())
    broken["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    path = tmp_path / "template.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"\['deadline'\] have no entry under variables.properties"):
        setup.k8s_template(path)
