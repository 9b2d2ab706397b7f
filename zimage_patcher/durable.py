"""Writes that survive a kill or a power cut (temp, fsync, rename, folder fsync), and the points
where the test suite may kill or pause a run. Below git.py and worktree.py: both use it."""
from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from .errors import Exit, ZpatchError

# Fault injection for the test suite, read once; unset (always, for users) a point costs a compare.
#   ZPATCH_TEST_KILL_AT=N      SIGKILL this process at the Nth point, as a power cut or an OOM kill would
#   ZPATCH_TEST_PAUSE=NAME:W:R at the point named NAME, write one byte to fd W and wait for one on fd R
#                              (the test holds the run there, at its worst moment, for as long as it likes)
_KILL_AT: str | None = None
_PAUSE: str | None = None
_points = 0


def configure(environ=os.environ) -> None:
    """Read the fault-injection settings (at import; again in a process forked from a test's server)."""
    global _KILL_AT, _PAUSE, _points
    _KILL_AT, _PAUSE, _points = environ.get("ZPATCH_TEST_KILL_AT"), environ.get("ZPATCH_TEST_PAUSE"), 0


configure()


def fault_point(name: str | None = None) -> None:
    """Mark a write point (numbered in the order a run reaches them); NAME also makes it a pause point."""
    global _points
    if _KILL_AT is None and _PAUSE is None:
        return
    _points += 1
    if _KILL_AT is not None and _points == int(_KILL_AT):
        os.kill(os.getpid(), signal.SIGKILL)
    if name is not None:
        pause_point(name)


def pause_point(name: str) -> None:
    """Where a test may hold the run (ZPATCH_TEST_PAUSE=NAME:...); not one of the numbered kill points."""
    if _PAUSE is not None:
        want, w, r = _PAUSE.rsplit(":", 2)
        if want == name:
            os.write(int(w), b"p")
            os.read(int(r), 1)


def _fsync(path, flags: int) -> bool:
    """fsync PATH opened with FLAGS (never through a symlink); False when it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | flags)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def sync_dirs(paths) -> None:
    """fsync each folder in PATHS that exists: a rename or unlink inside it survives a power cut only
    once its folder is synced (rename(2) orders nothing on disk by itself)."""
    for path in sorted(set(map(str, paths))):
        _fsync(path, os.O_DIRECTORY)


def sync_files(paths) -> None:
    """fsync each file in PATHS that exists, then the folders that hold them."""
    held = {Path(path).parent for path in paths if _fsync(path, 0)}
    sync_dirs([*held, *(p.parent for p in held)])


def fill_and_rename(fd: int, tmp: Path, path: Path, data: bytes, *, sync: bool = True,
                    mode: int | None = None) -> None:
    """Write DATA to FD (the temp file TMP, opened by the caller), give it MODE, sync it, close it and
    rename it over PATH. An exception (a full disk, Ctrl-C, SIGTERM) removes TMP before it goes on,
    and an OSError names PATH (a write on a descriptor names no file)."""
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mode is not None:
                os.fchmod(fd, mode)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        fault_point()
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise


def write_atomic(path: Path, data: bytes, *, sync: bool = True, sync_folder: bool | None = None) -> None:
    """Temp, fsync, rename, never through a symlink: readers see the old bytes or the new.
    SYNC: also durable across a power cut once it returns (the file, then its folder; SYNC_FOLDER
    False leaves the folder to a caller that writes many files there and syncs it once).
    An exception (a full disk, Ctrl-C, SIGTERM) removes the temp file before it goes on."""
    tmp = path.with_name(path.name + ".tmp")
    if os.path.lexists(tmp):
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise ZpatchError(f"{tmp}: is in the way of zpatch's temporary file", Exit.BAD_CHECKOUT,
                              hint="move it away, then rerun")
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    fill_and_rename(fd, tmp, path, data, sync=sync)
    if sync if sync_folder is None else sync_folder:
        sync_dirs([path.parent])
    fault_point()
