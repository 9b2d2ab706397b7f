"""The only module that runs git. Everything else asks it, so tests and errors see one seam."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import Exit, ZpatchError

# Stable output regardless of the user's locale; the user's global config stays in force
# on purpose, because `url.<mirror>.insteadOf` is how offline mirrors are plugged in.
_ENV = {"LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0"}
_TRACE = bool(os.environ.get("ZPATCH_TRACE"))


class GitResult:
    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _git_exe() -> str:
    exe = shutil.which("git")
    if exe is None:
        raise ZpatchError("git is not installed or not on PATH", Exit.ENVIRONMENT,
                          hint="install git 2.25 or newer")
    return exe


def run(args: list[str], cwd: Path | str | None = None, *, check: bool = True,
        input: str | bytes | None = None, env: dict | None = None, timeout: float | None = None,
        stream_stderr: bool = False) -> GitResult:
    """Run `git ARGS` in CWD; raise ZpatchError on failure when `check`.

    stream_stderr lets git's own progress meter reach the terminal (clones, fetches).
    """
    full_env = dict(os.environ)
    full_env.update(_ENV)
    if env:
        full_env.update(env)
    text = not isinstance(input, bytes)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [_git_exe(), *args], cwd=cwd, input=input, env=full_env, timeout=timeout,
            stdout=subprocess.PIPE, stderr=None if stream_stderr else subprocess.PIPE,
            text=text, errors="surrogateescape" if text else None)
    except subprocess.TimeoutExpired:
        raise ZpatchError(f"git {' '.join(args[:2])} timed out after {timeout:.0f}s", Exit.UNREACHABLE,
                          hint="check the network or use a url.<mirror>.insteadOf mirror")
    if _TRACE:   # ZPATCH_TRACE=1: every git call and its cost, like GIT_TRACE
        print(f"zpatch: git {' '.join(args)}  ({(time.perf_counter() - t0) * 1000:.1f} ms, rc {proc.returncode})",
              file=sys.stderr)
    out = proc.stdout if text else proc.stdout.decode("utf-8", "surrogateescape")
    err = proc.stderr or ""
    if not text and isinstance(err, bytes):
        err = err.decode("utf-8", "surrogateescape")
    result = GitResult(proc.returncode, out, err)
    if check and not result.ok:
        msg = (err.strip().splitlines() or ["(no message)"])[-1]
        raise ZpatchError(f"git {' '.join(args[:3])} failed in {cwd}: {msg}", Exit.ENVIRONMENT)
    return result


def toplevel(path: Path) -> Path | None:
    """The work tree root that git would act on for PATH, or None when PATH is in no repository."""
    r = run(["rev-parse", "--show-toplevel"], cwd=path, check=False)
    return Path(r.stdout.strip()).resolve() if r.ok else None


def git_dir(path: Path) -> Path:
    r = run(["rev-parse", "--absolute-git-dir"], cwd=path)
    return Path(r.stdout.strip())


def head(path: Path) -> str | None:
    r = run(["rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=path, check=False)
    return r.stdout.strip() if r.ok else None


def has_commit(repo: Path, commit: str) -> bool:
    return run(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, check=False).ok


def tree_blobs(repo: Path, rev: str, paths: list[str]) -> dict[str, str]:
    """Blob ids of PATHS at REV (paths absent at REV are left out)."""
    out = run(["ls-tree", "-z", "--full-tree", rev, "--", *paths], cwd=repo).stdout if paths else ""
    blobs = {}
    for entry in out.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            blobs[path] = meta.split()[2]
    return blobs


def changed_paths(repo: Path, paths: list[str] | None = None) -> dict[str, str]:
    """Tracked paths whose work tree or index differs from HEAD, and untracked ones, with their
    two-letter porcelain status. Restricted to PATHS when given."""
    args = ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"]
    if paths is not None:
        if not paths:
            return {}
        args += ["--", *paths]
    out = run(args, cwd=repo).stdout
    result = {}
    for entry in out.split("\0"):
        if entry:
            result[entry[3:]] = entry[:2]
    return result


def apply(repo: Path, patch_files: list[Path], *, reverse: bool = False, three_way: bool = False) -> GitResult:
    """`git apply` the PATCH_FILES in order as one atomic step (git applies all or none).

    Zero fuzz: git apply refuses a hunk whose full context does not match (no -C).
    """
    args = ["apply", "--whitespace=nowarn"]
    if reverse:
        args.append("--reverse")
    if three_way:
        args.append("--3way")
    args += [str(p) for p in patch_files]
    return run(args, cwd=repo, check=False)


def hash_object_bytes(data: bytes) -> str:
    """git's blob id of DATA, computed here to spare a process (the re-apply fast path)."""
    import hashlib
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def show_blob(repo: Path, rev: str, path: str, env: dict | None = None) -> bytes | None:
    """The exact bytes of PATH at REV ("" for the index), CRLF intact; None when absent."""
    r = run(["cat-file", "blob", f"{rev}:{path}"], cwd=repo, check=False, env=env, input=b"")
    return r.stdout.encode("utf-8", "surrogateescape") if r.ok else None
