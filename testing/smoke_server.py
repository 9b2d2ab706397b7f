"""The smoke interpreter, started once per test process: a fork server with torch and the other
third-party packages of the smoke imported already. A smoke run (harness.py, tests/smoke/probe.py)
spends ~4 s of its ~5 s starting Python and importing torch, torchvision, transformers and scipy;
about twenty-five tests run one, so they share that import here and fork from it instead.

`start(python, folder)` starts the server under PYTHON and writes FOLDER/bin/python, a small
executable that stands for PYTHON: give it to the runner as the smoke Python. For
`python SCRIPT.py ARGS` it hands its argv, environment, working directory and stdin/stdout/stderr
(the descriptors themselves, over a Unix socket) to the server, which forks a process that runs the
script as `python SCRIPT.py` would: sys.argv and sys.path[0] the script's, the caller's environment
(PYTHONPATH and PYTHONUNBUFFERED honoured), its own stdio, atexit handlers and exit status (a signal
that kills the run kills the stand-in with it). Anything else (`-c`, `-m`, options) execs PYTHON
itself, as does a stand-in whose server is gone.

Still a real process with real torch and real ComfyUI: only modules outside the checkout are
imported in advance (never ComfyUI or ComfyUI-GGUF, so each run imports the checkout it is given,
pristine or patched). What the preloaded packages read once at import time (e.g. OMP_NUM_THREADS)
is the server's environment, not the run's; the smoke sets none of it.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

# What harness.py, probe.py and ComfyUI import from outside the checkout (SMOKE_MODULES first:
# a server that cannot import them says so, and the tests skip with that reason).
SMOKE_MODULES = ("torch", "numpy", "gguf", "sentencepiece", "safetensors")
# MODULE:NAME also gets NAME from it (transformers imports its classes on first use).
PRELOAD = SMOKE_MODULES + ("torchvision", "torchvision.ops", "scipy", "scipy.stats", "einops", "einops.layers.torch",
                           "yaml", "PIL.Image", "PIL.PngImagePlugin", "torchsde", "av", "psutil", "tqdm",
                           "tokenizers", "huggingface_hub", "sympy", "safetensors.torch", "gguf.gguf_reader",
                           "google.protobuf.text_format", "sentencepiece.sentencepiece_model_pb2", "transformers",
                           *(f"transformers:{name}" for name in ("CLIPTokenizer", "T5TokenizerFast", "T5Config",
                                                                 "LlamaTokenizerFast", "Qwen2Tokenizer", "Qwen2Config",
                                                                 "ByT5Tokenizer", "BertTokenizer")))

_CLIENT = r'''#!{python} -IS
# The smoke Python of this test process, served by {server} (testing/smoke_server.py).
import json, os, signal, socket, sys
PYTHON, SOCKET = {python!r}, {socket!r}
args = sys.argv[1:]
if not args or args[0].startswith("-") or not args[0].endswith(".py"):
    os.execv(PYTHON, [PYTHON, *args])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(SOCKET)
except OSError:
    os.execv(PYTHON, [PYTHON, *args])
body = json.dumps({{"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [len(body).to_bytes(8, "big")], [0, 1, 2])
s.sendall(body)
reply = b""
while chunk := s.recv(64):
    reply += chunk
if not reply:
    sys.exit("smoke server: the run ended without a status")
status = int(reply)
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status))
'''


class Server:
    def __init__(self, proc: subprocess.Popen, python: Path):
        self.proc, self.python = proc, python

    def stop(self) -> None:
        self.proc.stdin.close()            # the server exits at EOF on its stdin
        self.proc.wait(timeout=60)


def start(python: str, folder: Path) -> Server:
    """Start the server under PYTHON, listening in FOLDER; raise RuntimeError naming what it could not
    import when PYTHON lacks one of SMOKE_MODULES."""
    folder.mkdir(parents=True, exist_ok=True)
    sock, log = folder / "smoke.sock", folder / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([python, __file__, "serve", str(sock)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    ready = proc.stdout.readline().strip()
    if ready != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(ready or f"smoke server under {python} exited {proc.returncode}: "
                                    f"{log.read_text()[-2000:]}")
    stand_in = folder / "bin" / "python"
    stand_in.parent.mkdir(exist_ok=True)
    real = os.path.abspath(python)       # not realpath: a venv's python links out of the venv
    stand_in.write_text(_CLIENT.format(python=real, socket=str(sock), server=Path(__file__).name))
    stand_in.chmod(0o755)
    return Server(proc, stand_in)


# ------------------------------------------------------------------------------------------------
# the server side, run under the smoke Python


def _serve(sock_path: str) -> None:
    import importlib
    for name in SMOKE_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:   # noqa: BLE001 - the tests skip with this line
            print(f"smoke python {sys.executable} lacks one of {', '.join(SMOKE_MODULES)}: "
                  f"{name}: {type(e).__name__}: {e}", flush=True)
            return
    for entry in PRELOAD:
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
    _serve(sys.argv[2])
