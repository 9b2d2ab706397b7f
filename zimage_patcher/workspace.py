"""A ComfyUI checkout as zpatch sees it: its upstream repositories, what is applied, and the
operations on it (checkout, apply, unapply, status).

apply and unapply compute the whole result first, in scratch indexes, so every failure is known
before the first write; then operation.commit carries it out under the checkout lock with a journal.
Nothing is written or deleted unless its bytes are what zpatch expects there.
"""
from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import cache, diagnose, git, patchfile, operation, record, worktree
from .errors import Exit, ZpatchError
from .patchset import Overlay, Series, cwd, overlay_files
from .record import NodeRecord, PatchRef, Record, UpstreamRecord
from .operation import Change


@dataclass
class Target:
    series: Series
    repo: Path
    top: Path          # the checkout: every file is read and written relative to it, so that a
                       # symlink anywhere on the way, the nested repository's folder included, is refused

    def file(self, path: str) -> str:
        """PATH of this upstream, relative to the checkout."""
        return path if self.rel == "." else f"{self.rel}/{path}"

    @property
    def name(self) -> str:
        return self.series.upstream.name

    @property
    def pin(self) -> str:
        return self.series.upstream.commit

    @property
    def rel(self) -> str:
        return self.series.upstream.path


def find_checkout(path: Path, ov: Overlay) -> Path:
    """The checkout that PATH lies in, found as git finds its top level (the nearest folder up with
    a .git), without running git: from inside ComfyUI/comfy or inside the nested ComfyUI-GGUF,
    zpatch acts on the ComfyUI checkout."""
    path = Path(path)
    if not path.is_dir():
        return path
    here = path.resolve()
    top = next((d for d in (here, *here.parents) if git.git_dir_of(d) is not None), None)
    if top is None:
        raise ZpatchError(f"{here}: not inside a ComfyUI checkout (no .git here or above)", Exit.BAD_CHECKOUT,
                          hint="pass the checkout's path (zpatch apply /path/to/ComfyUI), "
                               "or make one with `zpatch checkout DIR`")
    for s in ov.series:   # inside a nested upstream: climb to the checkout that holds it
        depth = len(PurePosixPath(s.upstream.path).parts) if s.upstream.path != "." else 0
        if depth and top.as_posix().endswith("/" + s.upstream.path):
            outer = top.parents[depth - 1]
            if git.git_dir_of(outer) is not None:
                return outer
    return top


def resolve(ov: Overlay, checkout: Path) -> list[Target]:
    """Map each upstream to its repository inside CHECKOUT and make sure git will act on that
    repository and not on a parent (a nested custom node without its own .git would silently
    resolve to the ComfyUI repository)."""
    checkout = Path(checkout)
    if not checkout.is_dir():
        raise ZpatchError(f"{checkout}: no such directory", Exit.BAD_CHECKOUT,
                          hint=f"create it with `zpatch checkout {checkout}`")
    checkout = checkout.resolve()
    targets = []
    for s in sorted(ov.series, key=lambda s: s.upstream.path != "."):
        up = s.upstream
        repo = (checkout / up.path).resolve()
        if checkout not in (repo, *repo.parents):
            raise ZpatchError(f"{up.path}: resolves outside {checkout} (symlink?)", Exit.BAD_CHECKOUT,
                              hint="replace the symlink with a real clone")
        if not repo.is_dir():
            if up.path == ".":
                raise ZpatchError(f"{repo}: no such directory", Exit.BAD_CHECKOUT,
                                  hint=f"create it with `zpatch checkout {repo}`")
            raise ZpatchError(f"{repo}: {up.name} is missing", Exit.BAD_CHECKOUT,
                              hint=f"git clone {up.url} {repo} && git -C {repo} checkout {up.commit}")
        if git.git_dir_of(repo) is None:
            top = git.toplevel(repo)
            if top is None:
                raise ZpatchError(f"{repo}: not a git repository", Exit.BAD_CHECKOUT,
                                  hint=f"git clone {up.url} {repo}, or start over with `zpatch checkout DIR`")
            raise ZpatchError(f"{repo}: not its own git repository (git would act on {top})",
                              Exit.BAD_CHECKOUT, hint=f"replace it with a clone: git clone {up.url} {repo}")
        targets.append(Target(s, repo, checkout))
    return targets


LOCK_NAME = "lock"


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


