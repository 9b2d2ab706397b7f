"""The one way zpatch locks: flock on a file, which the kernel releases when the holder dies (a
killed run never leaves a stale lock, unlike git's index.lock). Each lock is named by what it guards:
  checkout(zdir)      a ComfyUI checkout (apply, unapply, edit): <git-dir>/zpatch/lock
  overlay(path)       the overlay's files (export, lock, rebase): a file in zpatch's cache
  mirror(path)        one cache mirror (fetches), waited for rather than refused
  folder(fd)          a folder `zpatch checkout` is filling, or `models fetch` fills
The holder's pid is written into the file for the message of the one that has to wait."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import Exit, ZpatchError


class Exclusive:
    def __init__(self, path: Path, busy=None):
        """BUSY(pid) builds the error for a lock already held; None: wait for the holder instead."""
        self.path, self.busy, self.fd = path, busy, None

    def __enter__(self) -> "Exclusive":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if self.busy else 0))
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise self.busy(holder)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)     # closing releases the flock


def another(pid: str, what: str = "zpatch") -> str:
    """'another zpatch (pid N)'; without the pid when the holder has not written it yet."""
    return f"another {what} (pid {pid})" if pid.isdigit() else f"another {what}"


def mirror(path: Path) -> Exclusive:
    return Exclusive(Path(str(path) + ".lock"))


def checkout(zdir: Path, where: Path) -> Exclusive:
    return Exclusive(zdir / "lock", lambda pid: ZpatchError(
        f"{where}: {another(pid)} is working on this checkout", Exit.BUSY,
        hint="wait for it to finish, then rerun"))


def overlay(path: Path, root: Path) -> Exclusive:
    return Exclusive(path, lambda pid: ZpatchError(
        f"{root}: {another(pid)} is writing this overlay", Exit.BUSY,
        hint="wait for it to finish, then rerun (a rebase stopped at a conflict: zpatch rebase --continue, "
             "--skip or --abort)"))


def folder(fd: int, dest: Path, busy=None) -> None:
    """Hold the folder open at FD (released when FD is closed or the process dies); nothing is created
    in it. BUSY() builds the error for a folder already held (default: a checkout filling it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise (busy() if busy else ZpatchError(f"{dest}: another zpatch checkout is filling it", Exit.BUSY,
               hint="wait for it, then `zpatch status` it; or choose another directory")) from None
