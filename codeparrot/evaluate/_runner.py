"""Sandbox runner: the program's interpreter runs this source (`python -I -S -B -c`). Never imported.

It reads the program from stdin, closes stdin, installs the Python-level guard, executes the program, and
exits with the status given as its first argument (`REACHED_END`, not 0) only when the program ran to its
end: a program that raises, calls `sys.exit(0)` or `os._exit(0)` before its tests finish does not pass.
This process holds no secret and no channel to the harness (the launcher closed the report fd before
exec): how it exits is all the verdict is read from, and only the launcher's processes relay it.
"""

import os
import sys
import traceback

# Events that start processes, signal others, reach the network or load native code: always denied.
DENIED = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
    "resource.setrlimit", "resource.prlimit",
})
# Events whose path arguments (by position) must lie inside the work folder.
PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
}
BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
AF_UNIX = 1  # Linux value; socketpair() (asyncio's self-pipe) stays allowed, connects do not


def install_guard(root: str) -> None:
    """An audit hook (PEP 578) that the program cannot remove: defence in depth, not the boundary."""
    realpath, join, getcwd, fsdecode, sep = os.path.realpath, os.path.join, os.getcwd, os.fsdecode, os.sep

    def inside(path: object) -> bool:
        if isinstance(path, int):  # a descriptor the program already holds
            return True
        full = realpath(join(getcwd(), fsdecode(path)))  # type: ignore[arg-type]
        return full == root or full.startswith(root + sep)

    def hook(event: str, args: tuple) -> None:
        if event in DENIED:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, _mode, flags = args
            if path is not None and (flags or 0) & WRITE_FLAGS and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the work folder is not allowed")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the work folder is not allowed")
        elif event == "import" and args[0].partition(".")[0] in BLOCKED_IMPORTS:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "socket.__new__" and len(args) > 1 and args[1] != AF_UNIX:
            raise PermissionError("sandbox: network sockets are not allowed")

    sys.addaudithook(hook)


def main() -> None:
    reached_end, guard = int(sys.argv[1]), sys.argv[2] == "1"
    source = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["program"]
    try:
        code = compile(source, "<program>", "exec")
        if guard:
            install_guard(os.path.realpath(os.getcwd()))
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exc:
        sys.stdout.flush()
        sys.stderr.write(f"SystemExit({exc.code!r}): the program exited before its tests finished\n")
        sys.stderr.flush()
        os._exit(1)
    except BaseException:  # every failure is a verdict, reported on stderr
        sys.stdout.flush()
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(reached_end)


main()
