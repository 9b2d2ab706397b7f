"""Where the test run puts its scratch files: in RAM (/dev/shm) when that is safe and roomy.

A run's scratch files are about 1.5 GB and 150,000 files, each written, often synced, and deleted. On a
disk mounted with `discard` (this project's machines), every delete also waits for the device, and that
was a fifth of the suite's time (perf: unlinkat -> ext4_free_blocks -> blkdev_issue_discard). Where
TMPDIR is not set, the run puts them on /dev/shm, when that is a tmpfs this user may write and run
programs from, with room to spare; as git's own test suite does with `--root` on a tmpfs. The files,
their syncs and the kills are as real there: a kill does not depend on the medium, and
tests/test_durability.py reads the order of syncs off the system calls. TMPDIR=/tmp keeps it on disk.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from pathlib import Path

RAM_NEEDED = 4 << 30
# What a killed zpatch leaves at the top of the folder (its tempfile.mkdtemp folders) is removed by a
# later run once it is this old: no live run keeps one of them for a day.
STALE_AFTER_S = 24 * 3600


def choose(env: dict | None = None, *, shm: str = "/dev/shm", mounts: str = "/proc/self/mounts",
           meminfo: str = "/proc/meminfo", needed: int = RAM_NEEDED, uid: int | None = None) -> str | None:
    """A folder of this user's under SHM for the run's scratch files, or None (stay in TMPDIR): TMPDIR
    unset in ENV, SHM a tmpfs (per MOUNTS) that is writable and allows running programs, NEEDED bytes
    free there and in MemAvailable (per MEMINFO), and the folder one this user made and no one else
    may write (it is in a shared, world-writable place: another user could have put a link there)."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if env.get("TMPDIR") or not sys.platform.startswith("linux"):
        return None
    try:
        table = [line.split() for line in Path(mounts).read_text().splitlines()]
        if not any(m[1:3] == [shm, "tmpfs"] for m in table if len(m) > 2):
            return None
        st = os.statvfs(shm)
        avail = next(int(line.split()[1]) << 10 for line in Path(meminfo).read_text().splitlines()
                     if line.startswith("MemAvailable:"))
        if st.f_flag & (os.ST_RDONLY | os.ST_NOEXEC) or min(st.f_bavail * st.f_frsize, avail) < needed:
            return None
        folder = os.path.join(shm, f"zpatch-tests-{uid}")
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(folder)          # lstat: a link someone put there is refused, not followed
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
            return None
        return folder
    except (OSError, ValueError, StopIteration):
        return None


def sweep(folder: str, *, now: float | None = None, stale_after: float = STALE_AFTER_S) -> list[str]:
    """Remove what killed zpatch processes left at the top of FOLDER (their `zpatch-*` temporary
    folders) once older than STALE_AFTER seconds; pytest's own folders are pytest's to clean. Returns
    the names removed. Never follows a link."""
    now = time.time() if now is None else now
    gone = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return gone
    for e in entries:
        try:
            if not e.name.startswith("zpatch-") or not e.is_dir(follow_symlinks=False):
                continue
            if now - e.stat(follow_symlinks=False).st_mtime < stale_after:
                continue
        except OSError:
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        gone.append(e.name)
    return sorted(gone)
