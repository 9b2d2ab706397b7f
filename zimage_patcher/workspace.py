"""A ComfyUI checkout as zpatch sees it: its upstream repositories (Target), the checkout as a whole
(Workspace: its lock, its journal, its record), and which recorded files someone edited since.
The commands on it live in clone.py, apply.py, edit.py and status.py."""
from __future__ import annotations

import os
import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import git, locks, operation, paths, record, worktree
from .errors import Exit, ZpatchError, from_oserror
from .operation import Change
from .patchset import Overlay, Series, cwd
from .record import Record, UpstreamRecord


@dataclass
class Target:
    series: Series
    repo: Path
    top: Path          # the checkout: every file is read and written relative to it, so that a
                       # symlink anywhere on the way, the nested repository's folder included, is refused

    def file(self, path: str) -> str:
        """PATH of this upstream, relative to the checkout."""
        return paths.under(self.rel, path)

    @property
    def name(self) -> str:
        return self.series.upstream.name

    @property
    def pin(self) -> str:
        return self.series.upstream.commit

    @property
    def rel(self) -> str:
        return self.series.upstream.path


def node_folder(top: Path) -> list[str]:
    """The files in the installed node's folder (no link followed, no bytecode cache), by relative path."""
    out = []
    if top.is_dir() and not top.is_symlink():
        for p in sorted(top.rglob("*")):
            rel = p.relative_to(top)
            if "__pycache__" in rel.parts or p.suffix == ".pyc" or p.is_symlink() or not p.is_file():
                continue
            out.append(rel.as_posix())
    return out


def holds_root(ov: Overlay, folder: Path) -> bool:
    """FOLDER holds the root upstream's tree (ComfyUI): a folder of a file its patches change is there
    (or the file itself, for one at the top). Not a file: an edit may have removed it."""
    root = next((s for s in ov.series if s.upstream.path == "."), None)
    if root is None:
        return True
    return any((folder / PurePosixPath(f).parent).is_dir() if "/" in f else os.path.lexists(folder / f)
               for f in root.files)


def make_one_hint(folder: Path, ov: Overlay) -> str:
    """What to do with FOLDER, which is no checkout: name the checkout just inside it, if one is there;
    else make one, in FOLDER when it is empty or absent, in a new folder inside it when not."""
    folder = Path(folder)
    try:
        inside = sorted(folder.iterdir())
    except OSError:
        inside = []
    found = [d for d in inside if d.is_dir() and not d.is_symlink() and git.git_dir_of(d) is not None
             and holds_root(ov, d)]
    if len(found) == 1:
        return f"pass the checkout itself, {shlex.quote(str(found[0]))}, not the folder around it"
    if found:      # naming one would act on a checkout the user may not mean
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        return (f"pass the checkout itself, not the folder around it; it holds {len(found)}: "
                + ", ".join(shlex.quote(str(d)) for d in found[:3]) + more)
    names = ("ComfyUI", *(f"ComfyUI-{i}" for i in range(2, 1000)))
    target = folder if not inside else next((folder / n for n in names if not os.path.lexists(folder / n)), folder)
    return f"make one with `zpatch checkout {shlex.quote(str(target))} --apply`"


