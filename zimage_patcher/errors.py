"""The one error type of zpatch and its documented exit codes (the help text and README table
are generated from EXIT_HELP; a test keeps the README in step)."""
from __future__ import annotations

import enum
import errno
import os
import re
import signal
from pathlib import Path


class Exit(enum.IntEnum):
    OK = 0
    FINDINGS = 1        # check/status/export --check/refresh/drift found something to act on (like `git diff --exit-code`)
    USAGE = 2           # bad command line (click's own code)
    BAD_OVERLAY = 3     # upstream.lock, series or a patch file is malformed, tampered or hostile
    BAD_CHECKOUT = 4    # the target checkout is missing, not a repository, off its pin, or dirty
    CONFLICT = 5        # a patch does not apply
    UNREACHABLE = 6     # an upstream URL (or the cache with --offline) cannot provide the commit
    SMOKE_FAILED = 7    # the smoke generation ran and failed
    ENVIRONMENT = 8     # a tool zpatch needs (git, python for the smoke) is missing or broken
    INTERNAL = 9        # a bug in zpatch: an unexpected exception (never "found something")
    BUSY = 10           # another zpatch holds this checkout's lock (or another git one of its lock files)
    UPSTREAMED = 11     # drift: a patch is no longer needed (upstream has it, or its probe fired)
    FILESYSTEM = 12     # the file system refused a write: full, over quota, permission denied, read-only
    GIT_REFUSED = 13    # git ran and refused an operation for a reason of its own (its message follows)
    INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT
    TERMINATED = 143    # SIGTERM, as shells report it (128 + 15)


EXIT_HELP = {
    Exit.OK: "success, or nothing to do",
    Exit.FINDINGS: ("`check`, `status` or `export --check` found something to act on, `refresh` left changes out "
                    "(it says which and why); `drift`: upstream moved and the series carries forward"),
    Exit.USAGE: "bad command line",
    Exit.BAD_OVERLAY: "overlay invalid: `upstream.lock`, a series, a patch or `models.toml` malformed, tampered or "
                      "hostile (also a damaged `.zpatch-models.json` in a models folder)",
    Exit.BAD_CHECKOUT: "checkout invalid: missing, not a repository, off its pin, user changes in the way, "
                       "or its zpatch record damaged",
    Exit.CONFLICT: "a patch does not apply (`rebase`, `drift`: a conflict on the new upstream commit; `refresh`: an "
                   "edit no single patch owns, or a later patch in its way)",
    Exit.UNREACHABLE: "an upstream cannot be reached (or, with `--offline`, is not cached)",
    Exit.SMOKE_FAILED: "the smoke generation failed (`drift --smoke`: on the rebased series)",
    Exit.ENVIRONMENT: "a required tool (git, the smoke Python) is missing or failed; a model file's size or "
                      "sha256 is not the one pinned",
    Exit.INTERNAL: "internal error in zpatch (a bug: please report it with the message)",
    Exit.BUSY: "another zpatch is working on the same checkout, verify folder or models folder (or a rebase is in "
              "progress, or another git holds a lock there); retry when it has finished",
    Exit.UPSTREAMED: "`drift`: a patch is no longer needed (upstream has it, or its Obsolete-If probe fired)",
    Exit.FILESYSTEM: "the file system refused: disk full, permission denied or read-only (the message names the path)",
    Exit.GIT_REFUSED: "git refused an operation (its message follows)",
    Exit.INTERRUPTED: ("interrupted (Ctrl-C); an interrupted apply is rolled back by the next command, and each "
                       "command's hint says its own way on; a signal after the work is done leaves the exit code the "
                       "command reported"),
    Exit.TERMINATED: "terminated (SIGTERM); as 130",
}


class ZpatchError(Exception):
    """A failure the user can act on: a one-line message, an exit code, an optional hint.

    `details` carries structured data for --json output (for example every failing hunk).
    The exit code has no default: every raise site says which promise was broken.
    """

    def __init__(self, message: str, exit_code: Exit, hint: str | None = None, details: dict | None = None):
        message = " ".join(message.split("\n")).strip()     # one line, whatever a quoted input held
        super().__init__(message)
        self.message = message
        self.exit_code = Exit(exit_code)
        self.hint = hint
        self.details = details or {}

    def to_json(self) -> dict:
        return {"error": self.message, "exit_code": int(self.exit_code), "hint": self.hint,
                "details": self.details}


