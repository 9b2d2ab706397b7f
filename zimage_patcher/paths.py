"""Relative paths: the one rule for what zpatch accepts as a path inside a tree (the lock's folders,
a patch's files, a journal's or record's entries), and the one way to join them."""
from __future__ import annotations

import re
from pathlib import PurePosixPath


def unsafe(rel: object) -> str | None:
    """Why REL is not a safe relative POSIX path inside its tree; None when it is. `.git` is refused
    in any case (a case-insensitive file system would write into the repository), as are '..',
    absolute paths (POSIX or Windows), backslashes and control characters."""
    if not isinstance(rel, str) or not rel:
        return "must be a non-empty string"
    if not rel.isprintable():
        return "has control characters"
    if rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel):
        return "is an absolute path"
    parts = PurePosixPath(rel).parts
    if ".." in parts:
        return "leaves the tree ('..')"
    if any(p.lower() == ".git" for p in parts):
        return "points into .git"
    return None


def under(folder: str, rel: str) -> str:
    """REL of the upstream at FOLDER (relative to the checkout, "." for the checkout itself) as a path
    relative to the checkout."""
    return rel if folder == "." else f"{folder}/{rel}"
