"""A cache of bare upstream repositories, shared by every checkout and guarded by a file lock."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from . import git
from .errors import Exit, ZpatchError
from . import locks

# Fail fast on a dead or crawling network instead of hanging a CI job for minutes.
_NET_ENV = {"GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "20"}


def cache_home() -> Path:
    """Everything zpatch keeps outside a checkout and an overlay (upstream repositories, the smoke venv
    and models, the last internal error's traceback): $ZPATCH_CACHE, else zimage-patcher/ in the XDG
    cache directory. One setting moves it all."""
    if os.environ.get("ZPATCH_CACHE"):
        return Path(os.environ["ZPATCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zimage-patcher"


def cache_root() -> Path:
    """Where the bare upstream repositories live."""
    return cache_home() / "repos"


def mirror_path(url: str) -> Path:
    """A readable folder name per URL; long URLs keep a prefix plus a hash (file names stop at 255)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"^[a-z+]+://", "", url)).strip("_.") or "repo"
    if len(slug) > 100:
        slug = slug[:80] + "-" + hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_root() / f"{slug}.git"


def _unreachable(url: str, err: str) -> ZpatchError:
    last = (err.strip().splitlines() or ["no answer"])[-1]
    return ZpatchError(
        f"cannot reach {url}: {last}", Exit.UNREACHABLE,
        hint=(f"point git at a mirror (git config --global url.<mirror>.insteadOf {url}) "
              "or rerun with --offline to use the cache only"))


def ensure(url: str, commit: str, *, offline: bool = False, progress: bool = False) -> Path:
    """A bare mirror of URL in the cache that holds COMMIT; fetch only when it is missing."""
    path = mirror_path(url)
    if path.is_dir() and git.has_commit(path, commit):
        return path          # warm: no lock, no network
    if offline:
        raise ZpatchError(f"commit {commit[:12]} of {url} is not in the cache ({path})", Exit.UNREACHABLE,
                          hint="run once without --offline to fill the cache")
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.mirror(path):   # the warm path above needs no lock
        if not path.is_dir():
            tmp = path.with_name(path.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            # git's own progress meter when a person watches; captured (for the error) otherwise
            show = progress and sys.stderr.isatty()
            if progress:
                print(f"Caching {url} in {path} (first use; later checkouts are local)", file=sys.stderr)
            r = git.run(["clone", "--bare", "--progress" if show else "--quiet", url, str(tmp)],
                        check=False, env=_NET_ENV, timeout=1800, stream_stderr=show)
            if not r.ok:
                shutil.rmtree(tmp, ignore_errors=True)
                raise _unreachable(url, r.stderr)
            tmp.rename(path)
        if git.has_commit(path, commit):
            return path
        r = git.run(["fetch", "--quiet", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                    cwd=path, check=False, env=_NET_ENV, timeout=1800)
        if not r.ok:
            raise _unreachable(url, r.stderr)
        if not git.has_commit(path, commit):
            r = git.run(["fetch", "--quiet", url, commit], cwd=path, check=False, env=_NET_ENV, timeout=1800)
            if not git.has_commit(path, commit):
                raise ZpatchError(f"{url} has no commit {commit}", Exit.UNREACHABLE,
                                  hint="check the pin in upstream.lock")
    return path



def resolve(url: str, pin: str, ref: str, *, offline: bool = False) -> tuple[Path, str]:
    """REF (a commit id, a tag, a branch, or origin/<branch>) of URL as a commit id, with a mirror
    that holds it. Unless OFFLINE, the mirror's branches and tags are brought up to date first."""
    path = ensure(url, pin, offline=offline)
    if not offline:
        with locks.mirror(path):
            r = git.run(["fetch", "--quiet", "--prune", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                        cwd=path, check=False, env=_NET_ENV, timeout=1800)
        if not r.ok:
            raise _unreachable(url, r.stderr)
    name = ref[len("origin/"):] if ref.startswith("origin/") else ref
    for candidate in (f"refs/heads/{name}", f"refs/tags/{name}", name):
        commit = git.rev_parse(path, candidate)
        if commit:
            return path, commit
    raise ZpatchError(f"{ref}: no such commit, branch or tag in {url}", Exit.USAGE,
                      hint=f"list them with: git ls-remote {url}")
