"""The sandbox: HumanEval's canonical solutions pass, wrong ones fail, hostile programs fail within limits.

Hostile programs run twice: with the Python guard (the default) and without it, where only the OS layers
(namespaces, dedicated uid, rlimits) stand between the program and the machine. The escapes a hostile
tester found (host /proc readable, host folders writable, no total quota, a forgeable PASSED line) are
each reproduced without the guard, as root, and must be contained; an unprivileged run checks what the
sandbox reports and that verdicts stay right without root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from codeparrot.errors import ConfigError
from codeparrot.evaluate.config import SandboxLimits, build_limits
from codeparrot.evaluate.humaneval import check_program, load_problems
from codeparrot.evaluate.sandbox import LAUNCH_GRACE_S, TERM_GRACE_S, ExecResult, Sandbox, SandboxError

TIMEOUT = 1.0
# A hostile program must end by the wall clock, the launcher's grace, the kill grace and some scheduling slack.
DEADLINE = TIMEOUT + LAUNCH_GRACE_S + TERM_GRACE_S + 2.0

HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "10 GB allocation": "x = bytearray(10 * 2**30)\nx[-1] = 1\n",
    "sleep forever": "import time\ntime.sleep(3600)\n",
    "output flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
}
# Forges the old verdict line: every 32-hex string reachable from its frames and the gc (where the runner's
# token used to be) as `PASSED <token>`, on stdout and on every descriptor it holds, then stops early.
FORGE = r"""
import gc, os, re, sys
found = set()
frame = sys._getframe()
while frame is not None:
    found.update(v for v in (*frame.f_locals.values(), *frame.f_globals.values()) if isinstance(v, (str, bytes)))
    frame = frame.f_back
for obj in gc.get_objects():
    if isinstance(obj, dict):
        found.update(v for v in obj.values() if isinstance(v, (str, bytes)))
tokens = {t for v in found for t in re.findall(rb"[0-9a-f]{32}", v if isinstance(v, bytes) else v.encode())}
forged = b"".join(b"PASSED " + t + b"\n" for t in tokens) or b"PASSED 0\n"
for fd in range(256):
    try:
        os.write(fd, forged)
    except OSError:
        pass
"""
# Only the OS layers hold: no Python guard, 10 s for walking the visible tree, a small quota to fill.
JAILED = SandboxLimits(timeout_s=10, python_guard=False, disk_mb=8, max_file_mb=4)
HOST_FOLDERS = ("/run/lock", "/dev/shm", "/var/tmp", "/tmp", "/run", "/root", "/home", "/var/lib", "/etc", "/")


@pytest.fixture(scope="module", params=[True, False], ids=["guard", "os-only"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    limits = SandboxLimits(timeout_s=TIMEOUT, python_guard=request.param, max_file_mb=4)
    try:
        sb = Sandbox(limits, workers=2).__enter__()
    except SandboxError as exc:  # root without a dedicated uid refuses to run unguarded
        pytest.skip(str(exc))
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def guarded() -> Iterator[Sandbox]:
    """Default limits (3 s per program): the canonical solutions must not time out on a busy machine."""
    with Sandbox(SandboxLimits(), workers=2) as sb:
        yield sb


class NoPidNamespaceSandbox(Sandbox):
    """As where unshare(CLONE_NEWPID) is refused: the new root must hide /proc rather than show the host's."""

    NAMESPACES = ("network", "ipc", "mount")


@pytest.fixture(scope="module")
def jailed() -> Iterator[Sandbox]:
    with _jail(Sandbox) as sb:
        yield sb


@contextlib.contextmanager
def _jail(cls: type[Sandbox]) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("needs root: only root gets the namespaces and new root under test (see test_unprivileged_run)")
    with cls(JAILED, workers=1) as sb:
        if not sb.isolation["mount_namespace"]:
            pytest.skip("mount namespaces are refused here: there is no new root to test")
        yield sb