def find_checkout(path: Path, ov: Overlay) -> Path:
    """The checkout that PATH lies in, found as git finds its top level (the nearest folder up with
    a .git), without running git: from inside ComfyUI/comfy or inside the nested ComfyUI-GGUF,
    zpatch acts on the ComfyUI checkout, whether PATH was named or is the current directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    here = path.resolve()
    top = next((d for d in (here, *here.parents) if git.git_dir_of(d) is not None), None)
    if top is None:
        raise ZpatchError(f"{here}: not inside a ComfyUI checkout (no .git here or above)", Exit.BAD_CHECKOUT,
                          hint=make_one_hint(here, ov))
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
                          hint=f"create it with `zpatch checkout {shlex.quote(str(checkout))} --apply`")
    checkout = checkout.resolve()
    targets = []
    for s in sorted(ov.series, key=lambda s: s.upstream.path != "."):
        up = s.upstream
        repo = (checkout / up.path).resolve()
        if checkout not in (repo, *repo.parents):
            raise ZpatchError(f"{up.path}: resolves outside {checkout} (symlink?)", Exit.BAD_CHECKOUT,
                              hint="replace the symlink with a real clone")
        q = shlex.quote(str(repo))
        clone = f"git clone {up.url} {q} && git -C {q} checkout --detach {up.commit}"
        if not repo.is_dir():
            if up.path == ".":
                raise ZpatchError(f"{repo}: no such directory", Exit.BAD_CHECKOUT,
                                  hint=f"create it with `zpatch checkout {q} --apply`")
            raise ZpatchError(f"{repo}: {up.name} is missing", Exit.BAD_CHECKOUT, hint=clone)
        if up.path == "." and not holds_root(ov, repo):
            raise ZpatchError(f"{repo}: not a ComfyUI checkout (it lacks the folders {up.name}'s patches change)",
                              Exit.BAD_CHECKOUT, hint=make_one_hint(repo, ov))
        if git.git_dir_of(repo) is None:
            # the root has a .git here (find_checkout): this is a nested upstream's folder
            top = git.toplevel(repo)
            why = "not a git repository" if top is None else f"not its own git repository (git would act on {top})"
            raise ZpatchError(f"{repo}: {why}", Exit.BAD_CHECKOUT,
                              hint=f"move it away and clone {up.name} there: mv {q} {shlex.quote(str(repo) + '.bak')} "
                                   f"&& {clone}")
        targets.append(Target(s, repo, checkout))
    return targets


@dataclass
class Workspace:
    ov: Overlay
    checkout: Path
    targets: list[Target]
    zdir: Path

    @classmethod
    def open(cls, ov: Overlay, checkout: Path | None) -> "Workspace":
        """CHECKOUT as named; None: the checkout around the current directory."""
        checkout = find_checkout(cwd() if checkout is None else Path(checkout), ov)
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
        record.check_zdir(self.zdir)
        try:
            self.zdir.mkdir(exist_ok=True)
            held = locks.checkout(self.zdir, self.checkout).__enter__()
        except OSError as e:
            raise from_oserror(e, "cannot write there", path=self.zdir, code=Exit.BAD_CHECKOUT,
                               hint="apply, unapply and edit need a writable checkout (not a read-only mount); "
                                    "`zpatch status` works read-only")
        try:
            said = operation.recover(self.checkout, self.journal, self.zdir / record.RECORD_NAME)
            if said:
                record.collect_garbage(self.zdir, record.load(self.zdir))
            # temp files of a run killed before its journal existed: nothing to roll, only litter
            for tmp in [*self.zdir.glob("*.tmp"), *self.zdir.glob("patches/*.tmp")]:
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink()
            yield said
        finally:
            held.__exit__()

    def commit(self, kind: str, changes: list[Change], new: Record | None, copies: list[bytes],
               sweep: list[str] = ()) -> None:
        """CHANGES as one transaction whose commit point is the record (the patch copies it names
        are stored first; the ones it no longer names are collected after)."""
        operation.commit(self.checkout, self.journal, kind, changes, self.zdir / record.RECORD_NAME,
                         new.to_bytes() if new else None, sweep=sweep,
                         prepare=lambda: record.store_copies(self.zdir, copies))
        record.collect_garbage(self.zdir, new)
        record.remember_overlay(self.zdir, self.ov.root)    # zpatch run inside the checkout finds this overlay

    def node_files(self) -> dict[str, str]:
        """Each file of the overlay's node in the checkout: ok (the locked bytes), modified or missing
        (a symlink in the way counts as modified: zpatch never reads through one)."""
        lo = self.ov.lock.overlay
        out = {}
        for f, want in (lo.sha256.items() if lo else ()):
            try:
                data = worktree.read(self.checkout, f"{lo.path}/{f}")
            except ZpatchError:
                data = b"\0symlink"
            out[f] = "missing" if data is None else ("ok" if record.digest(data) == want else "modified")
        return out

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
            if ur and edited(t, ur) and not git.changed_paths(t.repo, list(ur.files)):
                del rec.upstreams[t.name]    # every file is upstream's again: nothing of ours is left
        return rec


def edited(t: Target, ur: UpstreamRecord) -> list[str]:
    """Paths whose bytes differ from what zpatch left there."""
    return [f for f, want in ur.files.items() if worktree.blob_id(t.top, t.file(f)) != want]


def user_edits(t: Target, ur: UpstreamRecord) -> list[str]:
    """Paths changed since zpatch wrote them, and not simply put back to upstream's (git status,
    which knows eol conversion, decides): those hold someone's work."""
    changed = edited(t, ur)
    return sorted(git.changed_paths(t.repo, changed)) if changed else []


