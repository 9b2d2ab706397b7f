"""An all-or-nothing change to a checkout, the way git updates its index: compute everything first,
then take the lock, write a journal of every path's before and after blob (the before bytes kept in
git's object store), write the files by temp-and-rename, replace the record (the commit point), and
drop the journal. A journal found later means a run died: it is rolled back byte for byte, or
forward when the record had already been replaced.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import git, record, worktree
from .errors import Exit, ZpatchError

JOURNAL_NAME = "journal.json"
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
LOCK_NAME = "lock"


@dataclass
class Change:
    root: str                  # folder (relative to the checkout) that PATH is relative to
    store: str                 # repository (relative to the checkout) whose object store keeps BEFORE
    path: str
    before: str | None         # git blob id of the bytes there now; None: absent
    after: str | None          # git blob id of the bytes to leave; None: remove
    data: bytes | None = field(default=None, repr=False)   # the AFTER bytes (not journaled)
    executable: bool = False
    prune: bool = True         # after a removal, drop parent folders left empty (as git does)

    @property
    def full(self) -> str:
        return _join(self.root, self.path)


class CheckoutLock(worktree.Exclusive):
    """One zpatch at a time per checkout: <git-dir>/zpatch/lock."""

    def __init__(self, zdir: Path, checkout: Path):
        self.zdir = zdir
        super().__init__(zdir / LOCK_NAME, lambda pid: ZpatchError(
            f"{checkout}: another zpatch (pid {pid}) is working on this checkout", Exit.BUSY,
            hint="wait for it to finish, then rerun"))

    def __enter__(self) -> "CheckoutLock":
        record.check_zdir(self.zdir)
        try:
            self.zdir.mkdir(exist_ok=True)
            return super().__enter__()
        except OSError as e:
            raise ZpatchError(f"{self.zdir}: cannot write there ({e.strerror})", Exit.BAD_CHECKOUT,
                              hint="apply and unapply need a writable checkout (not a read-only mount); "
                                   "`zpatch status` works read-only")


def pending(zdir: Path) -> dict | None:
    """The journal of a run that died, validated; None when there is none."""
    path = zdir / JOURNAL_NAME
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        changes = [Change(**c) for c in data["changes"]]
        for c in changes:
            worktree.rel_parts(c.path)
            for d in (c.root, c.store):
                if d != ".":
                    worktree.rel_parts(d)
            for blob in (c.before, c.after):
                if blob is not None and not (isinstance(blob, str) and _SHA1.fullmatch(blob)):
                    raise ValueError
            if not isinstance(c.executable, bool) or not isinstance(c.prune, bool):
                raise ValueError
        data.setdefault("sweep", [])
        for d in (*data.get("dirs", []), *data["sweep"]):
            worktree.rel_parts(d)
        if data.get("op") not in ("apply", "unapply") or not isinstance(data.get("pid"), int):
            raise ValueError
        if data["record_after"] is not None and not (isinstance(data["record_after"], str)
                                                     and _SHA256.fullmatch(data["record_after"])):
            raise ValueError
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, RecursionError, ZpatchError):
        raise ZpatchError(f"{path}: the journal of an interrupted zpatch run is damaged", Exit.BAD_CHECKOUT,
                          hint=f"inspect it, restore the files it names by hand, then delete {path}")
    data["changes"] = changes
    return data


def _store_befores(checkout: Path, changes: list[Change]) -> None:
    """Keep every BEFORE in git's object store, byte for byte, so a rollback can always rewrite it.
    git reads the files themselves (one process per repository); an id that differs from the one
    planned means the file changed under us, or a sha256 repository: stop before writing anything."""
    by_store: dict[str, list[Change]] = {}
    for c in changes:
        if c.before is not None:
            by_store.setdefault(c.store, []).append(c)
    for store, items in by_store.items():
        base = "" if store == "." else store + "/"
        rels = [c.full[len(base):] for c in items]
        for c, got in zip(items, git.hash_files(checkout / store, rels, filters=False)):
            if got != c.before:
                raise ZpatchError(f"{checkout / c.full}: changed while zpatch was planning (or the repository uses "
                                  "the sha256 object format, which zpatch does not support); nothing was written",
                                  Exit.BAD_CHECKOUT, hint="rerun when nothing else is writing the checkout")


def commit(checkout: Path, zdir: Path, op: str, changes: list[Change], new_record: record.Record | None,
           copies: list[bytes], *, sweep: list[str] = ()) -> None:
    """Carry out CHANGES as one transaction (the caller holds the lock). NEW_RECORD None clears it.
    SWEEP: folders to remove when empty once the record is committed (also done by a roll-forward)."""
    for name in (JOURNAL_NAME, record.RECORD_NAME):   # an obstacle found now, not after the first write
        tmp = zdir / (name + ".tmp")
        if os.path.lexists(tmp) and not (tmp.is_file() and not tmp.is_symlink()):
            raise ZpatchError(f"{tmp}: is in the way of zpatch's temporary file", Exit.BAD_CHECKOUT,
                              hint="move it away, then rerun")
    _store_befores(checkout, changes)
    record.store_copies(zdir, copies)
    rec_bytes = new_record.to_bytes() if new_record else None
    # folders the writes will create: a rollback removes them again when empty
    dirs = sorted({d for c in changes if c.after is not None for d in parent_dirs(_join(c.root, c.path))
                   if not os.path.lexists(checkout / d)})
    journal = {"version": 1, "op": op, "pid": os.getpid(),
               "record_after": record.digest(rec_bytes) if rec_bytes else None,
               "changes": [{k: v for k, v in asdict(c).items() if k != "data"} for c in changes],
               "dirs": dirs, "sweep": list(sweep)}
    worktree.write_atomic(zdir / JOURNAL_NAME, json.dumps(journal, indent=1).encode())
    for c in changes:   # paths relative to the checkout: no symlink anywhere on the way
        if c.after is None:
            worktree.remove(checkout, c.full, prune=c.prune)
        else:
            worktree.write(checkout, c.full, c.data, executable=c.executable)
    if new_record is not None:
        record.save(zdir, new_record)
    else:
        record.clear(zdir)
    worktree.remove_empty_dirs(checkout, list(sweep))
    (zdir / JOURNAL_NAME).unlink()
    worktree.fault_point()
    record.collect_garbage(zdir, new_record)


def parent_dirs(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _join(root: str, rel: str) -> str:
    return rel if root == "." else f"{root}/{rel}"


def recover(checkout: Path, zdir: Path) -> str | None:
    """Finish what a killed run left (the caller holds the lock). Returns a sentence for the user."""
    j = pending(zdir)
    if j is None:
        return None
    try:
        rec_bytes = (zdir / record.RECORD_NAME).read_bytes()
    except FileNotFoundError:
        rec_bytes = None
    if j["record_after"]:
        committed = rec_bytes is not None and record.digest(rec_bytes) == j["record_after"]
    else:
        committed = rec_bytes is None       # an unapply commits by removing the record
    if committed:
        # the record was replaced after the last file was written: the change is complete
        for c in j["changes"]:
            worktree.drop_temp(checkout, c.full, j["pid"])
        worktree.remove_empty_dirs(checkout, j["sweep"])
        (zdir / JOURNAL_NAME).unlink()
        record.collect_garbage(zdir, record.load(zdir))
        return f"An interrupted `zpatch {j['op']}` (pid {j['pid']}) had finished its writes; recorded it."
    # not committed: put every path back to its BEFORE, refusing anything neither side wrote
    for c in reversed(j["changes"]):
        worktree.drop_temp(checkout, c.full, j["pid"])
        now = worktree.blob_id(checkout, c.full)
        if now == c.before:
            continue
        if now != c.after:
            raise ZpatchError(f"{checkout / c.full}: changed while an interrupted `zpatch {j['op']}` was undone; "
                              "refusing to overwrite it", Exit.BAD_CHECKOUT,
                              hint=f"save your edit, restore the file, then rerun (journal: {zdir / JOURNAL_NAME})")
        if c.before is None:
            worktree.remove(checkout, c.full, prune=c.prune)
        else:
            data = git.read_blob(checkout / c.store, c.before)
            if data is None or git.hash_object_bytes(data) != c.before:
                raise ZpatchError(f"{checkout / c.full}: the bytes to restore ({c.before[:12]}) are gone from "
                                  f"{checkout / c.store}", Exit.BAD_CHECKOUT,
                                  hint=f"restore the file by hand, then delete {zdir / JOURNAL_NAME}")
            worktree.write(checkout, c.full, data)
    worktree.remove_empty_dirs(checkout, j.get("dirs", []))
    (zdir / JOURNAL_NAME).unlink()
    rec = record.load(zdir)
    record.collect_garbage(zdir, rec)
    return (f"Rolled back an interrupted `zpatch {j['op']}` (pid {j['pid']}): "
            f"{len(j['changes'])} path(s) restored to what they were before it.")
