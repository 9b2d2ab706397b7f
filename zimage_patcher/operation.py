"""Every command that changes more than one file goes through here.

A transaction (`apply` and `unapply` on a checkout; `rebase`, `export` and `lock` on the overlay,
through overlay_write.py) is all-or-nothing, the way git updates its index: compute everything first; then, under the caller's lock, keep every
path's before bytes, write a journal (kind, pid, each path's before and after blob, the digest of
the commit point), write the files by temp-and-rename, replace the commit point (the checkout's
record, the overlay's upstream.lock), and drop the journal. A journal found later means a run died:
recover() rolls it back byte for byte, or forward when the commit point had already been replaced.

An operation that stops between commands (a rebase at a conflict) keeps its typed state in
rebase_state.py; the overlay's front door (overlay_write.py) refuses other writers while it exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import durable, git, paths, worktree
from .errors import Exit, ZpatchError

JOURNAL_NAME = "journal.json"
KEEP_NAME = "before"        # beside the journal: the before bytes of changes without a git store
KINDS = ("apply", "unapply", "edit", "rebase", "export", "lock", "refresh", "forward", "import")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Change:
    root: str                  # folder (relative to the tree root) that PATH is relative to
    store: str | None          # repository (relative to the root) whose object store keeps BEFORE;
                               # None: a copy beside the journal keeps it (the overlay need not be a repository)
    path: str
    before: str | None         # git blob id of the bytes there now; None: absent
    after: str | None          # git blob id of the bytes to leave; None: remove
    data: bytes | None = field(default=None, repr=False)   # the AFTER bytes (not journaled)
    executable: bool = False
    prune: bool = True         # after a removal, drop parent folders left empty (as git does)

    @property
    def full(self) -> str:
        return paths.under(self.root, self.path)


def pending(path: Path) -> dict | None:
    """The journal at PATH of a run that died, validated; None when there is none."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        changes = [Change(**c) for c in data["changes"]]
        for c in changes:
            worktree.rel_parts(c.path)
            for d in (c.root, c.store):
                if d not in (".", None):
                    worktree.rel_parts(d)
            for blob in (c.before, c.after):
                if blob is not None and not (isinstance(blob, str) and _SHA1.fullmatch(blob)):
                    raise ValueError
            if not isinstance(c.executable, bool) or not isinstance(c.prune, bool):
                raise ValueError
        data.setdefault("sweep", [])
        for d in (*data.get("dirs", []), *data["sweep"]):
            worktree.rel_parts(d)
        if data.get("op") not in KINDS or not isinstance(data.get("pid"), int):
            raise ValueError
        after = data["commit_after"] = data.get("commit_after", data.get("record_after"))   # version 1's name
        if after is not None and not (isinstance(after, str) and _SHA256.fullmatch(after)):
            raise ValueError
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, RecursionError, ZpatchError):
        raise ZpatchError(f"{path}: the journal of an interrupted zpatch run is damaged", Exit.BAD_CHECKOUT,
                          hint=f"inspect it, restore the files it names by hand, then delete {path}")
    data["changes"] = changes
    return data


def _keep_befores(root: Path, keep: Path, changes: list[Change]) -> None:
    """Keep every BEFORE byte for byte, so a rollback can always rewrite it: in the object store of
    the change's repository (git reads the files itself, one process per repository) or as a copy in
    KEEP. An id that differs from the one planned means the file changed under us, or a sha256
    repository: stop before writing anything."""
    by_store: dict[str | None, list[Change]] = {}
    for c in changes:
        if c.before is not None:
            by_store.setdefault(c.store, []).append(c)
    for store, items in by_store.items():
        if store is None:
            got = []
            for c in items:
                data = worktree.read(root, c.full)
                got.append(None if data is None else git.hash_object_bytes(data))
                if got[-1] == c.before:
                    keep.mkdir(exist_ok=True)
                    if keep.is_symlink():
                        raise ZpatchError(f"{keep}: is a symlink; zpatch keeps the before bytes only in a real "
                                          "folder", Exit.BAD_CHECKOUT, hint=f"remove {keep}, then rerun")
                    durable.write_atomic(keep / c.before, data)
        else:
            base = "" if store == "." else store + "/"
            got = git.hash_files(root / store, [c.full[len(base):] for c in items], filters=False, durable=True)
        for c, blob in zip(items, got):
            if blob != c.before:
                raise ZpatchError(f"{root / c.full}: changed while zpatch was planning (or the repository uses "
                                  "the sha256 object format, which zpatch does not support); nothing was written",
                                  Exit.BAD_CHECKOUT, hint="rerun when nothing else is writing there")


def _kept(root: Path, keep: Path, c: Change) -> bytes | None:
    """The BEFORE bytes of C, checked against their id; None when they are gone."""
    if c.store is None:
        try:
            data = (keep / c.before).read_bytes()
        except OSError:
            return None
    else:
        data = git.read_blob(root / c.store, c.before)
    return data if data is not None and git.hash_object_bytes(data) == c.before else None


