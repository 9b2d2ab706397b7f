"""Edit mode, the checkout's side: the patches of a series as commits on a branch over its pin.

Where things live in each upstream repository of the checkout:
  refs/zpatch/base     the pin the edit branch starts from: edit mode has begun (written first, removed last)
  refs/zpatch/overlay  a blob: the series (patch names and sha256) the branch was made from, so that an
                       export notices when the overlay moved on since (as `git push` notices a
                       non-fast-forward)
  zpatch/edit          the branch, checked out
  refs/notes/zpatch    commit -> the patch file it came from (git carries notes through amend and
                       rebase because edit sets notes.rewriteRef), so a reworded or reordered commit
                       keeps its file name

Entering and leaving take several git steps. Their order makes a run killed between any two of them
finishable by the next command: `edit` redoes a half-made edit mode (no branch yet: nothing of the
user's exists), `unapply` finishes a half-left one (the branch, if still there, is judged by its own
commits, not by HEAD).
"""
from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass, field

from . import git, patchfile
from .errors import Exit, ZpatchError, git_cause
from .patchset import Series
from .workspace import Target, Workspace

BASE = git.EDIT_BASE
OVERLAY = "refs/zpatch/overlay"
BRANCH = git.EDIT_BRANCH
BRANCH_REF = f"refs/heads/{BRANCH}"


def active(t: Target) -> bool:
    """Edit mode has begun in T (and not been left completely)."""
    return git.rev_parse(t.repo, BASE) is not None


def refuse(ws: Workspace, command: str) -> None:
    t = next((t for t in ws.targets if active(t)), None)
    if t is not None:
        raise ZpatchError(f"{t.repo}: is in edit mode (the patches are commits on {BRANCH})", Exit.BAD_CHECKOUT,
                          hint=f"`zpatch export {ws.checkout}` then `zpatch unapply {ws.checkout}` to leave it "
                               f"before {command}")


def series_stamp(s: Series) -> list[list[str]]:
    """What a series is, for the edit base: its patches' names and hashes, in order."""
    return [[p.name, p.sha256] for p in s.patches]


def base_stamp(t: Target) -> list[list[str]] | None:
    """The series T's edit branch was made from; None when edit mode predates the record."""
    blob = git.rev_parse(t.repo, OVERLAY, "blob")
    data = git.read_blob(t.repo, blob) if blob else None
    try:
        stamp = json.loads(data.decode("utf-8"))["patches"] if data else None
        if stamp is not None and not all(isinstance(n, str) and isinstance(h, str) for n, h in stamp):
            raise ValueError
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise ZpatchError(f"{t.repo}: {OVERLAY} does not name a series zpatch recorded", Exit.BAD_CHECKOUT,
                          hint=f"git -C {t.repo} update-ref -d {OVERLAY} forgets it (export then cannot tell "
                               "whether the overlay moved on)")
    return stamp


def record_base(t: Target, stamp: list[list[str]]) -> None:
    """After an export: the branch now matches the overlay (a push updating its tracking ref)."""
    blob = git.run(["hash-object", "-w", "--stdin"], cwd=t.repo,
                   input=json.dumps({"patches": stamp})).stdout.strip()
    git.run(["update-ref", OVERLAY, blob], cwd=t.repo)


def enter(t: Target) -> list[str]:
    """Make T's series into commits on the edit branch over the pin and check it out (T is at its pin,
    clean, and has no branch of that name). The commits, one per patch."""
    with tempfile.TemporaryDirectory(prefix="zpatch-edit-") as tmp:
        commits = git.ScratchIndex(t.repo, tmp).commit_patches(t.pin, [p.path for p in t.series.patches])
    blob = git.run(["hash-object", "-w", "--stdin"], cwd=t.repo,
                   input=json.dumps({"patches": series_stamp(t.series)})).stdout.strip()
    # one ref transaction: edit mode has begun, from this pin and this series
    git.run(["update-ref", "--stdin"], cwd=t.repo,
            input=f"start\nupdate {BASE} {t.pin}\nupdate {OVERLAY} {blob}\ncommit\n")
    for c, p in zip(commits, t.series.patches):
        git.add_note(t.repo, c, p.name)
    git.run(["config", "--replace-all", "notes.rewriteRef", git.ZPATCH_NOTES, "^refs/notes/zpatch$"], cwd=t.repo)
    args = ["switch", "--quiet", "-c", BRANCH, commits[-1] if commits else t.pin]
    r = git.run(args, cwd=t.repo, check=False)
    if not r.ok:
        forget(t)
        raise git_cause(args, t.repo, r.returncode, r.stderr) or ZpatchError(
            f"{t.repo}: git could not check out the edit branch: {r.last_line()}",
            Exit.BAD_CHECKOUT, hint="make the checkout clean, then rerun `zpatch edit`")
    return commits


