"""File writes inside a checkout that never follow a symlink: every path component below the root
is checked with lstat, and every write is temp-and-rename in the real directory, so a kill leaves
either the old or the new bytes, never half a file."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from . import git, paths
from .durable import fault_point, fill_and_rename
from .errors import Exit, ZpatchError, from_oserror

TMP_SUFFIX = ".zpatch-tmp"


def rel_parts(rel: str) -> tuple[str, ...]:
    if paths.unsafe(rel):
        raise ZpatchError(f"{rel!r}: not a safe relative path", Exit.BAD_CHECKOUT,
                          hint="the zpatch record or overlay names a path outside the checkout")
    return PurePosixPath(rel).parts


def check_path(root: Path, rel: str) -> Path:
    """ROOT/REL after refusing a symlink (or a non-directory parent) at any component below ROOT."""
    parts = rel_parts(rel)
    cur = root
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return root.joinpath(*parts)
        except OSError as e:
            raise from_oserror(e, "cannot be read", path=cur, code=Exit.BAD_CHECKOUT)
        if stat.S_ISLNK(st.st_mode):
            raise ZpatchError(f"{cur}: is a symlink; zpatch never writes through one", Exit.BAD_CHECKOUT,
                              hint="replace the symlink with the real directory or file, then rerun")
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ZpatchError(f"{cur}: is not a directory", Exit.BAD_CHECKOUT,
                              hint="move it away, then rerun")
        if last and not stat.S_ISREG(st.st_mode):
            raise ZpatchError(f"{cur}: is not a regular file", Exit.BAD_CHECKOUT,
                              hint="move it away, then rerun")
    return cur


def read(root: Path, rel: str) -> bytes | None:
    path = check_path(root, rel)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def blob_id(root: Path, rel: str) -> str | None:
    data = read(root, rel)
    return None if data is None else git.hash_object_bytes(data)


def write(root: Path, rel: str, data: bytes, *, executable: bool = False) -> list[str]:
    """Write DATA to ROOT/REL by temp-and-rename; keeps an existing file's permissions.
    Returns the directories it had to create (relative to ROOT), parents first."""
    target = check_path(root, rel)
    created = []
    parts = rel_parts(rel)
    d = root
    for part in parts[:-1]:
        d = d / part
        if not d.exists():
            d.mkdir()
            created.append(d.relative_to(root).as_posix())
    try:
        keep = stat.S_IMODE(os.lstat(target).st_mode)
    except FileNotFoundError:
        keep = None
    tmp = target.with_name(f"{target.name}{TMP_SUFFIX}-{os.getpid()}")
    if os.path.lexists(tmp):      # a killed run with our pid left it; never open through whatever sits there
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise ZpatchError(f"{tmp}: is in the way of zpatch's temporary file", Exit.BAD_CHECKOUT,
                              hint="move it away, then rerun")
        os.unlink(tmp)
    # a new file gets 0666/0777 minus the umask, as git gives it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o777 if executable else 0o666)
    fill_and_rename(fd, tmp, target, data, mode=keep)
    fault_point()
    return created


def remove(root: Path, rel: str, *, prune: bool = True) -> None:
    """Remove ROOT/REL; with PRUNE, also the parent folders it leaves empty below ROOT (git does so)."""
    target = check_path(root, rel)
    target.unlink(missing_ok=True)
    fault_point()
    if prune:
        parts = rel_parts(rel)
        remove_empty_dirs(root, ["/".join(parts[:i]) for i in range(1, len(parts))])


def drop_temp(root: Path, rel: str) -> None:
    """Remove the temp files interrupted writes left next to REL (recovery, under the lock): regular
    files named REL's name + TMP_SUFFIX-<pid>, of any pid (a killed recovery leaves its own), nothing
    else."""
    target = check_path(root, rel)
    pattern = re.compile(re.escape(target.name + TMP_SUFFIX) + r"-\d+")
    try:
        names = os.listdir(target.parent)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if pattern.fullmatch(name):
            tmp = target.with_name(name)
            try:
                if stat.S_ISREG(os.lstat(tmp).st_mode):
                    tmp.unlink()
            except FileNotFoundError:
                pass


def _real_dir(root: Path, rel: str) -> Path | None:
    """ROOT/REL when it and every folder on the way is a real directory (no symlink); else None."""
    cur = root
    for part in rel_parts(rel):
        cur = cur / part
        try:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                return None
        except OSError:
            return None
    return cur


def remove_empty_dirs(root: Path, dirs: list[str]) -> None:
    """Remove DIRS (relative to ROOT) that are empty, deepest first; never through a symlink."""
    for rel in sorted(set(dirs), key=lambda d: -len(rel_parts(d))):
        path = _real_dir(root, rel)
        if path is not None and not any(path.iterdir()):
            path.rmdir()


def remove_pyc(root: Path, rel_dir: str, stem: str) -> str | None:
    """Delete the bytecode Python wrote for module STEM in ROOT/REL_DIR/__pycache__ (a derived cache,
    safe to lose); returns that cache folder (relative) for sweeping, or None."""
    cache = f"{rel_dir}/__pycache__" if rel_dir else "__pycache__"
    path = _real_dir(root, cache)
    if path is None:
        return None
    for pyc in path.glob(f"{stem}.*.pyc"):
        if stat.S_ISREG(os.lstat(pyc).st_mode):
            pyc.unlink()
    return cache