def commit(root: Path, journal: Path, kind: str, changes: list[Change], point: Path, point_data: bytes | None,
           *, sweep: list[str] = (), prepare=None) -> None:
    """Carry out CHANGES under ROOT as one transaction (the caller holds the lock), journaled at
    JOURNAL. Replacing POINT with POINT_DATA (None: removing it) is the commit point.
    SWEEP: folders to remove when empty once committed (also done by a roll-forward).
    PREPARE: called when every check has passed, before the journal (to store what POINT names)."""
    for tmp in (journal.with_name(journal.name + ".tmp"), point.with_name(point.name + ".tmp")):
        # an obstacle found now, not after the first write
        if os.path.lexists(tmp) and not (tmp.is_file() and not tmp.is_symlink()):
            raise ZpatchError(f"{tmp}: is in the way of zpatch's temporary file", Exit.BAD_CHECKOUT,
                              hint="move it away, then rerun")
    keep = journal.with_name(KEEP_NAME)
    _keep_befores(root, keep, changes)
    if prepare:
        prepare()
    # folders the writes will create: a rollback removes them again when empty
    dirs = sorted({d for c in changes if c.after is not None for d in parent_dirs(paths.under(c.root, c.path))
                   if not os.path.lexists(root / d)})
    # A commit point whose bytes do not change cannot tell "done" from "not begun": then the journal
    # records none, and a kill is always rolled back (a series reordered with the lock unchanged).
    try:
        same = point_data is not None and point.read_bytes() == point_data
    except OSError:
        same = False
    entry = {"version": 2, "op": kind, "pid": os.getpid(),
             "commit_after": digest(point_data) if point_data is not None and not same else None,
             "changes": [{k: v for k, v in asdict(c).items() if k != "data"} for c in changes],
             "dirs": dirs, "sweep": list(sweep)}
    # the journal's folders may be new (`.git/zpatch`, a rebase's area): their names must last too
    durable.sync_dirs([journal.parent.parent, journal.parent.parent.parent])
    durable.write_atomic(journal, json.dumps(entry, indent=1).encode())
    durable.fault_point("journal-written")       # tests hold a run here, in the middle of its writes
    for c in changes:   # paths relative to the root: no symlink anywhere on the way
        if c.after is None:
            worktree.remove(root, c.full, prune=c.prune)
        else:
            worktree.write(root, c.full, c.data, executable=c.executable)
    # every rename and unlink on disk before the commit point can say they happened
    durable.sync_dirs(root / d for c in changes for d in (".", *parent_dirs(c.full)))
    if point_data is not None:
        durable.write_atomic(point, point_data)
    else:
        point.unlink(missing_ok=True)
        durable.sync_dirs([point.parent])
        durable.fault_point()
    worktree.remove_empty_dirs(root, list(sweep))
    journal.unlink()
    durable.fault_point()
    shutil.rmtree(keep, ignore_errors=True)


def _put_back(root: Path, keep: Path, c: Change) -> str:
    """How the user restores C's BEFORE by hand, as a command to copy."""
    target = shlex.quote(str(root / c.full))
    if c.before is None:
        return f"rm -- {target}"       # it did not exist before the run
    if c.store is None:
        return f"cp {shlex.quote(str(keep / c.before))} {target}"
    return f"git -C {shlex.quote(str(root / c.store))} cat-file blob {c.before} > {target}"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parent_dirs(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def recover(root: Path, journal: Path, point: Path) -> str | None:
    """Finish what a killed run left (the caller holds the lock): the journal at JOURNAL, whose
    commit point is POINT. Returns a sentence for the user, None when there was nothing to do."""
    j = pending(journal)
    if j is None:
        return None
    keep = journal.with_name(KEEP_NAME)
    try:
        now = point.read_bytes()
    except FileNotFoundError:
        now = None
    if j["commit_after"]:
        committed = now is not None and digest(now) == j["commit_after"]
    else:
        committed = now is None       # an unapply commits by removing the record
    stray = point.with_name(point.name + ".tmp")          # a kill inside the commit point's own write
    if stray.is_file() and not stray.is_symlink():
        stray.unlink()
    if committed:
        # the commit point was replaced after the last file was written: the change is complete
        for c in j["changes"]:
            worktree.drop_temp(root, c.full)
        worktree.remove_empty_dirs(root, j["sweep"])
        journal.unlink()
        shutil.rmtree(keep, ignore_errors=True)
        return f"An interrupted `zpatch {j['op']}` (pid {j['pid']}) had finished its writes; recorded it."
    # not committed: put every path back to its BEFORE, refusing anything neither side wrote
    for c in reversed(j["changes"]):
        worktree.drop_temp(root, c.full)
        now_blob = worktree.blob_id(root, c.full)
        if now_blob == c.before:
            continue
        if now_blob != c.after:
            raise ZpatchError(f"{root / c.full}: changed after `zpatch {j['op']}` (pid {j['pid']}) was interrupted; "
                              "refusing to overwrite it to roll that run back", Exit.BAD_CHECKOUT,
                              hint=f"save your edit elsewhere, then {_put_back(root, keep, c)} and rerun")
        if c.before is None:
            worktree.remove(root, c.full, prune=c.prune)
        else:
            data = _kept(root, keep, c)
            if data is None:
                raise ZpatchError(f"{root / c.full}: the bytes to restore ({c.before[:12]}) are gone from "
                                  f"{keep if c.store is None else root / c.store}", Exit.BAD_CHECKOUT,
                                  hint=f"restore the file by hand, then delete {journal}")
            worktree.write(root, c.full, data)
    worktree.remove_empty_dirs(root, j.get("dirs", []))
    journal.unlink()
    shutil.rmtree(keep, ignore_errors=True)
    return (f"Rolled back an interrupted `zpatch {j['op']}` (pid {j['pid']}): "
            f"{len(j['changes'])} path(s) restored to what they were before it.")
