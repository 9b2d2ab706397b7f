"""The one error type of zpatch and its documented exit codes."""
from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Exit codes; the README's table is generated from these docstrings' spirit, keep both in step."""

    OK = 0
    FINDINGS = 1        # check/status/drift found something to act on (like `git diff --exit-code`)
    USAGE = 2           # bad command line (click's own code)
    BAD_OVERLAY = 3     # upstream.lock, series or a patch file is malformed, tampered or hostile
    BAD_CHECKOUT = 4    # the target checkout is missing, not a repository, off its pin, or dirty
    CONFLICT = 5        # a patch does not apply
    UNREACHABLE = 6     # an upstream URL (or the cache with --offline) cannot provide the commit
    SMOKE_FAILED = 7    # the smoke generation ran and failed
    ENVIRONMENT = 8     # a tool zpatch needs (git, python for the smoke) is missing or broken


class ZpatchError(Exception):
    """A failure the user can act on: a one-line message, an optional hint, an exit code.

    `details` carries structured data for --json output (for example every failing hunk).
    """

    def __init__(self, message: str, exit_code: Exit = Exit.BAD_OVERLAY, hint: str | None = None,
                 details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = Exit(exit_code)
        self.hint = hint
        self.details = details or {}

    def to_json(self) -> dict:
        return {"error": self.message, "exit_code": int(self.exit_code), "hint": self.hint,
                "details": self.details}
