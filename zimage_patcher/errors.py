"""The one error type of zpatch and its documented exit codes (the help text and README table
are generated from EXIT_HELP; a test keeps the README in step)."""
from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0
    FINDINGS = 1        # check/status/drift found something to act on (like `git diff --exit-code`)
    USAGE = 2           # bad command line (click's own code)
    BAD_OVERLAY = 3     # upstream.lock, series or a patch file is malformed, tampered or hostile
    BAD_CHECKOUT = 4    # the target checkout is missing, not a repository, off its pin, or dirty
    CONFLICT = 5        # a patch does not apply
    UNREACHABLE = 6     # an upstream URL (or the cache with --offline) cannot provide the commit
    SMOKE_FAILED = 7    # the smoke generation ran and failed
    ENVIRONMENT = 8     # a tool zpatch needs (git, python for the smoke) is missing or broken
    INTERNAL = 9        # a bug in zpatch: an unexpected exception (never "found something")
    BUSY = 10           # another zpatch holds this checkout's lock
    UPSTREAMED = 11     # drift: a patch is no longer needed (upstream has it, or its probe fired)
    INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT


EXIT_HELP = {
    Exit.OK: "success, or nothing to do",
    Exit.FINDINGS: "`check` or `status` found something to act on; `drift`: upstream moved and the series carries forward",
    Exit.USAGE: "bad command line",
    Exit.BAD_OVERLAY: "overlay invalid: `upstream.lock`, a series or a patch malformed, tampered or hostile",
    Exit.BAD_CHECKOUT: "checkout invalid: missing, not a repository, off its pin, user changes in the way, "
                       "or its zpatch record damaged",
    Exit.CONFLICT: "a patch does not apply (`rebase`, `drift`: a conflict on the new upstream commit)",
    Exit.UNREACHABLE: "an upstream cannot be reached (or, with `--offline`, is not cached)",
    Exit.SMOKE_FAILED: "the smoke generation failed (`drift --smoke`: on the rebased series)",
    Exit.ENVIRONMENT: "a required tool (git, the smoke Python) is missing or failed",
    Exit.INTERNAL: "internal error in zpatch (a bug: please report it with the message)",
    Exit.BUSY: "another zpatch is working on the same checkout (or a rebase is in progress); retry when it has finished",
    Exit.UPSTREAMED: "`drift`: a patch is no longer needed (upstream has it, or its Obsolete-If probe fired)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C); an interrupted apply is rolled back by the next command",
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


class GitError(ZpatchError):
    """git itself failed; keeps the command line and git's stderr for --json and bug reports."""

    def __init__(self, args: list[str], cwd, returncode: int, stderr: str):
        last = last_line(stderr)
        where = f" in {cwd}" if cwd else ""
        super().__init__(f"git {' '.join(args[:3])} failed{where}: {last}", Exit.ENVIRONMENT,
                         details={"git_args": list(args), "returncode": returncode, "stderr": stderr[-4000:]})


def last_line(text: str, default: str = "(no message)") -> str:
    """The last non-empty line of a tool's output: where git and pip put the reason."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else default
