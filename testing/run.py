"""Run the zpatch CLI as its own process, fast. The crash tests run zpatch hundreds of times (once per
kill point, and again to recover); a fresh `python -m zimage_patcher.cli` spends most of its ~0.1 s
starting Python and importing. Here each run is forked from a small server that has zpatch imported
already (one per test process, single-threaded, so forking it is safe). A run is still a real
process: its own pid, environment, working directory, locks and exit status, killed by a real SIGKILL
at its kill point.

Tests that only read the output use the in-process CliRunner (tests/conftest.py); tests that need
exec-time effects (setuid, rlimits, strace, inherited pipes) use subprocess."""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile

_SERVER = r'''
import json, os, signal, sys
from zimage_patcher import durable, git
from zimage_patcher.cli import main
requests, replies = sys.stdin.buffer, sys.stdout.buffer
for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY),
                                    (2, req["err"], os.O_WRONLY)):
                new = os.open(path, flags)
                os.dup2(new, fd)
                os.close(new)
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            durable.configure()
            git._TRACE = bool(os.environ.get("ZPATCH_TRACE"))
            sys.argv = ["zpatch", *req["args"]]
            code = 0
            try:
                main(req["args"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    replies.write(b"%d\n" % os.waitstatus_to_exitcode(status))
    replies.flush()
'''

_server: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        atexit.register(_server.kill)
    return _server


def zpatch(*args, env: dict | None = None, cwd=None, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """`zpatch ARGS` in its own process, with ENV (default: this process's) and ZPATCH_TEST_KILL_AT set
    to KILL_AT. Returns what subprocess.run would (returncode -9 when killed)."""
    env = dict(os.environ if env is None else env)
    env.pop("ZPATCH_TEST_KILL_AT", None)
    if kill_at is not None:
        env["ZPATCH_TEST_KILL_AT"] = str(kill_at)
    args = [str(a) for a in args]
    server = _start()
    with tempfile.TemporaryDirectory(prefix="zpatch-run-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        for p in (out, err):
            open(p, "wb").close()
        req = {"args": args, "env": env, "cwd": str(cwd or os.getcwd()), "out": out, "err": err}
        server.stdin.write(json.dumps(req).encode() + b"\n")
        server.stdin.flush()
        reply = server.stdout.readline()
        if not reply:
            raise RuntimeError("the zpatch test server died")
        with open(out, encoding="utf-8", errors="replace") as f, open(err, encoding="utf-8", errors="replace") as g:
            return subprocess.CompletedProcess(["zpatch", *args], int(reply), f.read(), g.read())


def follow(command: str, cwd, env: dict) -> subprocess.CompletedProcess:
    """Run a command line that zpatch printed, literally, in a shell: ENV (the world's git config) on
    top of this environment, zpatch as installed first on PATH, and CWD as the home folder (where hints
    save edits)."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(command, shell=True, cwd=cwd, env={**os.environ, **env, "PATH": path, "HOME": str(cwd)},
                          capture_output=True, text=True)
