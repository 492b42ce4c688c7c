"""Prepare a Prefect workspace for deployments/prefect.yaml: work pools, secrets, variables, the resume automation.

Idempotent: rerun it after changing the environment or the job template.

- work pools `cpu-pool` (process: data flows), `gpu-pool` (process: training on a spot VM) and `gpu-k8s`
  (kubernetes, with the custom base job template in deployments/k8s-gpu-job-template.json);
- Secret blocks from the environment, only when given: `gcp-credentials` (the service-account key in
  $GOOGLE_APPLICATION_CREDENTIALS or $CODEPARROT_GCP_CREDENTIALS_JSON) and `hf-token` ($HF_TOKEN);
- the variables prefect.yaml reads at deploy time: `codeparrot_gcs_bucket` ($CODEPARROT_GCS_BUCKET, else the
  export default), `codeparrot_hub_root` (the Hub stand-in every flow run uses: $CODEPARROT_HUB_ROOT, else
  gs://codeparrot-hub), `codeparrot_artifact_root` (token sets and checkpoints shared by the pools:
  $CODEPARROT_ARTIFACT_ROOT, else gs://codeparrot-artifacts), `codeparrot_gcp_credentials_block` and
  `codeparrot_hub_token_block` (the block names, or "" so that flows use the worker's environment);
- the automations of deployments/automations.py (Crashed `auto-resume` runs -> AwaitingRetry, capped; silent
  runs -> Crashed).

    python deployments/setup.py [--max-restarts 3] [--heartbeat-window 120] [--no-automation] [--no-k8s]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import codeparrot  # noqa: F401 - the offline / telemetry defaults before Prefect is imported
from codeparrot.errors import CodeParrotError, ConfigError

try:
    from deployments import automations  # imported from the repository root (tests, python -m)
except ImportError:  # run as a script, python deployments/setup.py: this folder is on sys.path
    import automations  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
K8S_TEMPLATE = HERE / "k8s-gpu-job-template.json"
CPU_POOL, GPU_POOL, K8S_POOL = "cpu-pool", "gpu-pool", "gpu-k8s"
GCP_BLOCK, HUB_BLOCK = "gcp-credentials", "hf-token"
# The export stage's default bucket (codeparrot.export.ExportConfig), without importing the stage here.
DEFAULT_BUCKET = "codeparrot-exports"
# Where both pools meet: the Hub stand-in (codeparrot.hub.DEFAULT_STANDIN_ROOT) and the shared artifacts.
DEFAULT_HUB_ROOT = "gs://codeparrot-hub"
DEFAULT_ARTIFACT_ROOT = "gs://codeparrot-artifacts"


@dataclass
class SetupReport:
    """What was created or updated, for the summary the script prints."""

    pools: dict[str, str] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    automations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"work pool {name}: {kind}" for name, kind in self.pools.items()]
        out += [f"secret block {name}" for name in self.blocks] or ["no secret blocks (no credentials in the environment)"]
        out += [f"variable {k} = {v!r}" for k, v in self.variables.items()]
        out += [f"automation {a}" for a in self.automations] or ["no automations applied"]
        return out


def process_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def k8s_template(path: Path = K8S_TEMPLATE) -> dict[str, Any]:
    """The custom Kubernetes base job template; every placeholder must be a declared variable."""
    from prefect.utilities.templating import find_placeholders

    template = json.loads(path.read_text())
    declared = set(template["variables"]["properties"])
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    if undeclared := sorted(used - declared):
        raise ConfigError(f"{path}: placeholders {undeclared} have no entry under variables.properties; declare them")
    return template


def ensure_work_pool(name: str, kind: str, base_job_template: dict[str, Any]) -> str:
    """Create the pool, or update its job template if it exists (its type cannot change)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=base_job_template))
            return "created"
        if existing.type != kind:
            raise ConfigError(
                f"work pool {name!r} exists with type {existing.type!r}, not {kind!r}: "
                f"delete it (prefect work-pool delete {name}) and rerun"
            )
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=base_job_template))
        return "updated"


