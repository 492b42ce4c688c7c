"""The sandbox: HumanEval's canonical solutions pass, wrong ones fail, hostile programs fail within limits.

Hostile programs run twice: with the Python guard (the default) and without it, where only the OS layers
(namespaces, dedicated uid, rlimits) stand between the program and the machine.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from codeparrot.evaluate.config import SandboxLimits
from codeparrot.evaluate.humaneval import check_program, load_problems
from codeparrot.evaluate.sandbox import LAUNCH_GRACE_S, TERM_GRACE_S, Sandbox, SandboxError

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
    assert set(guarded.isolation) >= {"pid_namespace", "network_namespace", "mount_namespace", "dedicated_uid"}
    assert guarded.isolation["python_guard"] is True
    if os.geteuid() == 0:
        assert len(guarded.uids) == guarded.workers


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule concerns root, whom RLIMIT_NPROC does not bind")
def test_root_never_runs_unguarded_without_a_dedicated_uid() -> None:
    # Without namespaces an interpreter under a private home (e.g. /root/.pyenv) cannot run as another uid.
    try:
        with Sandbox(SandboxLimits(namespaces=False, python_guard=False), workers=1) as sb:
            assert sb.isolation["dedicated_uid"] is True
    except SandboxError as exc:
        assert "turn the guard on" in str(exc)
