"""No Docker engine runs here, so the images and compose file are checked by reading them for the things
that matter: exec-form entrypoints (SIGTERM reaches the worker), pinned bases, a non-root user, no baked
secrets, and a compose file whose services point at files that exist."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_there_is_a_cpu_and_a_gpu_image():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_exec_form_so_sigterm_reaches_the_worker(path):
    entry = [rest for word, rest in instructions(path) if word == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # shell form would not parse as a JSON array
    assert argv[:2] == ["tini", "--"] and "prefect" in argv and "worker" in argv
    # deployments' pull step finds the code through it (deployments/prefect.yaml)
    assert "CODEPARROT_SRC=/opt/codeparrot" in path.read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_and_torch_are_pinned(path):
    (base,) = [rest for word, rest in instructions(path) if word == "FROM"]
    _, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), base
    text = path.read_text()
    assert "torch==2.13.0" in text and "-c constraints.txt" in text


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user_without_baked_secrets(path):
    ins = instructions(path)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [w for w, _ in ins].index("USER") < [w for w, _ in ins].index("ENTRYPOINT")
    env = " ".join(rest for word, rest in ins if word in ("ENV", "ARG"))
    assert not re.search(r"(TOKEN|SECRET|PASSWORD|CREDENTIALS|_KEY)\b\s*=", env, re.I), env
    copied = " ".join(rest for word, rest in ins if word in ("COPY", "ADD"))
    assert ".env" not in copied and "credentials" not in copied.lower()


def test_compose_runs_server_worker_and_emulators_from_existing_files():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prefect-server", "cpu-worker", "gpu-worker", "emulators"} <= set(services)
    # The two pools share the API and the bucket, never a disk.
    assert set(services["cpu-worker"]["volumes"]).isdisjoint(services["gpu-worker"]["volumes"])
    assert "CODEPARROT_BIGQUERY_ENDPOINT" not in services["gpu-worker"]["environment"]
    for svc in services.values():
        build = svc.get("build")
        if build:
            assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve().is_file()
        if "image" in svc:
            assert ":" in svc["image"] and not svc["image"].endswith(":latest")
        assert isinstance(svc.get("entrypoint", []), list) and isinstance(svc.get("command", []), list)
    worker_env = services["cpu-worker"]["environment"]
    assert worker_env["PREFECT_API_URL"].startswith("http://prefect-server:")
    assert worker_env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
    assert worker_env["STORAGE_EMULATOR_HOST"].startswith("http://emulators:")
    assert worker_env["CODEPARROT_SRC"] == "/opt/codeparrot"
    assert "--advertise" in services["emulators"]["entrypoint"]
