"""Why a series does not apply: every failing patch, file and hunk, expected vs. found lines.

Patches are applied one after another to a throw-away index built from a commit, so this works
in a bare cache repository as well as in a checkout, and never touches a work tree.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from . import git
from .patchfile import Patch

_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$")
_OTHER = re.compile(r"^error: (.+?): (already exists in index|does not exist in index|patch does not apply)$")


def _hunk_report(repo: Path, env: dict, patch: Patch, stderr: str) -> dict:
    report = {"patch": patch.name, "file": None, "hunk": None, "line": None,
              "expected": [], "found": [], "reason": (stderr.strip().splitlines() or ["?"])[-1]}
    for line in stderr.splitlines():
        m = _FAILED.match(line)
        if m:
            report["file"], report["line"] = m.group(1), int(m.group(2))
            break
        m = _OTHER.match(line)
        if m:
            report["file"] = m.group(1)
    if report["line"] is not None:
        hunks = [h for h in patch.hunks if h.file == report["file"]]
        hunk = next((h for h in hunks if h.source_start == report["line"]), None)
        if hunk is None and hunks:
            hunk = min(hunks, key=lambda h: abs(h.source_start - report["line"]))
        if hunk:
            report["hunk"] = hunk.index
            blob = git.show_blob(repo, "", report["file"], env=env)
            current = blob.decode("utf-8", "replace").split("\n") if blob is not None else []
            start = hunk.source_start - 1
            found = current[start:start + len(hunk.source_lines)]
            # Show the first line that differs: that is what a maintainer needs to see.
            for i, want in enumerate(hunk.source_lines):
                have = found[i] if i < len(found) else "<end of file>"
                if want != have:
                    report["line"] = hunk.source_start + i
                    report["expected"], report["found"] = [want], [have]
                    break
            else:   # every line matches: git refused for another reason (zero context, EOF, ...)
                report["reason"] = f"context matches but git refused the hunk: {report['reason']}"
    return report


def failures(repo: Path, base: str, patches: list[Patch], *, stop_at_first: bool = False) -> list[dict]:
    """Apply PATCHES in order onto BASE in a scratch index; return one report per failing patch.

    A failing patch is skipped and the rest continue, so `check` names every broken patch."""
    with tempfile.TemporaryDirectory(prefix="zpatch-idx-") as tmp:
        idx = git.ScratchIndex(repo, tmp, read_only=True)     # nothing lands in the cache's store
        idx.read_tree(base)
        out = []
        base_modes = {}
        for p in patches:
            files = [f for f in p.files if f not in base_modes]
            base_modes.update({f: e[0] for f, e in git.tree_entries(repo, base, files).items()})
            r = idx.apply([p.path])
            if not r.ok:
                out.append(_hunk_report(repo, idx.env, p, r.stderr))
                if stop_at_first:
                    break
                continue
            bad = _mode_change(repo, idx.env, p, base_modes)
            if bad:
                out.append(bad)
                if stop_at_first:
                    break
        return out


def _mode_change(repo: Path, env: dict, patch: Patch, base_modes: dict[str, str]) -> dict | None:
    """What git made of the patch's modes, read from the index: a symlink, gitlink or exec bit the
    pin did not have is refused, however the patch spelled its mode lines."""
    out = git.run(["ls-files", "-s", "-z", "--", *patch.files], cwd=repo, env=env).stdout
    for entry in out.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            mode = meta.split()[0]
            if mode != base_modes.get(path, "100644"):
                kind = {"120000": "a symlink", "160000": "a submodule (gitlink)"}.get(mode, f"mode {mode}")
                return {"patch": patch.name, "file": path, "hunk": None, "line": None, "expected": [], "found": [],
                        "reason": f"would make {path} {kind}; zpatch writes regular files and keeps their modes"}
    return None


def one_line(f: dict) -> str:
    where = f["file"] or "?"
    if f["hunk"]:
        where += f" hunk #{f['hunk']}"
    if f["line"]:
        where += f" (line {f['line']})"
    if f["expected"]:
        return (f"{f['patch']}: {where}: expected {f['expected'][0]!r}, found {f['found'][0]!r}"
                if f["found"] else f"{f['patch']}: {where}: context not found")
    return f"{f['patch']}: {where}: {f['reason']}"


def classify(repo: Path, patches: list[Patch], files: list[str]) -> dict[str, str]:
    """applied / missing / conflict for each patch against the work tree, without touching it.

    `git apply --check` does not chain patches that touch the same file, so the check runs as
    real applies into a scratch index holding the work tree's FILES: reverse every patch that
    comes off, newest first, then forward the rest in series order."""
    with tempfile.TemporaryDirectory(prefix="zpatch-idx-") as tmp:
        idx = git.ScratchIndex(repo, tmp, read_only=True)     # status writes nothing, not even objects
        idx.read_tree("HEAD")
        tracked = set(idx.run(["ls-files", "-z", "--", *files]).stdout.split("\0"))
        present = [f for f in files if f in tracked or (repo / f).exists()]
        if present:   # a pathspec matching nothing would make git add refuse them all
            idx.run(["add", "--all", "--", *present])
        state: dict[str, str] = {}
        for p in reversed(patches):
            if idx.apply([p.path], reverse=True).ok:
                state[p.name] = "applied"
        for p in patches:
            if p.name not in state:
                state[p.name] = "missing" if idx.apply([p.path]).ok else "conflict"
        return {p.name: state[p.name] for p in patches}