def copy_aside(top: Path, rel: str, label: str) -> str:
    """The command that keeps a copy of TOP/REL in ~, named after LABEL, the file and its bytes' own blob
    id: following it for several files, or twice, never writes over an earlier copy."""
    try:
        blob = (worktree.blob_id(top, rel) or "gone")[:12]
    except ZpatchError:          # a symlink there: cp copies what it points to
        blob = "link"
    return f"cp -- {shlex.quote(str(Path(top) / rel))} ~/{shlex.quote(f'zpatch-saved-{label}-{PurePosixPath(rel).name}-{blob}')}"


def aside_steps(top: Path, repo: Path, files: list[str], label: str) -> list[str]:
    """Commands that keep a copy of each of FILES (of REPO, inside the checkout TOP) in ~ and make it
    upstream's again (git checkout), or absent where a patch created it, so apply can write it again."""
    upstream_has = git.tree_blobs(repo, "HEAD", files)
    steps = []
    for f in files:
        if os.path.lexists(repo / f):            # a deleted file has nothing to keep
            steps.append(copy_aside(top, Path(repo / f).relative_to(top).as_posix(), label))
        steps.append(f"git -C {shlex.quote(str(repo))} checkout -- {shlex.quote(f)}" if f in upstream_has
                     else f"rm -f -- {shlex.quote(str(repo / f))}")      # a patch created it (maybe gone too)
    return steps


def edits_since_apply(ws: "Workspace", rec) -> list[tuple[Target, str]]:
    """Every file of every upstream changed since zpatch wrote it and not simply put back (user_edits)."""
    return [(t, f) for t in ws.targets if rec is not None and t.name in rec.upstreams
            for f in user_edits(t, rec.upstreams[t.name])]


def refuse_edits(edits: list[tuple[Target, str]], why: str, then: str) -> ZpatchError:
    """The refusal for EDITS (edits_since_apply), naming the first and counting the rest: refresh folds
    them into their patches; or, in one command, a copy of each is kept in ~ (never over an earlier
    copy), upstream's bytes are put back (or a file a patch created removed), and THEN runs again."""
    steps, groups = [], []           # (target, its files), in order (a Target is not hashable)
    for t, f in edits:
        if not groups or groups[-1][0] is not t:
            groups.append((t, []))
        groups[-1][1].append(f)
    for t, files in groups:
        steps += aside_steps(t.top, t.repo, files, t.name)
    t, f = edits[0]
    more = f" (and {len(edits) - 1} more file(s))" if len(edits) > 1 else ""
    return ZpatchError(f"{t.repo / f}: modified since zpatch applied it{more}; {why}", Exit.BAD_CHECKOUT,
                       hint=f"`zpatch refresh {shlex.quote(str(t.top))}` folds your edits into their patches (it asks, "
                            "with --into or --new, where no single patch owns an edit); or "
                            f"keep a copy of each file and go on without the edits: `{' && '.join([*steps, then])}`")


