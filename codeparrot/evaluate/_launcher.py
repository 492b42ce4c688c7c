"""Sandbox launcher: isolates a process tree, then execs the program's interpreter. Never imported.

`sandbox.Sandbox` runs `python -I -S -B _launcher.py SPEC_JSON` in a new session. Every layer is best
effort and reported on the report fd as `LAYERS {...}`; the parent decides whether that is enough.

1. pid (root): unshare(CLONE_NEWPID) and fork. The child is init of the new namespace: it reaps every
   orphan, and when it exits the kernel kills and reaps whatever the program left (fork bombs included),
   so nothing outlives a run. This launcher stays outside, relays the exit status, and on SIGTERM kills
   init. (PID 1 of some containers never reaps orphans; without this they would pile up as zombies.)
2. network: unshare(CLONE_NEWNET): only a downed loopback, so every connect fails, 127.0.0.1 included.
3. filesystem (root): unshare(CLONE_NEWNS), private propagation; empty read-only tmpfs over the
   world-writable folders (/tmp, /var/tmp, /dev/shm) and over the first folder on the interpreter's path
   that others cannot enter (/root for a pyenv build); the interpreter prefix is bound back read-only and
   the work folder read-write, each at its own path.
4. identity (root): a forked worker drops to the dedicated uid/gid of the spec with no supplementary
   groups, so RLIMIT_NPROC counts only this sandbox's tasks and file permissions apply.
5. rlimits, hard ones included so the program cannot raise them: CPU, AS, NPROC, FSIZE, NOFILE, CORE.
6. exec the interpreter (`-I -S -B`) with the runner source, a whitelisted environment, cwd = work.
Stdlib only, no `codeparrot` import: it must start fast under `-I -S`.
"""

import ctypes
import json
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
LAUNCH_FAILED = 125  # as env(1) and chroot(1) use it: the harness failed, not the program


def main() -> None:
    spec = json.loads(sys.argv[1])
    report_fd = spec["report_fd"]
    with open(spec["runner"], encoding="utf-8") as fh:  # read while still privileged
        runner = fh.read()
    layers = {"pid": None, "network": None, "filesystem": None, "uid": None}
    libc = ctypes.CDLL(None, use_errno=True)
    is_root = os.geteuid() == 0
    can_unshare = spec["namespaces"] and hasattr(libc, "unshare")
    if can_unshare and is_root and libc.unshare(CLONE_NEWPID) == 0:
        child = os.fork()
        if child:
            _relay(child, report_fd)
        layers["pid"] = "namespace"
    if can_unshare and libc.unshare(CLONE_NEWNET) == 0:
        layers["network"] = "namespace"
    if can_unshare and is_root and libc.unshare(CLONE_NEWNS) == 0:
        _private_mounts(libc, spec["prefix"], spec["work_dir"])  # half-done would hide the interpreter: raise
        layers["filesystem"] = "namespace"
    if layers["pid"]:
        worker = os.fork()
        if worker:
            _init(worker, report_fd)
    uid = spec.get("uid")
    if is_root and uid is not None and (layers["filesystem"] or _blocked_ancestor(spec["prefix"]) is None):
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            layers["uid"] = uid
        except OSError:  # a user namespace that does not map the uid: carry on and report it
            pass
    for name, (soft, hard) in spec["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.write(report_fd, ("LAYERS " + json.dumps(layers) + "\n").encode())
    python = spec["python"]
    os.chdir(spec["work_dir"])
    guard = "1" if spec["python_guard"] else "0"
    os.execve(python, [python, "-I", "-S", "-B", "-c", runner, str(report_fd), guard], spec["env"])


def _exit_like(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)  # killed by signal N: 128 + N, as shells report it


def _relay(child: int, report_fd: int) -> None:
    """Outside the pid namespace: wait for its init; SIGTERM (the parent's timeout) kills it."""
    os.close(report_fd)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    _, status = os.waitpid(child, 0)
    _exit_like(status)


def _init(worker: int, report_fd: int) -> None:
    """Init of the pid namespace: reap everything; leave with the worker's status (the kernel kills the rest)."""
    os.close(report_fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(LAUNCH_FAILED)
        if pid == worker:
            _exit_like(status)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    args = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _blocked_ancestor(path: str) -> str | None:
    """The first folder on `path` that others may not enter, if any."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def _private_mounts(libc: ctypes.CDLL, prefix: str, work: str) -> None:
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    # Open both before anything is covered; binding /proc/self/fd/N reaches them afterwards.
    keep = [(prefix, True), (work, False)]
    fds = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path, _ in keep]
    covers = [d for d in WORLD_WRITABLE if os.path.isdir(d) and not os.path.islink(d)]
    blocked = _blocked_ancestor(prefix)
    if blocked:
        covers.append(blocked)
    covers = [c for c in covers if not any(_under(c, other) for other in covers)]
    for cover in covers:
        _mount(libc, "tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for (path, readonly), fd in zip(keep, fds, strict=True):
        if any(_under(path, c) for c in covers):
            os.makedirs(path, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
            if readonly:
                _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        os.close(fd)
    for cover in covers:
        _mount(libc, None, cover, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=755,size=1m")


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # the parent reads the reason from the output
        sys.stderr.write(f"sandbox launch failed: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(LAUNCH_FAILED)
