"""Obsolescence probes: a patch says, in its message, how to tell that upstream has done its job.

    Obsolete-If: grep <path> <extended regex>    upstream's <path> has a line matching the regex
    Obsolete-If: missing <path>                  upstream no longer has <path>

A patch may carry several; any one firing makes it obsolete. They are read against a commit of the
upstream (its tree in the cache, no checkout), so `rebase` and `drift` can say "upstream implemented
this" even when the patch also conflicts. `check` requires every probe to be silent on the pin: a
probe that fires there is wrong, or the patch is already unnecessary.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from . import git
from .errors import Exit, ZpatchError
from .patchfile import Patch
from .worktree import rel_parts


@dataclass
class Probe:
    kind: str           # grep | missing
    path: str
    pattern: str | None
    text: str           # as written, for reports

    def fires(self, repo: Path, commit: str) -> bool:
        if self.kind == "missing":   # the tree's listing, not the blob: a partial mirror lacks blobs, not names
            return not git.run(["ls-tree", commit, "--", f":(literal){self.path}"], cwd=repo).stdout.strip()
        try:
            r = git.run(["grep", "-q", "-E", "-e", self.pattern, commit, "--", f":(literal){self.path}"], cwd=repo,
                        check=False, timeout=20)
        except ZpatchError:
            raise ZpatchError(f"Obsolete-If: {self.text[:80]}: git grep took over 20 s", Exit.BAD_OVERLAY,
                              hint="simplify the regular expression (no nested repetition)")
        if r.returncode not in (0, 1):
            raise ZpatchError(f"Obsolete-If: {self.text}: git grep failed: {r.last_line()}", Exit.BAD_OVERLAY,
                              hint="fix the regular expression (POSIX extended syntax)")
        return r.returncode == 0


def parse(patch: Patch) -> list[Probe]:
    out = []
    for text in patch.probes:
        if len(text) > 500 or not text.isprintable():
            raise ZpatchError(f"{patch.name}: Obsolete-If: {text[:60]!r}...: too long or with control characters",
                              Exit.BAD_OVERLAY, hint="a probe is one short line")
        try:
            words = shlex.split(text)
        except ValueError as e:
            raise ZpatchError(f"{patch.name}: Obsolete-If: {text}: {e}", Exit.BAD_OVERLAY,
                              hint="quote the regular expression with single quotes")
        if len(words) == 3 and words[0] == "grep":
            kind, path, pattern = words
        elif len(words) == 2 and words[0] == "missing":
            kind, path, pattern = words[0], words[1], None
        else:
            raise ZpatchError(f"{patch.name}: Obsolete-If: {text!r} is neither `grep PATH REGEX` nor `missing PATH`",
                              Exit.BAD_OVERLAY, hint="see the README's section on obsolescence probes")
        try:
            rel_parts(path)
            if path != path.strip("/") or "/./" in f"/{path}/" or path.startswith(":"):
                raise ZpatchError("not normal", Exit.BAD_OVERLAY)
        except ZpatchError:
            raise ZpatchError(f"{patch.name}: Obsolete-If: {path!r} is not a path inside the upstream",
                              Exit.BAD_OVERLAY, hint="name a file of the upstream, relative to its root")
        out.append(Probe(kind, path, pattern, text))
    return out


def fired(patch: Patch, repo: Path, commit: str) -> list[str]:
    """The probes of PATCH that fire on COMMIT of REPO, as written."""
    return [p.text for p in parse(patch) if p.fires(repo, commit)]
