"""Authoring the patches as commits: `edit` turns each patch into a commit on a branch on top of its
pin, the maintainer works with plain git (amend, new commits, rebase -i, drop), and `export` writes
the series back, byte-stable, rewriting only what changed.

Where things live in each upstream repository of the checkout:
  refs/zpatch/base     the pin the edit branch starts from
  zpatch/edit          the branch, checked out
  refs/notes/zpatch    commit -> the patch file it came from (git carries notes through amend and
                       rebase because edit sets notes.rewriteRef), so a reworded or reordered commit
                       keeps its file name
"""
from __future__ import annotations

import tempfile
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import cache, git, patchfile, patchset, series as seriesmod, workspace
from .errors import Exit, ZpatchError
from .patchset import Overlay
from .worktree import write_atomic


def _dirty(t: workspace.Target) -> list[str]:
    """Tracked files with uncommitted changes (untracked files are the user's business)."""
    out = git.run(["status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd=t.repo).stdout
    return [e[3:] for e in out.split("\0") if e]


def edit(ov: Overlay, checkout: Path | None) -> dict:
    """Each upstream's series becomes commits on `zpatch/edit` over its pin, checked out."""
    ws = workspace.Workspace.open(ov, checkout)
    for t in ws.targets:
        if workspace.in_edit_mode(t):
            raise ZpatchError(f"{t.repo}: already in edit mode", Exit.BAD_CHECKOUT,
                              hint=f"`zpatch export {ws.checkout}` writes the patches; `zpatch unapply "
                                   f"{ws.checkout}` leaves edit mode")
        if git.head_commit(t.repo) != t.pin:
            raise ZpatchError(f"{t.repo}: {t.name} is not at its pin {t.pin[:12]}", Exit.BAD_CHECKOUT,
                              hint=f"git -C {t.repo} checkout --detach {t.pin}")
    rec = ws.load_record()
    for t in ws.targets:
        if git.rev_parse(t.repo, f"refs/heads/{git.EDIT_BRANCH}"):
            raise ZpatchError(f"{t.repo}: a branch {git.EDIT_BRANCH} already exists", Exit.BAD_CHECKOUT,
                              hint=f"rename or delete it (git -C {t.repo} branch -m {git.EDIT_BRANCH} my-old-edit)")
        ours = set(rec.upstreams[t.name].files) if rec and t.name in rec.upstreams else set()
        head = git.tree_blobs(t.repo, "HEAD", t.series.files)
        for f in t.series.files:   # a file a patch creates must not be there already (git switch would refuse)
            if f not in head and f not in ours and os.path.lexists(t.repo / f):
                raise ZpatchError(f"{t.repo / f}: exists, and a patch creates it", Exit.BAD_CHECKOUT,
                                  hint=f"move it away (mv {t.repo / f} {t.repo / f}.bak), then rerun")
    for t in ws.targets:   # files zpatch applied are its own to take back; anything else must be clean
        ours = set(rec.upstreams[t.name].files) if rec and t.name in rec.upstreams else set()
        dirty = [f for f in _dirty(t) if f not in ours]
        if dirty:
            raise ZpatchError(f"{t.repo / dirty[0]}: has uncommitted changes", Exit.BAD_CHECKOUT,
                              hint=f"commit or stash them first (git -C {t.repo} stash); a file a partial "
                                   "mirror left out: `zpatch checkout --exclude PATH`")
    if rec is not None:
        workspace.unapply(ov, ws.checkout)     # from zpatch's own apply back to pristine, transactionally
    result = {"checkout": str(ws.checkout), "upstreams": []}
    with ws.locked():
        for t in ws.targets:
            with tempfile.TemporaryDirectory(prefix="zpatch-edit-") as tmp:
                commits = git.ScratchIndex(t.repo, tmp).commit_patches(t.pin, [p.path for p in t.series.patches])
            for c, p in zip(commits, t.series.patches):
                git.add_note(t.repo, c, p.name)
            tip = commits[-1] if commits else t.pin
            r = git.run(["switch", "--quiet", "-c", git.EDIT_BRANCH, tip], cwd=t.repo, check=False)
            if not r.ok:    # nothing of edit mode may be left half made: undo the upstreams done so far
                _leave_one(t)
                for done in result["upstreams"]:
                    _leave_one(next(x for x in ws.targets if x.name == done["name"]))
                raise ZpatchError(f"{t.repo}: git could not check out the edit branch: {r.last_line()}",
                                  Exit.BAD_CHECKOUT, hint="make the checkout clean, then rerun `zpatch edit`")
            git.run(["config", "--replace-all", "notes.rewriteRef", git.ZPATCH_NOTES, "^refs/notes/zpatch$"],
                    cwd=t.repo)
            git.run(["update-ref", git.EDIT_BASE, t.pin], cwd=t.repo)
            result["upstreams"].append({"name": t.name, "path": t.rel, "base": t.pin, "branch": git.EDIT_BRANCH,
                                        "commits": [{"commit": c, "patch": p.name}
                                                    for c, p in zip(commits, t.series.patches)]})
    return result


@dataclass
class PatchOut:
    name: str
    data: bytes
    state: str                 # unchanged, changed, new
    commit: str | None = None


@dataclass
class SeriesPlan:
    target: workspace.Target
    patches: list[PatchOut]
    removed: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.patches]

    @property
    def reordered(self) -> bool:
        """The patches kept are in another order (appending or dropping is not reordering)."""
        old = [p.name for p in self.target.series.patches]
        return [n for n in self.names if n in old] != [n for n in old if n in self.names]

    @property
    def series_changed(self) -> bool:
        return self.names != [p.name for p in self.target.series.patches]

    @property
    def changed(self) -> bool:
        return self.series_changed or any(p.state != "unchanged" for p in self.patches)


def _check_fences(t: workspace.Target, commit: str, fences: list[str]) -> None:
    """A commit of the parent may not write into a nested repository or the node's folder."""
    files = git.run(["diff-tree", "--no-commit-id", "--name-only", "-r", "-z", commit], cwd=t.repo).stdout
    for f in filter(None, files.split("\0")):
        full = f if t.rel == "." else f"{t.rel}/{f}"
        hit = next((x for x in fences if (full + "/").startswith(x + "/")), None)
        if hit:
            raise ZpatchError(f"{t.repo}: commit {commit[:12]} touches {full}, inside {hit}", Exit.BAD_CHECKOUT,
                              hint=f"move that change to the repository at {hit} (or, for the node, to the "
                                   "overlay's node folder)")


def plan(ws: workspace.Workspace, t: workspace.Target, *, allow_dirty: bool = False) -> SeriesPlan:
    """What export would write for T: each commit of the edit branch as a patch file.
    ALLOW_DIRTY: for `status`, which reports uncommitted changes itself."""
    base = git.rev_parse(t.repo, git.EDIT_BASE)
    if base is None:
        raise ZpatchError(f"{t.repo}: not in edit mode", Exit.BAD_CHECKOUT,
                          hint=f"start with `zpatch edit {ws.checkout}`")
    if base != t.pin:
        raise ZpatchError(f"{t.repo}: the edit branch starts at {base[:12]}, but upstream.lock pins {t.pin[:12]}",
                          Exit.BAD_CHECKOUT, hint="the pin moved since `zpatch edit`: leave edit mode "
                                                  "(zpatch unapply) and edit again")
    branch = git.run(["symbolic-ref", "-q", "HEAD"], cwd=t.repo, check=False).stdout.strip()
    if branch != f"refs/heads/{git.EDIT_BRANCH}":
        raise ZpatchError(f"{t.repo}: HEAD is not on {git.EDIT_BRANCH} (edit mode is half made, or you switched away)",
                          Exit.BAD_CHECKOUT, hint=f"git -C {t.repo} switch {git.EDIT_BRANCH}, or leave edit mode: "
                                                  "zpatch unapply --discard")
    if not git.run(["merge-base", "--is-ancestor", base, "HEAD"], cwd=t.repo, check=False).ok:
        raise ZpatchError(f"{t.repo}: HEAD does not descend from the edit base {base[:12]}", Exit.BAD_CHECKOUT,
                          hint=f"git -C {t.repo} switch {git.EDIT_BRANCH}")
    merges = git.rev_list(t.repo, f"{base}..HEAD", "--merges")
    if merges:
        raise ZpatchError(f"{t.repo}: commit {merges[0][:12]} is a merge; a series is a straight line of commits",
                          Exit.BAD_CHECKOUT, hint=f"git -C {t.repo} rebase -i {base[:12]} to linearize it")
    dirty = [] if allow_dirty else _dirty(t)
    if dirty:
        raise ZpatchError(f"{t.repo / dirty[0]}: has uncommitted changes; export writes commits only",
                          Exit.BAD_CHECKOUT, hint=f"commit them (git -C {t.repo} commit -a --amend or a new "
                                                  "commit) or stash them")
    fences = [o.rel for o in ws.targets if o.rel != t.rel and o.rel != "."]
    fences += [ws.node_rel] if ws.node_rel else []

    existing = {p.name: p for p in t.series.patches}
    commits = git.rev_list(t.repo, f"{base}..HEAD")
    for c in commits:
        _check_fences(t, c, fences)
    notes = [git.note(t.repo, c) for c in commits]
    claimed = {}                     # existing file -> the first commit that carries its name
    for c, n in zip(commits, notes):
        if n in existing:
            claimed.setdefault(n, c)
    out: list[PatchOut] = []
    used: set[str] = set()
    for i, (c, src) in enumerate(zip(commits, notes), 1):
        data = git.format_patch(t.repo, c)
        try:
            patchfile.parse(f"commit {c[:12]}", data)     # what check will demand of the file
        except ZpatchError as e:
            raise ZpatchError(f"{t.repo}: commit {c[:12]} cannot become a patch: {e.message}", Exit.BAD_CHECKOUT,
                              hint=f"amend or drop it (git -C {t.repo} rebase -i {base[:12]})")
        if src in existing and claimed[src] == c:
            old = existing[src]
            data = patchfile.keep_headers(data, old.data)
            p = PatchOut(src, old.data if data == old.data else data,
                         "unchanged" if data == old.data else "changed", c)
        else:
            name = git.format_patch_name(t.repo, c, i)
            if name in existing and name not in claimed and existing[name].data == data:
                p = PatchOut(name, data, "unchanged", c)     # exported before, its note lost (cherry-pick)
            elif name in used or name in claimed:
                raise ZpatchError(f"{t.repo}: commit {c[:12]} would be exported as {name}, a name another patch "
                                  "has", Exit.BAD_CHECKOUT,
                                  hint="reword its subject (git commit --amend, or rebase -i with reword)")
            else:
                p = PatchOut(name, data, "new", c)
        used.add(p.name)
        out.append(p)
    return SeriesPlan(t, out, [n for n in existing if n not in used])


def export(ov: Overlay, checkout: Path | None, *, check: bool = False) -> dict:
    """Write patches/<upstream>/, its series and upstream.lock from the edit branches. CHECK: write
    nothing, report what would change (exit 1 when anything would)."""
    if not check and patchset.is_installed_copy(ov.root):
        raise ZpatchError(f"{ov.root}: is the overlay bundled into an installed zpatch", Exit.BAD_OVERLAY,
                          hint="export into the overlay's repository: pass --overlay DIR")
    ws = workspace.Workspace.open(ov, checkout)
    plans = [plan(ws, t) for t in ws.targets]
    result = {"overlay": str(ov.root), "checkout": str(ws.checkout), "check": check,
              "changed": any(p.changed for p in plans), "upstreams": []}
    for sp in plans:
        result["upstreams"].append({
            "name": sp.target.name, "reordered": sp.reordered, "removed": sp.removed,
            "patches": [{"name": p.name, "state": p.state, "commit": p.commit,
                         "missing_headers": _missing_headers(p.data)} for p in sp.patches]})
    if check or not result["changed"]:
        return result
    for sp in plans:
        d = sp.target.series.directory
        for p in sp.patches:
            if p.state != "unchanged":
                _write(d / p.name, p.data)
            if p.state == "new":    # the commit now has a file: name it, so the next export keeps it
                git.add_note(sp.target.repo, p.commit, p.name)
        if sp.series_changed:
            _write(d / seriesmod.SERIES_NAME, "".join(n + "\n" for n in sp.names).encode())
        for name in sp.removed:
            (d / name).unlink(missing_ok=True)
    result["lock_changed"] = patchset.write_lock(ov.root)
    return result


def _missing_headers(data: bytes) -> list[str]:
    """DEP-3 headers `zpatch check` requires that the commit message lacks."""
    from .check import REQUIRED_HEADERS
    from .patchfile import parse
    headers = parse("export", data).headers
    return [alts[0] for alts in REQUIRED_HEADERS if not any(a in headers for a in alts)]


def _write(path: Path, data: bytes) -> None:
    if path.is_symlink():
        raise ZpatchError(f"{path}: is a symlink; export writes patches only as plain files", Exit.BAD_OVERLAY,
                          hint="replace the link with a file")
    write_atomic(path, data)        # synced: the lock written after it names its hash


def canonical(ov: Overlay, *, offline: bool = False) -> dict:
    """`export --check` without a checkout: is every patch file exactly what export would write for
    it? Commits each series on its pin in a scratch object store over the cache (nothing is written
    to the cache or anywhere else) and formats each commit back."""
    result = {"overlay": str(ov.root), "check": True, "changed": False, "upstreams": []}
    for s in ov.series:
        mirror = cache.ensure(s.upstream.url, s.upstream.commit, offline=offline)
        entry = {"name": s.upstream.name, "reordered": False, "removed": [], "patches": []}
        with tempfile.TemporaryDirectory(prefix="zpatch-canon-") as tmp:
            idx = git.ScratchIndex(mirror, tmp, read_only=True)
            commits = idx.commit_patches(s.upstream.commit, [p.path for p in s.patches])
            for c, p in zip(commits, s.patches):
                data = patchfile.keep_headers(idx.format_patch(c), p.data)
                state = "unchanged" if data == p.data else "changed"
                entry["patches"].append({"name": p.name, "state": state, "commit": None})
                result["changed"] |= state != "unchanged"
        result["upstreams"].append(entry)
    return result


def leave(ws: workspace.Workspace, *, discard: bool = False) -> list[dict]:
    """unapply in edit mode: back to the pin, the branch and refs gone. Refuses to drop commits that
    were not exported unless DISCARD."""
    out = []
    plans = {}
    for t in ws.targets:
        if not workspace.in_edit_mode(t):
            continue
        dirty = _dirty(t)
        if dirty:
            raise ZpatchError(f"{t.repo / dirty[0]}: has uncommitted changes", Exit.BAD_CHECKOUT,
                              hint=f"commit and `zpatch export`, or stash them (git -C {t.repo} stash)")
        if not discard:
            plans[t.name] = plan(ws, t)
            if plans[t.name].changed:
                raise ZpatchError(f"{t.repo}: the edit branch has changes that are not exported", Exit.BAD_CHECKOUT,
                                  hint=f"`zpatch export {ws.checkout}` first, or `zpatch unapply --discard` "
                                       "to drop them")
    for t in ws.targets:
        if not workspace.in_edit_mode(t):
            continue
        r = git.run(["switch", "--quiet", "--detach", t.pin], cwd=t.repo, check=False)
        if not r.ok:
            raise ZpatchError(f"{t.repo}: git could not go back to the pin: {r.last_line()}", Exit.BAD_CHECKOUT,
                              hint="move the files git names out of the way, then rerun")
        _leave_one(t)
        out.append({"name": t.name, "path": t.rel, "left_edit_mode": True})
    return out


def _leave_one(t: workspace.Target) -> None:
    """Edit mode's refs, branch, notes and config gone from T (HEAD already back on the pin)."""
    git.run(["switch", "--quiet", "--detach", t.pin], cwd=t.repo, check=False)
    git.run(["branch", "-D", git.EDIT_BRANCH], cwd=t.repo, check=False)
    git.run(["update-ref", "-d", git.EDIT_BASE], cwd=t.repo, check=False)
    git.run(["update-ref", "-d", git.ZPATCH_NOTES], cwd=t.repo, check=False)
    git.run(["config", "--unset-all", "notes.rewriteRef", "^refs/notes/zpatch$"], cwd=t.repo, check=False)

