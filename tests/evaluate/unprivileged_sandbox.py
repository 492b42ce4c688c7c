"""Run programs in a Sandbox as an unprivileged user; print its isolation and verdicts as JSON.

`python tests/evaluate/unprivileged_sandbox.py < {"limits": {...}, "programs": {name: source}}`, used by
test_sandbox. Started as root, it first makes the interpreter reachable by `nobody` in a private mount
namespace (a pyenv build under /root is not: /root is 0700), then drops to uid/gid 65534 for good, and
only then imports the sandbox; started as another user it runs the sandbox as that user.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    args = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def _closed_folder(path: str) -> tuple[str, str] | None:
    """The first folder on `path` that others may not enter, and its child on the way to `path`."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        folder = os.path.join(*parts[: i + 1])
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder, os.path.join(folder, parts[i + 1])
    return None


def drop_to_nobody() -> None:
    """Cover each closed folder on the way to the interpreter, the venv and the repo with an open tmpfs."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.executable, REPO)}
    closed = {c for c in map(_closed_folder, paths) if c is not None}
    keep = {child: os.open(child, os.O_PATH) for _, child in closed}  # before anything is covered
    for folder in {f for f, _ in closed}:
        _mount(libc, "tmpfs", folder, "tmpfs", 0, "mode=755,size=64k")
    for child, fd in keep.items():
        os.makedirs(child, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}", child, None, MS_BIND | MS_REC, None)
        os.close(fd)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def main() -> None:
    request = json.load(sys.stdin)
    if os.geteuid() == 0:
        drop_to_nobody()
    sys.path.insert(0, str(REPO))
    from codeparrot.evaluate.config import SandboxLimits
    from codeparrot.evaluate.sandbox import Sandbox

    with Sandbox(SandboxLimits(**request["limits"]), workers=1) as sb:
        results = {name: [r.status, r.detail] for name, r in ((n, sb.run(p)) for n, p in request["programs"].items())}
        print(json.dumps({"euid": os.geteuid(), "isolation": sb.isolation, "results": results}))


if __name__ == "__main__":
    main()
