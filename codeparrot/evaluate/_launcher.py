"""Sandbox launcher: isolates a process tree, then execs the program's interpreter. Never imported.

`sandbox.Sandbox` runs `python -I -S -B _launcher.py SPEC_JSON` in a new session, the program on stdin.
Every layer is best effort and reported on the report fd as `LAYERS {...}`; the parent decides whether
that is enough. The program never holds the report fd (it is closed before exec) and writes nothing the
verdict is read from: the verdict is its process's exit status, relayed by the processes below, which
run only this file.

1. pid (root): unshare(CLONE_NEWPID) and fork. The child is init of the new namespace: it reaps every
   orphan, and when it exits the kernel kills and reaps whatever the program left (fork bombs included),
   so nothing outlives a run. This launcher stays outside, relays the exit status, and on SIGTERM kills
   init. (PID 1 of some containers never reaps orphans; without this they would pile up as zombies.)
2. network and ipc: unshare(CLONE_NEWNET), unshare(CLONE_NEWIPC): only a downed loopback, so every connect
   fails, 127.0.0.1 included; System V shared memory and message queues die with the namespace.
3. filesystem (root): unshare(CLONE_NEWNS), private propagation, then a new root on an empty tmpfs
   (read-only once built) that holds only what the interpreter needs, bound read-only: /usr and the
   /bin, /lib* links or folders, the interpreter's prefix; /dev with null, zero, random and urandom;
   /proc, a fresh procfs of the new pid namespace (or an empty folder when there is none: never the
   host's); and one tmpfs of `disk_mb`, mounted on /tmp and holding the work folder, the only place the
   program can write. Everything else of the host (/run, /home, /root, /var, /etc, /sys, ...) is absent,
   and what the program writes lives in memory and dies with the namespace. The root is entered by
   chroot, not pivot_root, on purpose: the kernel refuses a chrooted process a user namespace, the one
   way an unprivileged program could mount a tmpfs of its own and escape the quota.
4. identity (root): a forked worker drops to the dedicated uid/gid of the spec with no supplementary
   groups, so RLIMIT_NPROC counts only this sandbox's tasks and file permissions apply; no_new_privs,
   so no setuid binary gives privileges back.
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
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_NO_NEW_PRIVS = 38
LAUNCH_FAILED = 125  # as env(1) and chroot(1) use it: the harness failed, not the program
# What the interpreter needs from the host: the usual top-level links into /usr (or folders, pre-merge).
RUNTIME = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEVICES = ("null", "zero", "random", "urandom")
# The scratch tmpfs holds files, not many: 4096 inodes bound the kernel memory empty files could take.
SCRATCH_INODES = 4096


def main() -> None:
    spec = json.loads(sys.argv[1])
    report_fd = spec["report_fd"]
    with open(spec["runner"], encoding="utf-8") as fh:  # read while still privileged
        runner = fh.read()
    layers = {"pid": None, "network": None, "ipc": None, "filesystem": None, "proc": "host", "disk_mb": None,
              "uid": None}
    libc = ctypes.CDLL(None, use_errno=True)
    is_root = os.geteuid() == 0
    wanted = set(spec["namespaces"]) if hasattr(libc, "unshare") else set()
    if "pid" in wanted and is_root and libc.unshare(CLONE_NEWPID) == 0:
        child = os.fork()
        if child:
            _relay(child, report_fd)
        layers["pid"] = "namespace"
    if "network" in wanted and libc.unshare(CLONE_NEWNET) == 0:
        layers["network"] = "namespace"
    if "ipc" in wanted and libc.unshare(CLONE_NEWIPC) == 0:
        layers["ipc"] = "namespace"
    uid = spec.get("uid")
    work = spec["work_dir"]
    if "mount" in wanted and is_root and libc.unshare(CLONE_NEWNS) == 0:
        # Half-done would leave the interpreter out of reach: raise, and the parent retries without.
        _enter_new_root(libc, spec, private_proc=layers["pid"] is not None)
        layers["filesystem"] = "namespace"
        layers["proc"] = "private" if layers["pid"] else "hidden"
        layers["disk_mb"] = spec["disk_mb"]
    if layers["pid"]:
        worker = os.fork()
        if worker:
            _init(worker, report_fd)
    if is_root and uid is not None and (layers["filesystem"] or _blocked_ancestor(spec["prefix"]) is None):
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            layers["uid"] = uid
        except OSError:  # a user namespace that does not map the uid: carry on and report it
            pass
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for name, (soft, hard) in spec["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.write(report_fd, ("LAYERS " + json.dumps(layers) + "\n").encode())
    os.close(report_fd)  # the program gets no channel to the harness but its exit status and output
    python = spec["python"]
    os.chdir(work)
    guard = "1" if spec["python_guard"] else "0"
    os.execve(python, [python, "-I", "-S", "-B", "-c", runner, str(spec["reached_end"]), guard], spec["env"])


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


def _bind_readonly(libc: ctypes.CDLL, source: str, target: str) -> None:
    """Bind one mount's subtree (not the mounts below it) read-only, without setuid or devices."""
    _mount(libc, source, target, None, MS_BIND, None)
    _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _blocked_ancestor(path: str) -> str | None:
    """The first folder on `path` that others may not enter, if any."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _enter_new_root(libc: ctypes.CDLL, spec: dict, *, private_proc: bool) -> None:
    """Build the new root on a tmpfs over the (private) work folder, then chroot into it."""
    work, uid = spec["work_dir"], spec.get("uid")
    os.umask(0o022)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    root = work  # the host's work folder is only a mount point now; the program never writes there
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m,nr_inodes=1024")

    def inside(path: str) -> str:
        return root + path

    bound = []
    for name in RUNTIME:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), inside(host))
        elif os.path.isdir(host):
            os.mkdir(inside(host))
            _bind_readonly(libc, host, inside(host))
            bound.append(host)
    for path in sorted({spec["prefix"], os.path.dirname(spec["python"])}, key=len):  # a folder before its children
        if not any(_under(path, b) for b in bound):
            os.makedirs(inside(path))
            _bind_readonly(libc, path, inside(path))
            bound.append(path)
    os.mkdir(inside("/dev"))
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(inside("/dev/" + name), "wb").close()
            _mount(libc, "/dev/" + name, inside("/dev/" + name), None, MS_BIND, None)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, inside("/dev/" + name))
    os.mkdir(inside("/proc"))  # stays an empty folder without a pid namespace: the host's would leak
    if private_proc:  # this process is init of the new pid namespace: the procfs shows only its tree
        _mount(libc, "proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.mkdir(inside("/tmp"))
    _mount(libc, "tmpfs", inside("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"mode=1777,size={spec['disk_mb']}m,nr_inodes={SCRATCH_INODES}")
    if _under(work, "/tmp"):
        scratch = inside(work)
        os.makedirs(scratch)
    else:  # a work folder elsewhere (TMPDIR) is a folder of the same tmpfs, bound at its usual path
        scratch = inside("/tmp/work")
        os.mkdir(scratch)
        os.makedirs(inside(work))
        _mount(libc, scratch, inside(work), None, MS_BIND, None)
    os.chmod(scratch, 0o700)
    if uid is not None:
        os.chown(scratch, uid, uid)
    _mount(libc, None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.chroot(root)
    os.chdir("/")


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # the parent reads the reason from the output
        sys.stderr.write(f"sandbox launch failed: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(LAUNCH_FAILED)
