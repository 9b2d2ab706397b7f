"""What zpatch applied to a checkout, kept inside the checkout's own .git (never tracked).

Layout: <git-dir>/zpatch/state.json plus a copy of every applied patch under
<git-dir>/zpatch/applied/<upstream>/, so `unapply` can reverse exactly what went in even
after the overlay has moved on (quilt keeps its .pc/ for the same reason).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE_VERSION = 1


def git_dir_of(repo: Path) -> Path | None:
    """The git dir of REPO without spawning git: .git is a directory or a 'gitdir:' file."""
    dot = repo / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        text = dot.read_text(encoding="utf-8").strip()
        if text.startswith("gitdir:"):
            p = Path(text[len("gitdir:"):].strip())
            return p if p.is_absolute() else (repo / p).resolve()
    return None


def read_head(repo: Path) -> str | None:
    """HEAD's commit read from files (the no-op fast path); None when that needs git."""
    gd = git_dir_of(repo)
    if gd is None:
        return None
    try:
        head = (gd / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if head.startswith("ref: "):
        ref = head[5:]
        loose = gd / ref
        if loose.is_file():
            head = loose.read_text(encoding="utf-8").strip()
        else:
            packed = gd / "packed-refs"
            lines = packed.read_text(encoding="utf-8").splitlines() if packed.is_file() else []
            head = next((l.split()[0] for l in lines if l.endswith(" " + ref)), "")
    if len(head) == 40 and all(c in "0123456789abcdef" for c in head):
        return head
    return None   # worktrees, reftable, other hash formats: ask git


def state_dir(root_git_dir: Path) -> Path:
    return root_git_dir / "zpatch"


def load(root_git_dir: Path) -> dict | None:
    try:
        data = json.loads((state_dir(root_git_dir) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("version") == STATE_VERSION else None


def save(root_git_dir: Path, data: dict, patch_copies: dict[str, dict[str, bytes]]) -> None:
    """Write atomically: copies first, then state.json via rename."""
    d = state_dir(root_git_dir)
    applied = d / "applied"
    tmp = d / "applied.new"
    shutil.rmtree(tmp, ignore_errors=True)
    for up, patches in patch_copies.items():
        (tmp / up).mkdir(parents=True, exist_ok=True)
        for name, blob in patches.items():
            (tmp / up / name).write_bytes(blob)
    shutil.rmtree(applied, ignore_errors=True)
    if tmp.exists():
        tmp.rename(applied)
    data = dict(data, version=STATE_VERSION)
    (d / "state.json.new").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(d / "state.json.new", d / "state.json")


def applied_copy(root_git_dir: Path, upstream: str, name: str) -> Path:
    return state_dir(root_git_dir) / "applied" / upstream / name


def clear(root_git_dir: Path) -> None:
    shutil.rmtree(state_dir(root_git_dir), ignore_errors=True)
