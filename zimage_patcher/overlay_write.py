"""The one front door for writing the overlay: patches/<upstream>/ (patch files and series) and
upstream.lock. rebase, export, lock, refresh and edit come in here; nothing else writes those files.

It works as git's lockfile API does for the index and refs. `hold(root, command)`:
  1. refuses the overlay bundled into an installed zpatch (nobody should edit that copy);
  2. takes the overlay lock (locks.overlay: one writer at a time, released by the kernel when the
     holder dies), or fails BUSY naming the holder's pid;
  3. finishes a write a killed run left (operation.recover: back, or forward past the lock);
  4. refuses while an operation that stops between commands (a rebase at a conflict) is in progress,
     unless the command is that operation;
and yields a Writer. The caller reads the overlay *after* that (so it plans from what it will
replace: a writer that finished a moment ago is seen, never undone) and calls Writer.commit() once:
every file by temp-and-rename under a journal, upstream.lock last as the commit point.

The state of the overlay's writes lives in the overlay itself, in `.zpatch/` (which ignores itself
for git): the lock, journal.json (+ before/) during a write, and a stopped rebase's state and scratch
files in rebase/. In the overlay, not in a cache keyed by its path, so that every writer finds it:
through a bind mount, another path, another user's cache, after the overlay was moved or copied.
`busy(root)` answers, for the commands that only read, whether the overlay is at rest.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import git, locks, operation, patchset, rebase_state, series, worktree
from . import lock as lockmod
from .durable import fault_point
from .errors import Exit, ZpatchError
from .operation import Change

AREA_NAME = ".zpatch"


def area(root: Path) -> Path:
    """Where the overlay at ROOT keeps the state of its writes."""
    return root / AREA_NAME


def journal(root: Path) -> Path:
    return area(root) / operation.JOURNAL_NAME


def state_path(root: Path) -> Path:
    """The state of a rebase stopped between commands (rebase_state.py); its scratch files beside it."""
    return area(root) / "rebase" / "op.json"


def make_area(root: Path) -> Path:
    """The area, made when missing; never through a link (a writer would follow it out of the overlay)."""
    d = area(root)
    try:
        d.mkdir(exist_ok=True)
    except FileExistsError:
        pass
    if d.is_symlink() or not d.is_dir():
        raise ZpatchError(f"{d}: is a symlink or not a folder; zpatch keeps the overlay's write state only in a "
                          "real folder there", Exit.BAD_OVERLAY, hint=f"move it away (mv {d} {d}.old), then rerun")
    ignore = d / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# zpatch's write state of this overlay (lock, journal, a stopped rebase)\n*\n")
    return d


def stopped(root: Path) -> rebase_state.RebaseState | None:
    """The operation stopped between commands on this overlay, None when none. A damaged state
    raises, naming its file."""
    return rebase_state.load(state_path(root))


REBASE_HINT = "a rebase is in progress: finish it with zpatch rebase --continue, or --abort"
WRITE_HINT = "zpatch lock finishes or rolls back the interrupted write first (so does any export or rebase)"


def busy(root: Path) -> tuple[str, str] | None:
    """Why the overlay is not at rest, and the way out, for commands that only read it (they warn, and
    point an overlay problem at that way out instead of at `zpatch lock` or a restore by hand, which
    would bless or undo a half-made change); None at rest."""
    try:
        op = stopped(root)
    except ZpatchError as e:
        return e.message, REBASE_HINT
    if op is not None:
        return f"a rebase of {op.upstream} onto {op.onto[:12]} is in progress", REBASE_HINT
    if journal(root).exists():
        try:
            j = operation.pending(journal(root))
            what = f"`zpatch {j['op']}` (pid {j['pid']})" if j else "a zpatch write"
        except ZpatchError:
            what = "a zpatch write (its journal is damaged)"
        if _held(root):        # alive, in the middle of its writes: not interrupted
            return f"{what} is writing this overlay right now", "wait for it to finish, then rerun"
        return f"{what} was interrupted while writing this overlay", WRITE_HINT
    return None


def _held(root: Path) -> bool:
    """Whether a writer holds the overlay lock now (asked without taking it for long, or creating it)."""
    try:
        fd = os.open(area(root) / "lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def refuse_installed(root: Path, command: str) -> None:
    if patchset.is_installed_copy(root):
        raise ZpatchError(f"{root}: is the overlay bundled into an installed zpatch; `zpatch {command}` does "
                          "not write it", Exit.BAD_OVERLAY,
                          hint="edit the overlay in its repository (a clone of zimage-patcher) and reinstall "
                               "(pipx install --force .), or pass --overlay DIR")


class Writer:
    """The right to write the overlay at ROOT, while `hold` lasts."""

    def __init__(self, root: Path, command: str, recovered: str | None):
        self.root, self.command, self.recovered = root, command, recovered

    def commit(self, files: dict[str, bytes | None], lock: lockmod.Lock) -> bool:
        """Make FILES (paths relative to the overlay: new bytes, or None to delete) and LOCK the overlay's,
        all or nothing. Only what differs is written. True when anything changed."""
        fault_point("overlay-planned")       # tests hold a writer here: planned, nothing written yet
        lock_data = lockmod.render(self.root, lock)
        changes = []
        for rel, data in sorted(files.items()):
            now = worktree.read(self.root, rel)      # never through a symlink, anywhere on the way
            before = None if now is None else git.hash_object_bytes(now)
            after = None if data is None else git.hash_object_bytes(data)
            if before != after:
                changes.append(Change(".", None, rel, before, after, data, prune=False))
        try:
            old_lock = (self.root / lockmod.LOCK_NAME).read_bytes()
        except FileNotFoundError:
            old_lock = None
        if not changes and old_lock == lock_data:
            return False
        operation.commit(self.root, journal(self.root), self.command, changes, self.root / lockmod.LOCK_NAME,
                         lock_data)
        return True


@contextmanager
def hold(root: Path, command: str):
    """The overlay lock for COMMAND, after recovering what a killed writer left; yields a Writer."""
    refuse_installed(root, command)
    with locks.overlay(make_area(root) / "lock", root):
        said = operation.recover(root, journal(root), root / lockmod.LOCK_NAME)
        _sweep(area(root))
        if command != rebase_state.KIND:
            try:
                op = stopped(root)
                what = f"a rebase of {op.upstream} onto {op.onto[:12]}" if op else None
            except ZpatchError:
                what = "a rebase (its state is damaged)"
            if what is not None:
                raise ZpatchError(f"{what} is in progress; `zpatch {command}` would change the overlay under it",
                                  Exit.BUSY, hint="finish it first: zpatch rebase --continue, --skip or --abort")
        fault_point("overlay-held")          # tests hold a writer here, before it reads the overlay
        yield Writer(root, command, said)


def _sweep(d: Path) -> None:
    """What a writer killed before its journal existed left in the area: temp files and the before
    bytes it was keeping. Nothing to roll back, only litter (no journal names them)."""
    keep = d / operation.KEEP_NAME
    if keep.is_dir() and not keep.is_symlink():
        shutil.rmtree(keep)
    for tmp in d.glob("*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()


def render_series(root: Path, rel: str, names: list[str]) -> bytes:
    """The series file at ROOT/REL rewritten to list NAMES, keeping the maintainer's comments and
    options (series.rewrite); a plain list when there is none yet."""
    old = worktree.read(root, rel)
    return series.rewrite(old, names) if old is not None else "".join(n + "\n" for n in names).encode()


def new_lock(ov: patchset.Overlay, hashes: dict[str, dict[str, str]]) -> lockmod.Lock:
    """OV's lock with the patch hashes of each upstream named in HASHES replaced, and the node's
    hashes read again from its folder."""
    lk = lockmod.parse_text(ov.root / lockmod.LOCK_NAME, lockmod.dumps(ov.lock))     # a copy
    for u in lk.upstreams:
        if u.name in hashes:
            u.sha256 = dict(hashes[u.name])
    if lk.overlay:
        lk.overlay.sha256 = patchset.node_hashes(ov.root, lk.overlay)
    return lk


def relock(root: Path, writer: Writer) -> list[str]:
    """`zpatch lock`: every hash recomputed from the files into upstream.lock. The names whose hash changed."""
    lk, changed = relocked(root)
    writer.commit({}, lk)
    return changed


def relocked(root: Path) -> tuple[lockmod.Lock, list[str]]:
    """The lock with every hash recomputed from the files (read through patchset.collect, as `check`
    reads them), and the names whose hash changed. Writes nothing."""
    ov, problems = patchset.collect(root, verify_hashes=False)
    blocking = [p for p in problems if p.kind in ("lock", "series", "patch", "overlay")]
    if blocking:           # a hash needs a file that reads; a layout problem is `check`'s to report
        raise blocking[0].error
    hashes = {s.upstream.name: {p.name: p.sha256 for p in s.patches} for s in ov.series}
    lk = new_lock(ov, hashes)
    return lk, lock_changes(ov.lock, lk)


def lock_changes(old: lockmod.Lock, new: lockmod.Lock) -> list[str]:
    """The overlay files whose hash differs between two locks (added, changed or dropped)."""
    out = []
    for o, n in zip(old.upstreams, new.upstreams):
        out += [f"{n.patches}/{f}" for f in sorted(set(o.sha256) | set(n.sha256)) if o.sha256.get(f) != n.sha256.get(f)]
    if new.overlay:
        o, n = old.overlay.sha256 if old.overlay else {}, new.overlay.sha256
        out += [f"{new.overlay.source}/{f}" for f in sorted(set(o) | set(n)) if o.get(f) != n.get(f)]
    return out

