"""A Python interpreter with modules imported already, for programs a test process runs many times: a
fork server, and executables that stand in for the programs (testing/smoke_server.py serves the smoke
interpreter with torch; testing/drift_job.py serves `zpatch`, and the fakes of `gh` and of the smoke,
to the workflow's steps). testing/run.py does the same for the crash tests' zpatch runs, through files.

A stand-in hands its argv, environment, working directory and stdin/stdout/stderr (the descriptors
themselves, over a Unix socket) to the server, which forks a process that runs the script as
`python SCRIPT ARGS` would: sys.argv and sys.path[0] the script's, the caller's environment
(PYTHONPATH, PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE honoured), its own stdio, atexit handlers and
exit status; a signal that kills the run kills the stand-in with it, and a stand-in killed takes its
run with it. A stand-in whose server is gone execs the interpreter itself.

Each run is still a real process of its own. Only what a module reads once when it is imported (an
environment variable, say) comes from the server's start, not from the run: a server preloads
modules that read nothing of the kind, or its script reads it again (testing/zpatch_main.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys


class Server:
    def __init__(self, proc, python: str, sock: str):
        self.proc, self.python, self.sock = proc, python, sock

    def program(self, path, script: str | None = None):
        """Write PATH (a Path), an executable that stands in for the server's interpreter, or with SCRIPT
        for the program `python SCRIPT` (a console script); returns PATH."""
        import shlex
        path.parent.mkdir(parents=True, exist_ok=True)
        client = [self.python, "-IS", __file__, "client", self.sock, *(["--script", script] if script else [])]
        path.write_text(f"#!/bin/sh\n# served by {__file__}\nexec {shlex.join(client)} \"$@\"\n")
        path.chmod(0o755)
        return path

    def stop(self) -> None:
        self.proc.stdin.close()            # the server exits at EOF on its stdin
        self.proc.wait(timeout=60)


def start(python: str, folder, *, required=(), preload=(), env: dict | None = None) -> Server:
    """Start a server under PYTHON with its socket in FOLDER (a Path, short enough for a socket path).
    REQUIRED modules must import (else RuntimeError, naming the one that did not); PRELOAD ones are
    imported if they can be, `MODULE:NAME` also getting NAME from MODULE (a package that imports on
    first use). ENV: the server's environment (default: this process's)."""
    import subprocess
    folder.mkdir(parents=True, exist_ok=True)
    sock, log = folder / "server.sock", folder / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([python, __file__, "serve", str(sock), json.dumps([list(required), list(preload)])],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    ready = proc.stdout.readline().strip()
    if ready != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(ready or f"fork server under {python} exited {proc.returncode}: {log.read_text()[-2000:]}")
    return Server(proc, os.path.abspath(python), str(sock))    # not realpath: a venv's python links out of it


# ------------------------------------------------------------------------------------------------
# the stand-in's side, run with -IS (the standard library only, no site: it starts in ~10 ms)


def _client(sock_path: str, args: list[str]) -> None:
    if args[:1] == ["--script"]:
        args = args[1:]                                         # [SCRIPT, ARGS...]: a console script
    elif not args or args[0].startswith("-") or not args[0].endswith(".py"):
        os.execv(sys.executable, [sys.executable, *args])       # not a script: the interpreter itself
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        body = json.dumps({"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(s, [len(body).to_bytes(8, "big")], [0, 1, 2])
        s.sendall(body)
    except OSError:                                             # the server is gone: the interpreter itself
        os.execv(sys.executable, [sys.executable, *args])
    reply = b""
    while chunk := s.recv(64):
        reply += chunk
    if not reply:
        sys.exit("fork server: the run ended without a status")
    status = int(reply)
    if os.WIFSIGNALED(status):                                  # killed: so is the stand-in, by the same signal
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


# ------------------------------------------------------------------------------------------------
# the server side


def _serve(sock_path: str, required: list[str], preload: list[str]) -> None:
    import importlib
    import select
    for name in required:
        try:
            importlib.import_module(name)
        except Exception as e:   # noqa: BLE001 - the caller reports this line (the smoke tests skip with it)
            print(f"python {sys.executable} lacks one of {', '.join(required)}: {name}: {type(e).__name__}: {e}",
                  flush=True)
            return
    for entry in preload:
        module, _, name = entry.partition(":")
        try:
            mod = importlib.import_module(module)
            if name:
                getattr(mod, name)
        except Exception:        # noqa: BLE001 - optional: the run imports it (or fails) itself
            pass
    import gc
    gc.collect()
    gc.freeze()                  # fewer pages copied into each forked run
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv.bind(sock_path)
    srv.listen(16)
    signal.signal(signal.SIGCHLD, _reap)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stderr.flush()
    while True:
        readable, _, _ = select.select([srv, sys.stdin], [], [])
        if sys.stdin in readable:                     # the test process is done (or gone)
            return
        conn, _ = srv.accept()
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            srv.close()
            code = 1
            try:
                _supervise(conn)
                code = 0
            finally:
                os._exit(code)
        conn.close()


def _reap(*_) -> None:
    """Wait for the supervisors that ended (their CPU time then counts in the test process's)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _supervise(conn: socket.socket) -> None:
    """One run: receive it, fork it, kill it if the stand-in goes away, send back its wait status."""
    import select
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    req = json.loads(_recv_exactly(conn, int.from_bytes(head, "big")))
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run(req, fds)                       # never returns
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    readable, _, _ = select.select([conn, pidfd], [], [])
    if conn in readable and pidfd not in readable:   # the stand-in was killed: so is its run
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    try:
        conn.sendall(str(status).encode())
    except OSError:
        pass


def _stdio(unbuffered: bool) -> None:
    """New sys.stdin/stdout/stderr over descriptors 0-2, buffered as a fresh interpreter's would be."""
    import io
    enc = sys.stdout.encoding if sys.stdout else "utf-8"

    def out(fd, errors):
        if unbuffered:
            return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=enc, errors=errors,
                                    write_through=True)
        return io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding=enc,
                                errors=errors, line_buffering=fd == 2 or os.isatty(fd))
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=enc)
    sys.stdout = sys.__stdout__ = out(1, "strict")
    sys.stderr = sys.__stderr__ = out(2, "backslashreplace")


def _run(req: dict, fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        old_pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        script, *_ = req["argv"]
        pythonpath = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        base = [p for p in sys.path if p not in old_pythonpath]
        sys.path[:] = [os.path.dirname(os.path.realpath(script)), *pythonpath, *base]
        sys.argv = list(req["argv"])
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        _stdio(bool(os.environ.get("PYTHONUNBUFFERED")))
        import runpy
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:    # noqa: BLE001 - as the interpreter does: the traceback, exit 1
            import traceback
            traceback.print_exc()
            code = 1
        import atexit
        import threading
        threading._shutdown()    # noqa: SLF001 - what the interpreter does at exit: join non-daemon threads
        atexit._run_exitfuncs()  # noqa: SLF001
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:    # noqa: BLE001
                pass
        os._exit(code & 0xFF)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    sys.path.pop(0)              # this file's folder (testing/) is nothing the runs may import from
    _serve(sys.argv[2], *json.loads(sys.argv[3]))
elif __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    _client(sys.argv[2], sys.argv[3:])