@dataclass
class Workspace:
    ov: Overlay
    checkout: Path
    targets: list[Target]
    zdir: Path

    @classmethod
    def open(cls, ov: Overlay, checkout: Path | None) -> "Workspace":
        """CHECKOUT as named; None: the checkout around the current directory."""
        checkout = find_checkout(cwd(), ov) if checkout is None else Path(checkout)
        targets = resolve(ov, checkout)
        root = targets[0]
        gd = git.git_dir_of(root.repo) or git.git_dir(root.repo)
        return cls(ov, Path(checkout).resolve(), targets, record.zpatch_dir(gd))

    @property
    def node_rel(self) -> str | None:
        return self.ov.lock.overlay.path if self.ov.lock.overlay else None

    @property
    def journal(self) -> Path:
        return self.zdir / operation.JOURNAL_NAME

    @contextmanager
    def locked(self):
        """The checkout lock, and recovery of a run that died; yields what recovery said."""
        with CheckoutLock(self.zdir, self.checkout):
            said = operation.recover(self.checkout, self.journal, self.zdir / record.RECORD_NAME)
            if said:
                record.collect_garbage(self.zdir, record.load(self.zdir))
            # temp files of a run killed before its journal existed: nothing to roll, only litter
            for tmp in [*self.zdir.glob("*.tmp"), *self.zdir.glob("patches/*.tmp")]:
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink()
            yield said

    def commit(self, kind: str, changes: list[Change], new: Record | None, copies: list[bytes],
               sweep: list[str] = ()) -> None:
        """CHANGES as one transaction whose commit point is the record (the patch copies it names
        are stored first; the ones it no longer names are collected after)."""
        operation.commit(self.checkout, self.journal, kind, changes, self.zdir / record.RECORD_NAME,
                         new.to_bytes() if new else None, sweep=sweep,
                         prepare=lambda: record.store_copies(self.zdir, copies))
        record.collect_garbage(self.zdir, new)

    def load_record(self) -> Record | None:
        """The record, without upstreams the user reverted by hand (every recorded file back to
        HEAD: nothing of ours is left there, so that is 'not applied', not 'edited')."""
        rec = record.load(self.zdir)
        if rec is None:
            return None
        lo = self.ov.lock.overlay
        if rec.node and (lo is None or rec.node.path != lo.path):
            raise ZpatchError(f"{self.zdir / record.RECORD_NAME}: records the node in {rec.node.path!r}, but the "
                              f"overlay installs it in {lo.path if lo else 'no folder'!r}", Exit.BAD_CHECKOUT,
                              hint=f"unapply with the zpatch that applied it, or move {self.zdir} away")
        unknown = sorted(set(rec.upstreams) - {t.name for t in self.targets})
        if unknown:   # forgetting them would leave their patches in the files with no way back
            raise ZpatchError(f"{self.zdir / record.RECORD_NAME}: records patches of upstream {unknown[0]!r}, which "
                              "this overlay does not have", Exit.BAD_CHECKOUT,
                              hint="unapply with the overlay that applied them (zpatch unapply --overlay DIR)")
        for t in self.targets:
            ur = rec.upstreams.get(t.name)
            if ur and _edited(t, ur) and not git.changed_paths(t.repo, list(ur.files)):
                del rec.upstreams[t.name]    # every file is upstream's again: nothing of ours is left
        return rec


def in_edit_mode(t: Target) -> bool:
    """`zpatch edit` made the series commits on a branch (refs/zpatch/base marks it; see edit.py)."""
    return git.rev_parse(t.repo, git.EDIT_BASE) is not None


def _refuse_in_edit_mode(ws: "Workspace", command: str) -> None:
    t = next((t for t in ws.targets if in_edit_mode(t)), None)
    if t is not None:
        raise ZpatchError(f"{t.repo}: is in edit mode (the patches are commits on {git.EDIT_BRANCH})",
                          Exit.BAD_CHECKOUT,
                          hint=f"`zpatch export {ws.checkout}` then `zpatch unapply {ws.checkout}` to leave it "
                               f"before {command}")


def _edited(t: Target, ur: UpstreamRecord) -> list[str]:
    """Paths whose bytes differ from what zpatch left there."""
    return [f for f, want in ur.files.items() if worktree.blob_id(t.top, t.file(f)) != want]


def _user_edits(t: Target, ur: UpstreamRecord) -> list[str]:
    """Paths changed since zpatch wrote them, and not simply put back to upstream's (git status,
    which knows eol conversion, decides): those hold someone's work."""
    changed = _edited(t, ur)
    return sorted(git.changed_paths(t.repo, changed)) if changed else []