def half_made(t: Target) -> bool:
    """An `edit` killed before it checked out the branch: edit mode begun, no branch yet."""
    return active(t) and git.rev_parse(t.repo, BRANCH_REF) is None


def on_branch(t: Target) -> bool:
    return git.run(["symbolic-ref", "-q", "HEAD"], cwd=t.repo, check=False).stdout.strip() == BRANCH_REF


def half_left(t: Target) -> bool:
    """An `unapply` killed after it took HEAD off the branch, before it deleted the branch: HEAD
    detached at the pin, the branch (and whatever it holds) still there, nothing uncommitted."""
    return (active(t) and git.rev_parse(t.repo, BRANCH_REF) is not None and not on_branch(t)
            and git.head_commit(t.repo) == t.pin and not dirty(t))


def dirty(t: Target) -> list[str]:
    """Tracked files with uncommitted changes (untracked files are the user's business)."""
    out = git.run(["status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd=t.repo).stdout
    return [e[3:] for e in out.split("\0") if e]


@dataclass
class PatchOut:
    name: str
    data: bytes
    state: str                 # unchanged, changed, new
    commit: str | None = None


@dataclass
class SeriesPlan:
    target: Target
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


def _check_fences(t: Target, commit: str, fences: list[str]) -> None:
    """A commit of the parent may not write into a nested repository or the node's folder."""
    files = git.run(["diff-tree", "--no-commit-id", "--name-only", "-r", "-z", commit], cwd=t.repo).stdout
    for f in filter(None, files.split("\0")):
        full = f if t.rel == "." else f"{t.rel}/{f}"
        hit = next((x for x in fences if (full + "/").startswith(x + "/")), None)
        if hit:
            raise ZpatchError(f"{t.repo}: commit {commit[:12]} touches {full}, inside {hit}", Exit.BAD_CHECKOUT,
                              hint=f"move that change to the repository at {hit} (or, for the node, to the "
                                   "overlay's node folder)")


def plan(ws: Workspace, t: Target, *, allow_dirty: bool = False, head: str = "HEAD") -> SeriesPlan:
    """What export would write for T: each commit of the edit branch as a patch file.
    ALLOW_DIRTY: for `status`, which reports uncommitted changes itself. HEAD: the commits to judge;
    `unapply` judges the branch itself (a half-left edit mode has HEAD on the pin already)."""
    base = git.rev_parse(t.repo, git.EDIT_BASE)
    if base is None:
        raise ZpatchError(f"{t.repo}: not in edit mode", Exit.BAD_CHECKOUT,
                          hint=f"start with `zpatch edit {ws.checkout}`")
    if base != t.pin:
        raise ZpatchError(f"{t.repo}: the edit branch starts at {base[:12]}, but upstream.lock pins {t.pin[:12]}",
                          Exit.BAD_CHECKOUT, hint="the pin moved since `zpatch edit`: leave edit mode "
                                                  "(zpatch unapply) and edit again")
    branch = git.run(["symbolic-ref", "-q", "HEAD"], cwd=t.repo, check=False).stdout.strip()
    if head == "HEAD" and branch != BRANCH_REF:
        raise ZpatchError(f"{t.repo}: HEAD is not on {git.EDIT_BRANCH} (edit mode is half made, or you switched away)",
                          Exit.BAD_CHECKOUT, hint=f"git -C {t.repo} switch {git.EDIT_BRANCH}, or leave edit mode: "
                                                  "zpatch unapply --discard")
    if not git.run(["merge-base", "--is-ancestor", base, head], cwd=t.repo, check=False).ok:
        raise ZpatchError(f"{t.repo}: HEAD does not descend from the edit base {base[:12]}", Exit.BAD_CHECKOUT,
                          hint=f"git -C {t.repo} switch {git.EDIT_BRANCH}")
    merges = git.rev_list(t.repo, f"{base}..{head}", "--merges")
    if merges:
        raise ZpatchError(f"{t.repo}: commit {merges[0][:12]} is a merge; a series is a straight line of commits",
                          Exit.BAD_CHECKOUT, hint=f"git -C {t.repo} rebase -i {base[:12]} to linearize it")
    changed = [] if allow_dirty else dirty(t)
    if changed:
        raise ZpatchError(f"{t.repo / changed[0]}: has uncommitted changes; export writes commits only",
                          Exit.BAD_CHECKOUT, hint=f"commit them (git -C {t.repo} commit -a --amend or a new "
                                                  "commit) or stash them")
    fences = [o.rel for o in ws.targets if o.rel != t.rel and o.rel != "."]
    fences += [ws.node_rel] if ws.node_rel else []

    existing = {p.name: p for p in t.series.patches}
    commits = git.rev_list(t.repo, f"{base}..{head}")
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


def leave(ws: Workspace, *, discard: bool = False) -> list[dict]:
    """unapply in edit mode: back to the pin, the branch and refs gone. Refuses to drop commits that
    were not exported unless DISCARD. Finishes a half-left (or half-made) edit mode too."""
    out = []
    for t in ws.targets:
        if not active(t):
            continue
        changed = dirty(t)
        if changed:
            raise ZpatchError(f"{t.repo / changed[0]}: has uncommitted changes", Exit.BAD_CHECKOUT,
                              hint=f"commit and `zpatch export`, or stash them (git -C {t.repo} stash)")
        if not discard and not half_made(t) and plan(ws, t, head=BRANCH_REF).changed:
            raise ZpatchError(f"{t.repo}: the edit branch has changes that are not exported", Exit.BAD_CHECKOUT,
                              hint=_keep_hint(ws))
    for t in ws.targets:
        if not active(t):
            continue
        args = ["switch", "--quiet", "--detach", t.pin]
        r = git.run(args, cwd=t.repo, check=False)
        if not r.ok:
            raise git_cause(args, t.repo, r.returncode, r.stderr) or ZpatchError(
                f"{t.repo}: git could not go back to the pin: {r.last_line()}", Exit.BAD_CHECKOUT,
                hint="move the files git names out of the way, then rerun")
        forget(t)
        out.append({"name": t.name, "path": t.rel, "left_edit_mode": True})
    return out


def _keep_hint(ws: Workspace) -> str:
    """How to keep unexported commits: export writes every upstream from its branch checked out, so an
    upstream an interrupted unapply already took out of edit mode goes back into it first (`edit`
    enters the missing ones and puts a half-left one back on its branch), or, with all still in edit
    mode, a half-left one is switched back by hand."""
    co = shlex.quote(str(ws.checkout))
    steps = []
    if any(not active(t) or half_made(t) for t in ws.targets):
        steps.append(f"`zpatch edit {co}`")
    else:
        steps += [f"`git -C {shlex.quote(str(t.repo))} switch {BRANCH}`" for t in ws.targets if not on_branch(t)]
    steps.append(f"`zpatch export {co}`")
    return (f"keep them: {', then '.join(steps)}, then unapply again; or drop them: "
            f"`zpatch unapply --discard {co}`")


def forget(t: Target) -> None:
    """Edit mode's branch, notes, config and refs gone from T (HEAD already off the branch); the refs
    that say edit mode began go last, so a kill in between leaves it for `unapply` to finish."""
    if git.rev_parse(t.repo, BRANCH_REF):
        git.run(["branch", "-D", BRANCH], cwd=t.repo)
    git.run(["update-ref", "-d", git.ZPATCH_NOTES], cwd=t.repo)
    git.run(["config", "--unset-all", "notes.rewriteRef", "^refs/notes/zpatch$"], cwd=t.repo, check=False)
    git.run(["update-ref", "--stdin"], cwd=t.repo, input=f"start\ndelete {OVERLAY}\ndelete {BASE}\ncommit\n")