class Terminated(BaseException):
    """SIGTERM, raised by the CLI's handler at whatever the process was doing, so every `finally` and
    every temp-file cleanup runs. A BaseException, like KeyboardInterrupt: no `except Exception` swallows it."""


# ---------------------------------------------------------------- the file system refused

SPACE_HINT = "free some space on that file system, then rerun: the interrupted run is rolled back by the next command"
SIZE_HINT = ("raise the file size limit (`ulimit -f`) or use a file system that holds larger files, then rerun: "
             "the interrupted run is rolled back by the next command")
# errno -> (kind, what the message says)
_FILESYSTEM = {
    errno.ENOSPC: ("space", "no space left on device"),
    errno.EDQUOT: ("space", "no space left: disk quota exceeded"),
    errno.EFBIG: ("size", "no space left for it: file too large for the file size limit or the file system"),
    errno.EACCES: ("permission", "permission denied"),
    errno.EPERM: ("permission", "permission denied (operation not permitted)"),
    errno.EROFS: ("read-only", "read-only file system"),
}


def _filesystem_hint(kind: str, path: object | None) -> str:
    it = path if path is not None else "the path git names"
    if path is not None and kind in ("permission", "read-only") and not os.path.lexists(path):
        it = Path(path).parent       # a file it could not create: the folder is what refused
    if kind == "space":
        return SPACE_HINT
    if kind == "size":
        return SIZE_HINT
    if kind == "permission":
        return (f"give this user access to {it} (or run zpatch as its owner), then rerun: "
                "an interrupted run is rolled back by the next command")
    return (f"{it} is on a read-only file system: remount it read-write or work on a copy elsewhere, then rerun "
            "(`zpatch status` works read-only)")


def from_oserror(e: OSError, what: str | None = None, *, path: object | None = None,
                 code: Exit = Exit.BAD_CHECKOUT, hint: str | None = None,
                 otherwise: ZpatchError | None = None) -> ZpatchError:
    """The one place an OSError becomes an exit code. The file system refusing (full: ENOSPC, EDQUOT,
    EFBIG; refused: EACCES, EPERM, EROFS) is FILESYSTEM whatever zpatch was doing, with a hint naming
    the fix. Anything else (ENOENT, ENOTDIR, ENAMETOOLONG...) is about the path the user gave: OTHERWISE
    when the caller built its own error, else CODE with HINT. The message is "PATH: WHAT (cause)";
    PATH defaults to e.filename."""
    path = path if path is not None else e.filename
    head = f"{path}: " if path is not None else ""
    fs = _FILESYSTEM.get(e.errno)
    if fs is not None:
        kind, cause = fs
        details = {"path": None if path is None else str(path), "errno": errno.errorcode.get(e.errno, str(e.errno))}
        return ZpatchError(f"{head}{what} ({cause})" if what else f"{head}{cause}", Exit.FILESYSTEM,
                           hint=_filesystem_hint(kind, path), details=details)
    if otherwise is not None:
        return otherwise
    reason = e.strerror or str(e)
    return ZpatchError(f"{head}{what} ({reason})" if what else f"{head or 'a path: '}{reason}", code, hint=hint)


# ---------------------------------------------------------------- git failed

# git could not take a lock file another process holds: "Unable to create '/r/.git/index.lock': File exists."
_GIT_LOCK = re.compile(r"Unable to create '([^'\n]+\.lock)': File exists")
# the file system refused git (the strerror git appends, or its own words for EACCES on objects);
# "Permission denied (publickey)" is ssh refusing a key, not the file system
_GIT_FILESYSTEM = re.compile(r"(No space left on device|Disk quota exceeded|File too large)|"
                             r"(Permission denied(?! \(|,)|Operation not permitted|insufficient permission)|"
                             r"(Read-only file system)")
