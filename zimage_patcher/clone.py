"""`zpatch checkout`: every upstream cloned at its pin into a new folder, from the cache (hard links,
no network when the cache is warm)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from . import cache, git, locks, worktree
from .errors import Exit, ZpatchError
from .patchset import Overlay


_MISSING = re.compile(r"unable to read sha1 file of (.+?) \(")


def checkout(ov: Overlay, dest: Path, *, offline: bool = False, exclude: list[str] | None = None,
             progress: bool = False) -> dict:
    """Clone every upstream at its pin into DEST from the cache (hard links, no network when warm)."""
    dest = Path(dest)
    for e in exclude or []:
        try:
            worktree.rel_parts(e)
        except ZpatchError:
            raise ZpatchError(f"--exclude {e!r}: must be a relative path inside the checkout", Exit.USAGE)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ZpatchError(f"{dest}: already exists and is not empty", Exit.BAD_CHECKOUT,
                          hint=f"apply to it with `zpatch apply {dest}`, or choose a new directory")
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ZpatchError(f"{dest}: cannot create it ({e.strerror})", Exit.BAD_CHECKOUT,
                          hint="choose a destination in a writable directory")
    try:
        locks.folder(dest_fd, dest)       # two checkouts into one folder: one wins
        return _checkout_locked(ov, dest, created, offline, exclude, progress)
    finally:
        os.close(dest_fd)


def _checkout_locked(ov: Overlay, dest: Path, created: bool, offline: bool, exclude: list[str] | None,
                     progress: bool) -> dict:
    if any(dest.iterdir()):   # filled by a run that held the lock before us
        raise ZpatchError(f"{dest}: already exists and is not empty", Exit.BAD_CHECKOUT,
                          hint=f"apply to it with `zpatch apply {dest}`, or choose a new directory")
    try:
        mirrors = {s.upstream.name: cache.ensure(s.upstream.url, s.upstream.commit, offline=offline,
                                                 progress=progress) for s in ov.series}
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    result = {"checkout": str(dest), "upstreams": [], "missing_objects": [], "partial": []}
    try:
        # Parents first: the custom node's clone lands inside the ComfyUI work tree.
        for s in sorted(ov.series, key=lambda s: s.upstream.path.count("/") + (s.upstream.path != ".")):
            up = s.upstream
            repo = dest / up.path
            repo.parent.mkdir(parents=True, exist_ok=True)
            git.run(["clone", "--no-checkout", "--quiet", str(mirrors[up.name]), str(repo)])
            git.run(["remote", "set-url", "origin", up.url], cwd=repo)
            mine = [e[len(up.path) + 1:] if up.path != "." else e for e in exclude or []
                    if up.path == "." or e.startswith(up.path + "/")]
            if mine:
                known = git.tree_blobs(repo, up.commit, mine)
                unknown = [m for m in mine if m not in known and not git.run(
                    ["ls-tree", "-d", up.commit, "--", m.rstrip("/")], cwd=repo).stdout.strip()]
                if unknown:
                    raise ZpatchError(f"--exclude {unknown[0]}: no such path in {up.name} at {up.commit[:12]}",
                                      Exit.USAGE, hint="name a file or folder of the upstream")
                git.run(["sparse-checkout", "set", "--no-cone", "/*", *[f"!/{m}" for m in mine]], cwd=repo)
                absent = [m for m, blob in known.items()
                          if not git.run(["cat-file", "-e", blob], cwd=repo, check=False).ok]
                if absent:
                    # A source that lacks these blobs makes this a partial clone, and git commits over
                    # a missing blob only in a promisor repository with the path out of the work tree:
                    # say so, as a blobless clone does, so that edit mode and plain commits work.
                    git.run(["config", "remote.origin.promisor", "true"], cwd=repo)
                    git.run(["config", "remote.origin.partialclonefilter", "blob:none"], cwd=repo)
                    result["partial"] += [f"{up.path}/{m}" if up.path != "." else m for m in absent]
            r = git.run(["checkout", "--quiet", "--detach", up.commit], cwd=repo, check=False)
            missing = _MISSING.findall(r.stderr)
            if not r.ok and not missing:
                raise ZpatchError(f"git checkout {up.commit[:12]} failed in {repo}: {r.last_line()}",
                                  Exit.ENVIRONMENT)
            result["missing_objects"] += [f"{up.path}/{m}" if up.path != "." else m for m in missing]
            result["upstreams"].append({"name": up.name, "path": up.path, "commit": up.commit,
                                        "url": up.url, "excluded": mine})
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in list(dest.iterdir()):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise
    return result