def _report(result: ExecResult) -> dict:
    """The JSON a containment probe prints last; the probe passes only if it found nothing to report."""
    assert result.passed, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def _leftovers(sb: Sandbox) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["uids", "status"])
            if p.info["uids"] and p.info["uids"].real in sb.uids and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_canonical_solutions_all_pass_and_empty_bodies_all_fail(guarded: Sandbox) -> None:
    problems = load_problems()
    assert len(problems) == 164
    canonical = guarded.map(check_program(p, p.canonical_solution, prompt=p.prompt) for p in problems)
    failures = {p.task_id: r.verdict for p, r in zip(problems, canonical, strict=True) if not r.passed}
    assert failures == {}
    empty = guarded.map(check_program(p, "    pass\n", prompt=p.prompt) for p in problems)
    assert [p.task_id for p, r in zip(problems, empty, strict=True) if r.passed] == []


def test_wrong_bodies_fail(guarded: Sandbox) -> None:
    problems = load_problems(limit=40)
    # Each problem gets its neighbour's solution: valid code, wrong function.
    results = guarded.map(
        check_program(p, q.canonical_solution, prompt=p.prompt) for p, q in zip(problems, problems[1:] + problems[:1], strict=True)
    )
    assert not any(r.passed for r in results)
    assert all(r.status == "failed" for r in results)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_fail_within_their_limits(sandbox: Sandbox, name: str) -> None:
    start = time.monotonic()
    result = sandbox.run(HOSTILE[name])
    assert not result.passed
    assert time.monotonic() - start < DEADLINE
    assert _leftovers(sandbox) == []
    assert sandbox.run("assert 1 + 1 == 2\n").passed  # the harness keeps going


def test_ten_gb_allocation_is_refused_not_waited_for(sandbox: Sandbox) -> None:
    result = sandbox.run(HOSTILE["10 GB allocation"])
    assert result.status == "failed"
    assert "MemoryError" in result.detail


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    if not sandbox.limits.python_guard and not sandbox.isolation["dedicated_uid"]:
        pytest.skip("not root: RLIMIT_NPROC is the user's, and only the Python guard stops forks")
    result = sandbox.run(HOSTILE["fork bomb"])
    assert not result.passed
    assert _leftovers(sandbox) == []
    if sandbox.limits.python_guard:  # the guard refuses the first fork outright
        assert "os.fork is not allowed" in sandbox.run("import os\nos.fork()\n").detail


def test_socket_to_localhost_fails(sandbox: Sandbox) -> None:
    if not sandbox.limits.python_guard and not sandbox.isolation["network_namespace"]:
        pytest.skip("no network namespace here: only the Python guard blocks sockets")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        program = f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
        result = sandbox.run(program)
        assert result.status == "failed"
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the listener


def test_writing_outside_the_sandbox_fails(sandbox: Sandbox, tmp_path: Path) -> None:
    if not sandbox.limits.python_guard and not sandbox.isolation["mount_namespace"]:
        pytest.skip("no mount namespace and no dedicated uid here: only the Python guard stops outside writes")
    tmp_path.chmod(0o777)  # even a world-writable folder outside the sandbox is out of reach
    target = tmp_path / "escape.txt"
    result = sandbox.run(f"open({str(target)!r}, 'w').write('pwned')\n")
    assert result.status == "failed"
    assert not target.exists()


def test_writing_inside_the_work_folder_works_and_each_run_starts_fresh(sandbox: Sandbox) -> None:
    program = (
        "import os\nassert os.listdir('.') == [], os.listdir('.')\n"
        "open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
    )
    assert sandbox.run(program).passed
    assert sandbox.run(program).passed  # the second run does not see the first one's file