# git itself is broken or too old: a helper or a subcommand missing, a library it cannot load
_GIT_BROKEN = re.compile(r"is not a git command|unable to find remote helper|error while loading shared libraries")


def classify_git(args: list[str], cwd, returncode: int, stderr: str) -> tuple[Exit, str, str | None]:
    """Why `git ARGS` failed in CWD, as (exit code, one-line message, hint): a lock another git process
    holds is BUSY (the hint names the lock file), the file system refusing is FILESYSTEM, a git that
    crashed or is broken is ENVIRONMENT, anything else is GIT_REFUSED with git's own last line."""
    i = 0                      # the subcommand and what follows, not the `-c key=value` options before it
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-c", "-C") else 1
    sub = " ".join(args[i:i + 2]) or " ".join(args[:2])
    where = f" in {cwd}" if cwd else f" into {args[-1]}" if args and args[0] == "clone" else ""
    text = stderr or ""
    m = _GIT_LOCK.search(text)
    if m:
        lock = Path(m.group(1))
        if not lock.is_absolute() and cwd:
            lock = Path(cwd) / lock
        s = str(lock)
        repo = cwd if cwd else (s.split("/.git/")[0] if "/.git/" in s else lock.parent)
        return (Exit.BUSY, f"{lock}: held by another git process (git {sub}{where} could not take it)",
                f"another git process is running in {repo}; if none is, remove {lock}")
    for line in reversed(text.splitlines()):
        if line.lstrip().startswith("remote:"):
            continue                  # a server's own words ("remote: Permission denied to ..."), not our disk
        fs = _GIT_FILESYSTEM.search(line)
        if fs:
            kind = ("size" if "File too large" in line else "space") if fs.group(1) else \
                "permission" if fs.group(2) else "read-only"
            return Exit.FILESYSTEM, f"git {sub} failed{where}: {line.strip()}", _filesystem_hint(kind, None)
    if returncode == -signal.SIGXFSZ:     # a write past the file size limit: the kernel's EFBIG, as a signal
        return (Exit.FILESYSTEM, f"git {sub}{where} was stopped: no space left for a file it wrote, which grew "
                                 "past the file size limit (SIGXFSZ)", SIZE_HINT)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return (Exit.ENVIRONMENT, f"git {sub} was killed by {name}{where}",
                "git crashed or was killed: check the git installation (git --version), then rerun")
    if _GIT_BROKEN.search(text) or returncode in (126, 127):
        return (Exit.ENVIRONMENT, f"git {sub} failed{where}: {last_line(stderr)}",
                "git is broken or too old: install git 2.25 or newer")
    return (Exit.GIT_REFUSED, f"git {sub} failed{where}: {last_line(stderr)}",
            "git refused for the reason it gives; -v shows its whole message")


def git_cause(args: list[str], cwd, returncode: int, stderr: str) -> ZpatchError | None:
    """For a caller that ran git with check=False and words git's refusal itself: the error to raise
    instead when the cause was not git's refusal but a held lock (BUSY), the file system (FILESYSTEM) or
    a broken git (ENVIRONMENT); None when git refused for a reason of its own.
        raise errors.git_cause(args, repo, r.returncode, r.stderr) or ZpatchError(...)"""
    code, message, hint = classify_git(args, cwd, returncode, stderr)
    if code == Exit.GIT_REFUSED:
        return None
    return ZpatchError(message, code, hint=hint, details={"git_args": list(args), "returncode": returncode,
                                                          "stderr": (stderr or "")[-4000:]})


class GitError(ZpatchError):
    """git itself failed; keeps the command line and git's stderr for --json and bug reports. Its exit
    code says why (classify_git): BUSY, FILESYSTEM, ENVIRONMENT or GIT_REFUSED."""

    def __init__(self, args: list[str], cwd, returncode: int, stderr: str):
        code, message, hint = classify_git(args, cwd, returncode, stderr)
        super().__init__(message, code, hint=hint,
                         details={"git_args": list(args), "returncode": returncode, "stderr": stderr[-4000:]})


def last_line(text: str, default: str = "(no message)") -> str:
    """The last non-empty line of a tool's output: where git and pip put the reason."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else default
