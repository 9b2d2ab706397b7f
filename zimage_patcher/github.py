"""GitHub, through the `gh` CLI and git's https requests: the one place zpatch talks to it (the drift
job's pull requests and issues, forward's pull requests)."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile

from .errors import Exit, ZpatchError


def slug(url: str) -> str | None:
    """OWNER/NAME of a GitHub repository URL (https, ssh or scp-like), None for any other URL."""
    m = re.match(r"^(?:https?://|ssh://git@|git@)github\.com[/:]([^/]+)/([^/]+?)(?:\.git)?/?$", url.strip())
    return f"{m.group(1)}/{m.group(2)}" if m else None


class Gh:
    """The `gh` CLI, the only way this module talks to GitHub's API. DRY_RUN: reads run, writes are
    only recorded."""

    def __init__(self, *, dry_run: bool = False):
        self.dry_run, self.writes = dry_run, []

    def read(self, *args: str) -> list | dict:
        return json.loads(self._run(list(args)) or "null")

    def write(self, *args: str, body: str | None = None) -> str:
        self.writes.append(" ".join(args[:3]))
        if self.dry_run:
            return ""
        if body is None:
            return self._run(list(args))
        with tempfile.NamedTemporaryFile("w", suffix=".md", encoding="utf-8", delete=False) as f:
            f.write(body)
        try:
            return self._run([*args, "--body-file", f.name])
        finally:
            os.unlink(f.name)

    @staticmethod
    def _run(args: list[str]) -> str:
        try:
            r = subprocess.run(["gh", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise ZpatchError(f"gh {args[0]}: cannot run the GitHub CLI: {e}", Exit.ENVIRONMENT,
                              hint="install gh (https://cli.github.com) and set GH_TOKEN") from None
        if r.returncode:
            msg = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise ZpatchError(f"gh {' '.join(args[:2])}: {msg}", Exit.ENVIRONMENT,
                              hint="check GH_TOKEN's permissions (contents, pull-requests, issues: write)")
        return r.stdout


def auth_env() -> dict:
    """The token for git's https requests to github.com, in the environment of that one process
    (never in a file or on a command line); a local origin in the tests ignores it."""
    token = os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN")
    if not token:
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.https://github.com/.extraheader",
            "GIT_CONFIG_VALUE_0": f"AUTHORIZATION: basic {basic}"}