def gcp_key_from_env(environ: dict[str, str]) -> str | None:
    """The service-account key JSON: $CODEPARROT_GCP_CREDENTIALS_JSON, else the file $GOOGLE_APPLICATION_CREDENTIALS."""
    if raw := environ.get("CODEPARROT_GCP_CREDENTIALS_JSON"):
        return raw
    if path := environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        key = Path(path).expanduser()
        if not key.is_file():
            raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS={path} is not a file: point it at the service-account JSON key")
        return key.read_text()
    return None


def save_secret(name: str, value: str) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


def set_variable(name: str, value: str) -> None:
    from prefect.variables import Variable

    Variable.set(name, value, overwrite=True)


def setup(
    *,
    environ: dict[str, str] | None = None,
    k8s: bool = True,
    automation: bool = True,
    max_restarts: int = automations.DEFAULT_MAX_RESTARTS,
    tag: str = automations.DEFAULT_TAG,
    heartbeat_window_s: float | None = automations.DEFAULT_HEARTBEAT_WINDOW_S,
) -> SetupReport:
    """Everything prefect.yaml needs, against the Prefect API of the current profile / PREFECT_API_URL."""
    env = dict(os.environ if environ is None else environ)
    report = SetupReport()
    for name in (CPU_POOL, GPU_POOL):
        report.pools[name] = f"process ({ensure_work_pool(name, 'process', process_template())})"
    if k8s:
        report.pools[K8S_POOL] = f"kubernetes ({ensure_work_pool(K8S_POOL, 'kubernetes', k8s_template())})"

    gcp_block = hub_block = ""
    if key := gcp_key_from_env(env):
        save_secret(GCP_BLOCK, key)
        report.blocks.append(gcp_block := GCP_BLOCK)
    if token := env.get("HF_TOKEN"):
        save_secret(HUB_BLOCK, token)
        report.blocks.append(hub_block := HUB_BLOCK)
    variables = {
        "codeparrot_gcs_bucket": env.get("CODEPARROT_GCS_BUCKET") or DEFAULT_BUCKET,
        "codeparrot_hub_root": env.get("CODEPARROT_HUB_ROOT") or DEFAULT_HUB_ROOT,
        "codeparrot_artifact_root": (env.get("CODEPARROT_ARTIFACT_ROOT") or DEFAULT_ARTIFACT_ROOT).rstrip("/"),
        "codeparrot_gcp_credentials_block": gcp_block,
        "codeparrot_hub_token_block": hub_block,
    }
    for name, value in variables.items():
        set_variable(name, value)
    report.variables = variables

    if automation:
        report.automations = [f"{a.name}: {a.description}" for a in automations.apply(max_restarts, tag, heartbeat_window_s)]
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-restarts", type=int, default=automations.DEFAULT_MAX_RESTARTS,
                    help="resubmissions of a crashed training run before it stays Crashed")
    ap.add_argument("--tag", default=automations.DEFAULT_TAG, help="runs with this tag are resubmitted")
    ap.add_argument("--heartbeat-window", type=float, default=automations.DEFAULT_HEARTBEAT_WINDOW_S,
                    help="seconds without a heartbeat before a running tagged run is marked Crashed; 0 disables it")
    ap.add_argument("--no-automation", action="store_true", help="do not create the resume automation")
    ap.add_argument("--no-k8s", action="store_true", help="skip the gpu-k8s (kubernetes) work pool")
    args = ap.parse_args(argv)
    try:
        report = setup(
            k8s=not args.no_k8s,
            automation=not args.no_automation,
            max_restarts=args.max_restarts,
            tag=args.tag,
            heartbeat_window_s=args.heartbeat_window or None,
        )
    except CodeParrotError as exc:
        raise SystemExit(f"setup: {exc}") from None
    except httpx.ConnectError as exc:
        from prefect.settings import PREFECT_API_URL

        raise SystemExit(
            f"setup: cannot reach the Prefect API at {PREFECT_API_URL.value()} ({exc}): start it "
            "(prefect server start) or point PREFECT_API_URL at yours"
        ) from None
    for line in report.lines():
        print(line)


if __name__ == "__main__":
    main()