def test_no_inherited_secrets(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    program = "import os\nleaked = [k for k in os.environ if 'SECRET' in k or 'TOKEN' in k]\nassert not leaked, leaked\n"
    assert sandbox.run(program).passed
    assert os.environ["HF_TOKEN"] == "hf_secret"


@pytest.mark.parametrize(
    ("program", "detail"),
    [
        ("import sys\nsys.exit(0)\n", "SystemExit(0)"),
        ("import os\nos._exit(0)\n", "exited before its tests finished"),
        ("def f(:\n", "SyntaxError"),
        ("assert 1 == 2, 'wrong'\n", "AssertionError: wrong"),
    ],
)
def test_early_exits_and_errors_fail_with_a_reason(guarded: Sandbox, program: str, detail: str) -> None:
    result = guarded.run(program)
    assert result.status == "failed"
    assert detail in result.verdict


def test_timeout_status(sandbox: Sandbox) -> None:
    result = sandbox.run(HOSTILE["sleep forever"])
    assert result.status == "timed out"
    assert result.verdict == "timed out"


def test_programs_run_in_parallel(guarded: Sandbox) -> None:
    program = "import time\nprint('start', time.time())\ntime.sleep(0.6)\nprint('end', time.time())\n"
    results = guarded.map([program, program])
    spans = []
    for r in results:
        assert r.passed
        stamps = dict(line.split() for line in r.output.splitlines())
        spans.append((float(stamps["start"]), float(stamps["end"])))
    (s1, e1), (s2, e2) = spans
    assert s1 < e2 and s2 < e1  # the two runs overlapped in time


def test_isolation_is_reported(guarded: Sandbox) -> None:
    assert set(guarded.isolation) >= {
        "pid_namespace", "network_namespace", "ipc_namespace", "mount_namespace", "proc", "disk_quota_mb", "dedicated_uid",
    }
    assert guarded.isolation["python_guard"] is True
    if os.geteuid() == 0:
        assert len(guarded.uids) == guarded.workers


@pytest.mark.parametrize(
    ("values", "message"),
    [({"disk_mb": 0}, "disk_mb must be in [1, 1024]"), ({"disk_mb": 8, "max_file_mb": 16}, "raise disk_mb or lower")],
)
def test_disk_quota_is_validated_with_a_fix(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_limits(**values)


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule concerns root, whom RLIMIT_NPROC does not bind")
def test_root_never_runs_unguarded_without_a_dedicated_uid() -> None:
    # Without namespaces an interpreter under a private home (e.g. /root/.pyenv) cannot run as another uid.
    try:
        with Sandbox(SandboxLimits(namespaces=False, python_guard=False), workers=1) as sb:
            assert sb.isolation["dedicated_uid"] is True
    except SandboxError as exc:
        assert "turn the guard on" in str(exc)


@pytest.mark.parametrize("cls", [Sandbox, NoPidNamespaceSandbox], ids=["pid-namespace", "no-pid-namespace"])
def test_host_command_lines_are_unreadable(cls: type[Sandbox]) -> None:
    """Escape a: /proc was the host's, so a root process's `--api-key=...` was read from its cmdline."""
    secret = f"--api-key={uuid.uuid4().hex}"
    sleeper = "import time; print('ready', flush=True); time.sleep(60)"
    host = subprocess.Popen([sys.executable, "-c", sleeper, secret], stdout=subprocess.PIPE)
    program = f"""
import json, os
pids = sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)
leaks = []
for pid in pids + ["{host.pid}"]:
    try:
        with open(f"/proc/{{pid}}/cmdline", "rb") as fh:
            leaks += [pid] if {secret.encode()!r} in fh.read() else []
    except OSError:
        pass
print(json.dumps({{"pids": pids, "leaks": leaks}}))
assert not leaks
"""
    try:
        assert host.stdout is not None and host.stdout.readline() == b"ready\n"
        with open(f"/proc/{host.pid}/cmdline", "rb") as fh:
            assert secret.encode() in fh.read()  # the secret is there to find on the host
        with _jail(cls) as sb:
            report = _report(sb.run(program))
            proc = sb.isolation["proc"]
    finally:
        host.kill()
        host.communicate()
    if cls is Sandbox:
        assert (proc, report["pids"]) == ("private", ["1", "2"])  # init and the program: nothing of the host
    else:
        assert (proc, report["pids"]) == ("hidden", [])


def test_nothing_written_persists_on_the_host(jailed: Sandbox) -> None:
    """Escape b: /run/lock was writable and kept what was written; no host folder may be writable."""
    marker = f"escape-{uuid.uuid4().hex}"
    program = f"""
import json, os
wrote = []
for folder in {HOST_FOLDERS!r} + (os.getcwd(), os.path.dirname(os.getcwd())):
    try:
        with open(os.path.join(folder, {marker!r}), "w") as fh:
            fh.write("pwned")
        wrote.append(folder)
    except OSError:
        pass
writable = []
for folder, subfolders, _ in os.walk("/"):
    if folder.startswith("/proc"):  # kernel interfaces, not storage; root-only where writable
        subfolders.clear()
    elif os.access(folder, os.W_OK):
        writable.append(folder)
print(json.dumps({{"wrote": wrote, "writable": writable, "work": os.getcwd()}}))
"""
    report = _report(jailed.run(program))
    assert all(f == "/tmp" or f.startswith("/tmp/") for f in report["writable"]), report  # the scratch tmpfs only
    assert "/tmp" in report["wrote"] and report["work"] in report["wrote"]  # the probe could write where it may
    persisted = [f for f in (*HOST_FOLDERS, report["work"]) if os.path.lexists(os.path.join(f, marker))]
    for folder in persisted:  # an escape must not leave litter behind for the next run to trip on
        os.unlink(os.path.join(folder, marker))
    assert persisted == []


def test_total_writes_are_capped_by_the_quota(jailed: Sandbox) -> None:
    """Escape c: 1.2 GB reached the host's /tmp in 2.5 s; the work folder and /tmp share disk_mb."""
    program = """
import errno, json, os
mib, error = 0, None
for folder in (".", "/tmp"):
    try:
        while True:
            with open(os.path.join(folder, f"{mib}.bin"), "wb") as fh:
                fh.write(b"x" * 2**20)
            mib += 1
    except OSError as exc:
        error = errno.errorcode[exc.errno]
print(json.dumps({"mib": mib, "error": error}))
"""
    report = _report(jailed.run(program))
    quota = jailed.isolation["disk_quota_mb"]
    assert quota == JAILED.disk_mb
    assert quota // 2 <= report["mib"] <= quota and report["error"] == "ENOSPC", report
    assert jailed.run(program).passed  # the next run starts with the whole quota again


@pytest.mark.parametrize("ending", ["import os\nos._exit(0)\n", "assert False, 'the tests fail'\n"],
                         ids=["early-exit", "failing-test"])
def test_forged_passed_lines_fail(sandbox: Sandbox, ending: str) -> None:
    """Escape d: a PASSED line built from the runner's frames was scored as passing."""
    result = sandbox.run(FORGE + ending)
    assert result.status == "failed"
    assert "PASSED" in result.output  # the forgery happened; it decided nothing
    assert sandbox.run("assert 1 + 1 == 2\n").passed


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-only"])
def test_unprivileged_run(guard: bool) -> None:
    """Escape e: without root the sandbox was untested; as `nobody` (or the user running the tests)."""
    programs = {
        "pass": "assert 1 + 1 == 2\n", "fail": "assert 1 + 1 == 3\n", "early exit": "import os\nos._exit(0)\n",
        "forged": FORGE + "import os\nos._exit(0)\n",
    }
    request = json.dumps({"limits": {"python_guard": guard}, "programs": programs})
    helper = Path(__file__).with_name("unprivileged_sandbox.py")
    done = subprocess.run([sys.executable, str(helper)], input=request, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["euid"] != 0
    assert report["isolation"] == {
        "pid_namespace": False, "network_namespace": False, "ipc_namespace": False, "mount_namespace": False,
        "proc": "host", "disk_quota_mb": None, "dedicated_uid": False, "python_guard": guard, "workers": 1,
    }
    assert {name: status for name, (status, _) in report["results"].items()} == {
        "pass": "passed", "fail": "failed", "early exit": "failed", "forged": "failed",
    }
