"""Hold a real zpatch process at a named point of its run (durable.fault_point(NAME)) for as long as a
test needs, with pipes, not sleeps: the process writes a byte when it gets there and waits for one
back. A process that ends before the point is reported with its stderr."""
from __future__ import annotations

import os
import subprocess
import sys


def zpatch_cmd(overlay, *args) -> list[str]:
    return [sys.executable, "-m", "zimage_patcher.cli", args[0], "--overlay", str(overlay), *map(str, args[1:])]


class Held:
    """CMD, started and now waiting at POINT. release() lets it go on and returns how it ended."""

    def __init__(self, cmd: list[str], point: str, env: dict | None = None, cwd=None):
        reached_r, reached_w = os.pipe()
        self._go_r, self._go_w = os.pipe()
        full = {**os.environ, **(env or {}), "ZPATCH_TEST_PAUSE": f"{point}:{reached_w}:{self._go_r}"}
        self.proc = subprocess.Popen(cmd, env=full, cwd=cwd, pass_fds=(reached_w, self._go_r),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(reached_w)
        os.close(self._go_r)
        try:
            got = os.read(reached_r, 1)      # EOF when the process ended without reaching the point
        finally:
            os.close(reached_r)
        if got != b"p":
            out, err = self.proc.communicate()
            os.close(self._go_w)
            raise AssertionError(f"{' '.join(cmd[2:4])} ended (exit {self.proc.returncode}) before reaching "
                                 f"{point}: {err.strip()[-600:]}")

    def release(self) -> subprocess.CompletedProcess:
        try:
            os.write(self._go_w, b"g")
        except BrokenPipeError:
            pass
        os.close(self._go_w)
        out, err = self.proc.communicate(timeout=300)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def __enter__(self) -> "Held":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.release()