# ---------------------------------------------------------------- checkout

_MISSING = re.compile(r"unable to read sha1 file of (.+?) \(")


def checkout(ov: Overlay, dest: Path, *, offline: bool = False, exclude: list[str] | None = None,
             progress: bool = False) -> dict:
    """Clone every upstream at its pin into DEST from the cache (hard links, no network when warm)."""
    dest = Path(dest)
    for e in exclude or []:
        try:
            worktree.rel_parts(e)
        except ZpatchError:
            raise ZpatchError(f"--exclude {e!r}: must be a relative path inside the checkout", Exit.USAGE)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ZpatchError(f"{dest}: already exists and is not empty", Exit.BAD_CHECKOUT,
                          hint=f"apply to it with `zpatch apply {dest}`, or choose a new directory")
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ZpatchError(f"{dest}: cannot create it ({e.strerror})", Exit.BAD_CHECKOUT,
                          hint="choose a destination in a writable directory")
    try:
        fcntl.flock(dest_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # two checkouts into one folder: one wins
    except OSError:
        os.close(dest_fd)
        raise ZpatchError(f"{dest}: another zpatch checkout is filling it", Exit.BUSY,
                          hint="wait for it, then `zpatch status` it; or choose another directory")
    try:
        return _checkout_locked(ov, dest, created, offline, exclude, progress)
    finally:
        os.close(dest_fd)


def _checkout_locked(ov: Overlay, dest: Path, created: bool, offline: bool, exclude: list[str] | None,
                     progress: bool) -> dict:
    if any(dest.iterdir()):   # filled by a run that held the lock before us
        raise ZpatchError(f"{dest}: already exists and is not empty", Exit.BAD_CHECKOUT,
                          hint=f"apply to it with `zpatch apply {dest}`, or choose a new directory")
    try:
        mirrors = {s.upstream.name: cache.ensure(s.upstream.url, s.upstream.commit, offline=offline,
                                                 progress=progress) for s in ov.series}
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    result = {"checkout": str(dest), "upstreams": [], "missing_objects": [], "partial": []}
    try:
        # Parents first: the custom node's clone lands inside the ComfyUI work tree.
        for s in sorted(ov.series, key=lambda s: s.upstream.path.count("/") + (s.upstream.path != ".")):
            up = s.upstream
            repo = dest / up.path
            repo.parent.mkdir(parents=True, exist_ok=True)
            git.run(["clone", "--no-checkout", "--quiet", str(mirrors[up.name]), str(repo)])
            git.run(["remote", "set-url", "origin", up.url], cwd=repo)
            mine = [e[len(up.path) + 1:] if up.path != "." else e for e in exclude or []
                    if up.path == "." or e.startswith(up.path + "/")]
            if mine:
                known = git.tree_blobs(repo, up.commit, mine)
                unknown = [m for m in mine if m not in known and not git.run(
                    ["ls-tree", "-d", up.commit, "--", m.rstrip("/")], cwd=repo).stdout.strip()]
                if unknown:
                    raise ZpatchError(f"--exclude {unknown[0]}: no such path in {up.name} at {up.commit[:12]}",
                                      Exit.USAGE, hint="name a file or folder of the upstream")
                git.run(["sparse-checkout", "set", "--no-cone", "/*", *[f"!/{m}" for m in mine]], cwd=repo)
                absent = [m for m, blob in known.items()
                          if not git.run(["cat-file", "-e", blob], cwd=repo, check=False).ok]
                if absent:
                    # A source that lacks these blobs makes this a partial clone, and git commits over
                    # a missing blob only in a promisor repository with the path out of the work tree:
                    # say so, as a blobless clone does, so that edit mode and plain commits work.
                    git.run(["config", "remote.origin.promisor", "true"], cwd=repo)
                    git.run(["config", "remote.origin.partialclonefilter", "blob:none"], cwd=repo)
                    result["partial"] += [f"{up.path}/{m}" if up.path != "." else m for m in absent]
            r = git.run(["checkout", "--quiet", "--detach", up.commit], cwd=repo, check=False)
            missing = _MISSING.findall(r.stderr)
            if not r.ok and not missing:
                raise ZpatchError(f"git checkout {up.commit[:12]} failed in {repo}: {r.last_line()}",
                                  Exit.ENVIRONMENT)
            result["missing_objects"] += [f"{up.path}/{m}" if up.path != "." else m for m in missing]
            result["upstreams"].append({"name": up.name, "path": up.path, "commit": up.commit,
                                        "url": up.url, "excluded": mine})
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in list(dest.iterdir()):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise
    return result


# ---------------------------------------------------------------- apply

def _fast_noop(ws: Workspace, rec: Record | None) -> bool:
    """True when the checkout already holds exactly this overlay; reads files only, runs no git."""
    if rec is None:
        return False
    for t in ws.targets:
        ur = rec.upstreams.get(t.name)
        if ur is None or [(p.name, p.sha256) for p in ur.patches] != [(p.name, p.sha256) for p in t.series.patches]:
            return False
        if git.head_commit(t.repo) != ur.commit or _edited(t, ur):
            return False
    lo = ws.ov.lock.overlay
    if lo:
        if rec.node is None or rec.node.files != lo.sha256 or rec.node.path != lo.path:
            return False
        for f, want in lo.sha256.items():
            data = worktree.read(ws.checkout, f"{lo.path}/{f}")
            if data is None or record.digest(data) != want:
                return False
    return True


def _preflight(ws: Workspace, rec: Record | None, three_way: bool) -> dict[str, str | None]:
    """Everything that can refuse the apply, checked before anything is written."""
    heads = {}
    for t in ws.targets:
        heads[t.name] = git.head_commit(t.repo)
        if heads[t.name] != t.pin and not three_way:
            at = f"is at {heads[t.name][:12]}" if heads[t.name] else "has a HEAD that cannot be read"
            raise ZpatchError(f"{t.repo}: {t.name} {at}, pinned at {t.pin[:12]}",
                              Exit.BAD_CHECKOUT,
                              hint=f"git -C {t.repo} checkout {t.pin}, or rerun with --3way "
                                   "to merge the patches onto what is there")
    for t in ws.targets:
        ur = rec.upstreams.get(t.name) if rec else None
        if ur:
            edited = _user_edits(t, ur)
            if edited:
                path = t.repo / edited[0]
                if git.tree_blobs(t.repo, "HEAD", [edited[0]]):
                    hint = (f"save your edit (git -C {shlex.quote(str(t.repo))} diff > my.patch), restore the file "
                            f"with git -C {shlex.quote(str(t.repo))} checkout -- {shlex.quote(edited[0])}, then rerun")
                else:      # a patch created it: git knows nothing to diff or check out
                    hint = f"save your edit (cp {shlex.quote(str(path))} ~/), then rm -- {shlex.quote(str(path))} and rerun"
                raise ZpatchError(f"{path}: modified since zpatch applied it; refusing to overwrite",
                                  Exit.BAD_CHECKOUT, hint=hint)
        recorded = set(ur.files) if ur else set()
        fresh = [f for f in t.series.files if f not in recorded]
        head = git.tree_blobs(t.repo, "HEAD", fresh)
        # Hash here against HEAD's blob ids (one cheap git call); only files that look changed
        # go to `git status`, which knows about filters such as core.autocrlf.
        suspects = []
        for f in fresh:
            now = worktree.blob_id(t.top, t.file(f))       # refuses a symlinked path component
            if f not in head and now is not None:
                raise ZpatchError(f"{t.repo / f}: exists, but is neither upstream's nor zpatch's, and a patch "
                                  "creates it", Exit.BAD_CHECKOUT,
                                  hint=f"move it away (mv {t.repo / f} {t.repo / f}.bak), then rerun")
            if now != head.get(f):
                suspects.append(f)
        dirty = git.changed_paths(t.repo, suspects) if suspects else {}
        if dirty:
            f = sorted(dirty)[0]
            raise ZpatchError(f"{t.repo / f}: has uncommitted changes and a patch touches it", Exit.BAD_CHECKOUT,
                              hint=f"commit or stash them first: git -C {t.repo} stash")
    return heads


def _scratch_result(ws: Workspace, t: Target, paths: list[str], current: dict[str, bytes | None],
                    undo: UpstreamRecord | None, then: list[patchfile.Patch], three_way: bool,
                    base: str | None) -> tuple[dict[str, tuple[str, str] | None], dict[str, tuple[str, str]]]:
    """PATHS after taking out what UNDO (zpatch's record) put in and applying THEN, computed in a
    scratch index. Returns path -> (mode, blob, work-tree bytes) or None, and HEAD's entries.
    A fixed number of git processes, however many files and patches.

    The preflight has made sure every path holds upstream's bytes or zpatch's recorded ones, so when
    the record was made on this HEAD, HEAD's own entries are the starting point: no work-tree bytes
    go through git's eol filters (which would turn ComfyUI-GGUF's CRLF into LF under core.autocrlf),
    and a file the user already put back needs nothing. Only on another HEAD are the recorded
    copies reversed from the work tree's bytes."""
    head = git.tree_entries(t.repo, "HEAD", paths)
    reverse = undo is not None and undo.patches and undo.commit != git.head_commit(t.repo)
    with tempfile.TemporaryDirectory(prefix="zpatch-idx-") as tmp:
        idx = git.ScratchIndex(t.repo, tmp)
        idx.read_tree("HEAD")
        if reverse:
            _load_work_tree(t, idx, paths, current, head)
            copies = [record.copy_path(ws.zdir, ref) for ref in undo.patches]
            for ref, c in zip(undo.patches, copies):
                extra = set(patchfile.load(c, ref.name).files) - set(paths)
                if extra:
                    raise ZpatchError(f"{c}: the recorded copy of {ref.name} touches {sorted(extra)[0]}, which the "
                                      "record does not list (tampered)", Exit.BAD_CHECKOUT,
                                      hint=f"inspect {ws.zdir}; move it away to forget the record")
            r = idx.apply(list(reversed(copies)), reverse=True)
            if not r.ok:
                raise ZpatchError(f"{t.repo}: zpatch's copies of the applied patches no longer reverse: "
                                  f"{r.last_line()}", Exit.CONFLICT,
                                  hint="restore the files by hand (git checkout -- <files>) and move "
                                       f"{ws.zdir} away")
        if then:
            r = idx.apply([p.path for p in then], three_way=three_way)
            unmerged = [p for p, e in idx.entries(paths).items() if e[2]]
            if not r.ok or unmerged:
                fails = diagnose.failures(t.repo, base or "HEAD", then, stop_at_first=True)
                first = diagnose.one_line(fails[0]) if fails else r.last_line()
                how = (f"the 3-way merge left conflicts in {', '.join(unmerged)}; " if three_way and unmerged else "")
                raise ZpatchError(f"{t.name}: {how}{first}", Exit.CONFLICT,
                                  hint="nothing was changed; `zpatch check` lists every failing hunk against the "
                                       "pins" + ("" if not three_way else "; or move the upstream back to its pin"),
                                  details={"failures": fails, "conflicted_files": unmerged})
        entries = idx.entries(paths)
        _check_modes(t, then, entries, head)
        present = [p for p in paths if p in entries]
        idx.checkout_to(Path(tmp) / "out", present)      # the bytes git would check out (filters, eol)
        return {p: (entries[p][0], entries[p][1], (Path(tmp) / "out" / p).read_bytes()) if p in entries else None
                for p in paths}, head


def _load_work_tree(t: Target, idx: git.ScratchIndex, paths: list[str], current: dict[str, bytes | None],
                    head: dict[str, tuple[str, str]]) -> None:
    """The work tree's bytes of PATHS into IDX, as git would store them; a file whose upstream blob
    has CRLF keeps its bytes (git's own rule: never renormalize what the index holds with CRLF)."""
    load: dict[str, tuple[str, str] | None] = {p: None for p in paths if current[p] is None and p in head}
    differ = [p for p in paths if current[p] is not None
              and head.get(p, (None, None))[1] != git.hash_object_bytes(current[p])]
    crlf = {p for p in differ if p in head and b"\r\n" in (git.read_blob(t.repo, head[p][1]) or b"")}
    for group, filters in (([p for p in differ if p not in crlf], True), ([p for p in differ if p in crlf], False)):
        for p, blob in zip(group, git.hash_files(t.repo, group, filters=filters)):
            load[p] = (head[p][0] if p in head else "100644", blob)
    idx.set_blobs(load)


def _check_modes(t: Target, then: list[patchfile.Patch], entries: dict, head: dict) -> None:
    """What git made of the modes: only regular files, and only the mode upstream already has."""
    for p, e in entries.items():
        mode = e[0]
        want = head[p][0] if p in head else "100644"
        if mode != want:
            kind = {"120000": "a symlink", "160000": "a submodule (gitlink)"}.get(mode, f"mode {mode}")
            who = next((x.name for x in then if p in x.files), t.name)
            raise ZpatchError(f"{who}: would make {p} {kind}; zpatch writes regular files and keeps their modes",
                              Exit.BAD_OVERLAY, hint="regenerate the patch without the mode change")


def _changes_for(t: Target, paths: list[str], current: dict[str, bytes | None],
                 result: dict[str, tuple[str, str, bytes] | None]) -> tuple[list[Change], dict[str, str | None]]:
    changes, after_ids = [], {}
    for p in paths:
        before = git.hash_object_bytes(current[p]) if current[p] is not None else None
        data = result[p][2] if result[p] else None
        after = git.hash_object_bytes(data) if data is not None else None
        after_ids[p] = after
        if before != after:
            changes.append(Change(t.rel, t.rel, p, before, after, data, executable=result[p][0] == "100755"
                                      if result[p] else False))
    return changes, after_ids


def _node_plan(ws: Workspace, rec: Record | None, install: bool) -> tuple[list[Change], NodeRecord | None]:
    """The node's files: install this overlay's (INSTALL) and remove what zpatch installed before,
    refusing any file zpatch did not put there or that changed since."""
    lo, old = ws.ov.lock.overlay, rec.node if rec else None
    changes = []
    want: dict[str, bytes] = {}
    if install and lo:
        src = ws.ov.overlay_source()
        want = {f"{lo.path}/{f}": (src / f).read_bytes() for f in overlay_files(src)}
        if old is None:
            top = ws.checkout / lo.path
            if top.is_symlink() or (top.exists() and (not top.is_dir() or any(top.iterdir()))):
                raise ZpatchError(f"{top}: exists and was not installed by zpatch", Exit.BAD_CHECKOUT,
                                  hint=f"move it away (mv {top} {top}.bak) and rerun")
    had = {f"{old.path}/{f}": d for f, d in old.files.items()} if old else {}
    for rel in sorted(set(want) | set(had)):
        now = worktree.read(ws.checkout, rel)
        if now is not None:
            if rel not in had:
                raise ZpatchError(f"{ws.checkout / rel}: exists and was not installed by zpatch", Exit.BAD_CHECKOUT,
                                  hint="move it away, then rerun")
            if record.digest(now) != had[rel]:
                raise ZpatchError(f"{ws.checkout / rel}: modified since zpatch installed it; refusing to "
                                  "overwrite or remove it", Exit.BAD_CHECKOUT,
                                  hint="copy your edit elsewhere, delete the file, then rerun")
        before = git.hash_object_bytes(now) if now is not None else None
        data = want.get(rel)
        after = git.hash_object_bytes(data) if data is not None else None
        if before != after:
            changes.append(Change(".", ".", rel, before, after, data, prune=False))
    node = None
    if install and lo:
        # the folders this install creates, so unapply removes exactly those (when empty)
        made = {d for rel in want for d in operation.parent_dirs(rel) if (d + "/").startswith(lo.path + "/")
                and not (ws.checkout / d).exists()}
        node = NodeRecord(lo.path, dict(lo.sha256), sorted(made | set(old.dirs if old and old.path == lo.path else [])))
    return changes, node



def apply(ov: Overlay, checkout: Path | None, *, three_way: bool = False) -> dict:
    ws = Workspace.open(ov, checkout)
    result = {"checkout": str(ws.checkout), "changed": False, "replaced": False, "recovered": None,
              "upstreams": [], "node": ws.node_rel, "files_written": [], "files_removed": []}
    if not ws.journal.exists() and not ws.journal.with_name(ws.journal.name + ".tmp").exists():
        # the no-op fast path reads files only: no lock, no git. A run in flight has a journal (or was
        # killed writing it: the locked path below sweeps what it left).
        rec = ws.load_record()
        if _fast_noop(ws, rec):
            result["upstreams"] = [_up_result(t, rec.upstreams[t.name]) for t in ws.targets]
            return result
    with ws.locked() as recovered:
        result["recovered"] = recovered
        _refuse_in_edit_mode(ws, "apply")
        rec = ws.load_record()
        if _fast_noop(ws, rec):
            result["upstreams"] = [_up_result(t, rec.upstreams[t.name]) for t in ws.targets]
            return result
        heads = _preflight(ws, rec, three_way)
        changes: list[Change] = []
        ups = {}
        for t in ws.targets:
            old = rec.upstreams.get(t.name) if rec else None
            paths = list(dict.fromkeys([*(old.files if old else []), *t.series.files]))
            cur = {p: worktree.read(t.top, t.file(p)) for p in paths}
            res, _head = _scratch_result(ws, t, paths, cur, old, t.series.patches,
                                         three_way and heads[t.name] != t.pin, heads[t.name])
            ch, after = _changes_for(t, paths, cur, res)
            changes += ch
            ups[t.name] = UpstreamRecord(heads[t.name], [PatchRef(p.name, p.sha256) for p in t.series.patches],
                                         {f: after[f] for f in t.series.files},
                                         three_way=heads[t.name] != t.pin)
        node_changes, node = _node_plan(ws, rec, install=True)
        changes += node_changes
        new = Record(ups, node)
        if rec is not None and rec.to_bytes() == new.to_bytes() and not changes:
            result["upstreams"] = [_up_result(t, ups[t.name]) for t in ws.targets]
            return result
        copies = [p.data for t in ws.targets for p in t.series.patches]
        ws.commit("apply", changes, new, copies)
    replaced = [t.name for t in ws.targets if rec and t.name in rec.upstreams
                and rec.upstreams[t.name].patches != ups[t.name].patches]
    result.update(changed=True, replaced=replaced,
                  upstreams=[_up_result(t, ups[t.name]) for t in ws.targets],
                  files_written=[_full(c) for c in changes if c.after], files_removed=[_full(c) for c in changes
                                                                                   if not c.after])
    return result


def _full(c: Change) -> str:
    return c.path if c.root == "." else f"{c.root}/{c.path}"


def _up_result(t: Target, ur: UpstreamRecord) -> dict:
    return {"name": t.name, "path": t.rel, "pin": t.pin, "head": ur.commit, "three_way": ur.three_way,
            "applied": [p.name for p in ur.patches]}


# ---------------------------------------------------------------- unapply

def unapply(ov: Overlay, checkout: Path | None, *, discard: bool = False) -> dict:
    ws = Workspace.open(ov, checkout)
    with ws.locked() as recovered:
        rec = ws.load_record()
        result = {"checkout": str(ws.checkout), "changed": False, "recovered": recovered, "upstreams": [],
                  "node": None, "files_restored": [], "left_edit_mode": []}
        if any(in_edit_mode(t) for t in ws.targets):
            from . import edit      # edit builds on this module
            result["left_edit_mode"] = [u["name"] for u in edit.leave(ws, discard=discard)]
            result["changed"] = True
            rec = ws.load_record()
        if rec is None:
            return result
        for t in ws.targets:
            ur = rec.upstreams.get(t.name)
            edited = _user_edits(t, ur) if ur else []
            if edited:
                raise ZpatchError(f"{t.repo / edited[0]}: modified since zpatch applied it; unapply would lose "
                                  "that edit", Exit.BAD_CHECKOUT,
                                  hint=f"keep a copy of your edit, make the file upstream's again (git -C {t.repo} "
                                       f"checkout -- {edited[0]}, or delete it if a patch created it), then rerun")
        changes: list[Change] = []
        for t in ws.targets:
            ur = rec.upstreams.get(t.name)
            if not ur:
                continue
            paths = list(ur.files)
            cur = {p: worktree.read(t.top, t.file(p)) for p in paths}
            res, head = _scratch_result(ws, t, paths, cur, ur, [], False, None)
            ch, _after = _changes_for(t, paths, cur, res)
            changes += ch
            result["upstreams"].append({"name": t.name, "path": t.rel, "reversed": [p.name for p in ur.patches]})
        node_changes, _ = _node_plan(ws, rec, install=False)
        changes += node_changes
        sweep = _node_caches(ws.checkout, rec.node) if rec.node else []
        ws.commit("unapply", changes, None, [], sweep=sweep)
        if rec.node:
            result["node"] = rec.node.path
            result["node_kept"] = (ws.checkout / rec.node.path).is_dir()   # it holds files that are not ours
    result["changed"] = True
    result["files_restored"] = [_full(c) for c in changes]
    return result


def _node_caches(checkout: Path, node: NodeRecord) -> list[str]:
    """Delete the bytecode Python wrote for exactly the node's modules (a cache, safe to lose even if
    the unapply is rolled back); return the folders to remove when empty: the ones zpatch created
    and those caches. Nothing else is deleted, and never through a symlink."""
    dirs = list(node.dirs)
    for f in node.files:
        p = PurePosixPath(node.path) / f
        if p.suffix == ".py":
            cache = worktree.remove_pyc(checkout, p.parent.as_posix(), p.stem)
            if cache:
                dirs.append(cache)
    return dirs


# ---------------------------------------------------------------- status

def status(ov: Overlay, checkout: Path | None) -> dict:
    """Read-only: never takes the lock or writes; an interrupted run is reported, not repaired."""
    ws = Workspace.open(ov, checkout)
    journal = operation.pending(ws.journal)
    rec = ws.load_record() or Record({})
    out = {"checkout": str(ws.checkout), "upstreams": [], "node": None, "clean": journal is None,
           "interrupted": {"op": journal["op"], "pid": journal["pid"]} if journal else None}
    for t in ws.targets:
        head = git.head_commit(t.repo)
        if in_edit_mode(t):
            out["upstreams"].append(_edit_status(ws, t, head))
            out["clean"] &= out["upstreams"][-1]["edit"]["exported"] and not out["upstreams"][-1]["foreign_changes"]
            continue
        ur = rec.upstreams.get(t.name)
        recorded = {p.name: p.sha256 for p in ur.patches} if ur else {}
        modified_files = set(_edited(t, ur)) if ur else set()
        unrecorded = [p for p in t.series.patches if p.name not in recorded]
        found = diagnose.classify(t.repo, unrecorded, t.series.files) if unrecorded else {}
        patches = []
        for p in t.series.patches:
            if p.name not in recorded:
                s = found[p.name]           # applied by hand (git am), missing, or conflicting
            elif recorded[p.name] != p.sha256:
                s = "outdated"              # an older version of this patch is applied
            elif modified_files & set(p.files):
                s = "modified"              # applied, then edited by hand
            else:
                s = "applied"
            patches.append({"name": p.name, "state": s})
        foreign = [{"path": f, "git_status": code} for f, code in sorted(git.changed_paths(t.repo).items())
                   if f not in t.series.files and not _inside_nested(t, ws.targets, f)]
        entry = {"name": t.name, "path": t.rel, "pin": t.pin, "head": head, "at_pin": head == t.pin,
                 "three_way": bool(ur and ur.three_way), "patches": patches, "foreign_changes": foreign}
        out["upstreams"].append(entry)
        if not entry["at_pin"] or foreign or any(p["state"] != "applied" for p in patches):
            out["clean"] = False
    lo = ov.lock.overlay
    if lo:
        files = {}
        for f, d in lo.sha256.items():
            try:
                data = worktree.read(ws.checkout, f"{lo.path}/{f}")
            except ZpatchError:
                data = b"\0symlink"
            files[f] = "missing" if data is None else ("ok" if record.digest(data) == d else "modified")
        vals = set(files.values())
        out["node"] = {"path": lo.path, "files": files,
                       "state": "installed" if vals == {"ok"} else ("missing" if vals == {"missing"} else "modified")}
        if out["node"]["state"] != "installed" and not any(u.get("edit") for u in out["upstreams"]):
            out["clean"] = False       # in edit mode the node is not installed: it is edited in the overlay
    return out


def _edit_status(ws: Workspace, t: Target, head: str | None) -> dict:
    """An upstream in edit mode: its commits as export would write them."""
    from . import edit
    sp = edit.plan(ws, t, allow_dirty=True)
    states = {"unchanged": "committed", "changed": "changed", "new": "new"}
    patches = [{"name": p.name, "state": states[p.state]} for p in sp.patches]
    patches += [{"name": n, "state": "dropped"} for n in sp.removed]
    foreign = [{"path": f, "git_status": code} for f, code in sorted(git.changed_paths(t.repo).items())
               if not _inside_nested(t, ws.targets, f)]
    return {"name": t.name, "path": t.rel, "pin": t.pin, "head": head, "at_pin": head == t.pin, "three_way": False,
            "patches": patches, "foreign_changes": foreign,
            "edit": {"branch": git.EDIT_BRANCH, "commits": len(sp.patches), "exported": not sp.changed}}


def _inside_nested(t: Target, targets: list[Target], rel: str) -> bool:
    """A path inside an upstream nested in T's tree is that upstream's business (its own status
    covers it); everything else in T, including inside nested folders of T, is T's."""
    abs_path = t.repo / rel
    return any(o is not t and o.repo != t.repo and t.repo in o.repo.parents
               and (o.repo == abs_path or o.repo in abs_path.parents) for o in targets)
