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
NEXT = "refs/zpatch/overlay-next"      # what an export is about to write, recorded before it writes
BRANCH = git.EDIT_BRANCH
BRANCH_REF = f"refs/heads/{BRANCH}"


def active(t: Target) -> bool:
    """Edit mode has begun in T (and not been left completely)."""
    # asked by every apply, status and unapply: the usual answer (no) comes from the files
    return not git.ref_absent(t.repo, BASE) and git.rev_parse(t.repo, BASE) is not None


def refuse(ws: Workspace, command: str) -> None:
    t = next((t for t in ws.targets if active(t)), None)
    if t is not None:
        raise ZpatchError(f"{t.repo}: is in edit mode (the patches are commits on {BRANCH})", Exit.BAD_CHECKOUT,
                          hint=f"`zpatch export {ws.checkout}` then `zpatch unapply {ws.checkout}` to leave it "
                               f"before {command}")


def series_stamp(s: Series) -> list[list[str]]:
    """What a series is, for the edit base: its patches' names and hashes, in order."""
    return [[p.name, p.sha256] for p in s.patches]


def base_record(t: Target, ref: str = OVERLAY) -> dict | None:
    """What REF records for T's edit branch: {"patches": the series' [name, sha256] it matches, "tip":
    the branch commit that matched it}; None when REF is absent. Anything else is refused: without a
    record, export cannot tell whether the overlay moved on since."""
    if git.ref_absent(t.repo, ref):
        return None
    found = git.read_objects(t.repo, [ref])      # one process: what it names, and its bytes
    if ref not in found:
        return None
    kind, data = found[ref]
    data = data if kind == "blob" else None
    try:
        rec = json.loads(data.decode("utf-8")) if data is not None else None
        if not (isinstance(rec, dict) and isinstance(rec.get("patches"), list)
                and all(isinstance(n, str) and isinstance(h, str) for n, h in rec["patches"])
                and isinstance(rec.get("tip"), (str, type(None)))):
            raise ValueError
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        raise ZpatchError(f"{t.repo}: {ref} is not a record zpatch wrote", Exit.BAD_CHECKOUT,
                          hint="`zpatch export --force` writes your branch anyway (over whatever the overlay "
                               "holds now)")
    return rec


def record_base(t: Target, stamp: list[list[str]], tip: str | None, ref: str = OVERLAY) -> None:
    """Record that T's branch at TIP matches the series STAMP (a push updating its tracking ref)."""
    blob = git.run(["hash-object", "-w", "--stdin"], cwd=t.repo,
                   input=json.dumps({"patches": stamp, "tip": tip})).stdout.strip()
    git.run(["update-ref", ref, blob], cwd=t.repo)


def enter(t: Target) -> list[str]:
    """Make T's series into commits on the edit branch over the pin and check it out (T is at its pin,
    clean, and has no branch of that name). The commits, one per patch."""
    with tempfile.TemporaryDirectory(prefix="zpatch-edit-") as tmp:
        commits = git.ScratchIndex(t.repo, tmp).commit_patches(t.pin, [p.path for p in t.series.patches])
    blob = git.run(["hash-object", "-w", "--stdin"], cwd=t.repo,
                   input=json.dumps({"patches": series_stamp(t.series),
                                     "tip": commits[-1] if commits else t.pin})).stdout.strip()
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


def _check_fences(t: Target, commit: str, files: list[str], fences: list[str]) -> None:
    """A commit of the parent may not write into a nested repository or the node's folder."""
    for f in files:
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
                          hint=f"`zpatch edit {shlex.quote(str(ws.checkout))}` starts it; `zpatch export --check` "
                               "with no checkout checks the overlay's patch files")
    if base != t.pin:
        raise ZpatchError(f"{t.repo}: the edit branch starts at {base[:12]}, but upstream.lock pins {t.pin[:12]}",
                          Exit.BAD_CHECKOUT, hint=_keep_hint(ws, t))
    branch = git.run(["symbolic-ref", "-q", "HEAD"], cwd=t.repo, check=False).stdout.strip()
    if head == "HEAD" and branch != BRANCH_REF:
        co = shlex.quote(str(ws.checkout))
        if half_made(t):        # an edit interrupted before it made the branch: there is none to switch to
            raise ZpatchError(f"{t.repo}: edit mode is half made (an interrupted `zpatch edit`)", Exit.BAD_CHECKOUT,
                              hint=f"`zpatch edit {co}` finishes entering it; `zpatch unapply {co}` leaves it")
        raise ZpatchError(f"{t.repo}: HEAD is not on {git.EDIT_BRANCH} (you switched away, or an unapply was "
                          "interrupted)", Exit.BAD_CHECKOUT,
                          hint=f"`git -C {shlex.quote(str(t.repo))} switch {git.EDIT_BRANCH}` goes back to it; "
                               f"`zpatch unapply --discard {co}` leaves edit mode, dropping commits not exported")
    if not git.run(["merge-base", "--is-ancestor", base, head], cwd=t.repo, check=False).ok:
        raise ZpatchError(f"{t.repo}: HEAD does not descend from the edit base {base[:12]}", Exit.BAD_CHECKOUT,
                          hint=f"git -C {t.repo} switch {git.EDIT_BRANCH}")
    # a fixed number of git processes however many commits: each was a few per commit (and the crash
    # tests kill export at every git step)
    listed = git.rev_list_parents(t.repo, f"{base}..{head}")
    merges = [c for c, parents in listed if len(parents) > 1]
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
    commits = [c for c, _parents in listed]
    files = git.files_of_commits(t.repo, commits)
    for c in commits:
        if not files[c]:          # format-patch skips it (and would number the rest differently)
            raise ZpatchError(f"{t.repo}: commit {c[:12]} cannot become a patch: it changes no file",
                              Exit.BAD_CHECKOUT, hint=f"drop it (git -C {t.repo} rebase -i {base[:12]})")
        _check_fences(t, c, files[c], fences)
    notes = list(git.notes(t.repo, commits).values())
    patches = git.format_patch_files(t.repo, f"{base}..{head}") if commits else []
    if len(patches) != len(commits):
        raise ZpatchError(f"{t.repo}: git format-patch wrote {len(patches)} patches for {len(commits)} commits",
                          Exit.ENVIRONMENT, hint=f"see which it left out: git -C {t.repo} format-patch --stdout "
                                                 f"{base[:12]}..{head} | grep -c '^From '")
    claimed = {}                     # existing file -> the first commit that carries its name
    for c, n in zip(commits, notes):
        if n in existing:
            claimed.setdefault(n, c)
    out: list[PatchOut] = []
    used: set[str] = set()
    for i, (c, src) in enumerate(zip(commits, notes), 1):
        numbered, data = patches[i - 1]
        try:
            patchfile.parse(f"commit {c[:12]}", data)     # what check will demand of the file
        except ZpatchError as e:
            raise ZpatchError(f"{t.repo}: commit {c[:12]} cannot become a patch: {e.message}", Exit.BAD_CHECKOUT,
                              hint=f"amend or drop it (git -C {t.repo} rebase -i {base[:12]})")
        modes = patchfile.mode_changes(data)
        if modes:       # `check` and `apply` refuse a mode change: never export one
            f, mode = modes[0]
            raise ZpatchError(f"{t.repo}: commit {c[:12]} makes {f} mode {mode}; zpatch writes regular files and "
                              "keeps upstream's modes", Exit.BAD_CHECKOUT,
                              hint=f"undo the mode change in that commit (git -C {t.repo} update-index --chmod=-x "
                                   f"{f}, then git commit --amend, or rebase -i {base[:12]})")
        if src in existing and claimed[src] == c:
            old = existing[src]
            data = patchfile.keep_headers(data, old.data)
            if patchfile.same_but_last_update(data, old.data):     # the file's own date stays
                p = PatchOut(src, old.data, "unchanged", c)
            else:                 # a patch whose change moved says when (as rebase does)
                p = PatchOut(src, patchfile.stamp_last_update(data), "changed", c)
        else:
            name = numbered
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
        if discard:
            continue
        loose = _off_branch_commits(t)
        if loose:
            repo = shlex.quote(str(t.repo))
            raise ZpatchError(f"{t.repo}: HEAD is detached with {len(loose)} commit(s) on no branch; leaving edit "
                              "mode would drop them", Exit.BAD_CHECKOUT,
                              hint=f"keep them on a branch (git -C {repo} branch -f zpatch-saved-{loose[0][:12]} "
                                   f"{loose[0]}), then rerun; or `zpatch unapply --discard "
                                   f"{shlex.quote(str(ws.checkout))}` drops them")
        if not half_made(t) and not exported(ws, t):
            raise ZpatchError(f"{t.repo}: the edit branch has changes that are not exported", Exit.BAD_CHECKOUT,
                              hint=_keep_hint(ws, t))
    for t in ws.targets:
        if not active(t):
            continue
        # back to the commit the branch started from: the pin, or the old pin when a rebase has moved
        # it since (the checkout may not even have the new one)
        back = git.rev_parse(t.repo, BASE) or t.pin
        args = ["switch", "--quiet", "--detach", back]
        r = git.run(args, cwd=t.repo, check=False)
        if not r.ok:
            raise git_cause(args, t.repo, r.returncode, r.stderr) or ZpatchError(
                f"{t.repo}: git could not go back to the pin: {r.last_line()}", Exit.BAD_CHECKOUT,
                hint="move the files git names out of the way, then rerun")
        forget(t)
        out.append({"name": t.name, "path": t.rel, "left_edit_mode": True, "head": back, "pin": t.pin})
    return out


def pin_moved(t: Target) -> bool:
    """A rebase moved T's pin since `edit` made the branch: the branch starts at the old pin."""
    return git.rev_parse(t.repo, BASE) not in (None, t.pin)


def exported(ws: Workspace, t: Target) -> bool:
    """Nothing on T's edit branch is missing from the overlay. When the pin moved since `edit` the
    branch cannot be exported any more; it then counts as exported only if it is still where the last
    export (or the edit) left it."""
    if pin_moved(t):
        rec = base_record(t)
        return bool(rec) and rec.get("tip") == git.rev_parse(t.repo, BRANCH_REF)
    return not plan(ws, t, head=BRANCH_REF).changed


def _off_branch_commits(t: Target) -> list[str]:
    """Commits HEAD has that no branch has (a detached HEAD after `git rebase --quit`, a checkout of a
    commit): leaving edit mode would leave them to the reflog. Newest first."""
    if on_branch(t) or half_made(t):
        return []
    base = git.rev_parse(t.repo, BASE) or t.pin
    return git.run(["rev-list", "HEAD", "--not", "--branches", base], cwd=t.repo).stdout.split()


def _keep_hint(ws: Workspace, stuck: Target | None = None) -> str:
    """How to keep unexported commits: export writes every upstream from its branch checked out, so an
    upstream an interrupted unapply already took out of edit mode goes back into it first (`edit`
    enters the missing ones and puts a half-left one back on its branch), or, with all still in edit
    mode, a half-left one is switched back by hand."""
    co = shlex.quote(str(ws.checkout))
    if stuck is not None and pin_moved(stuck):     # the branch cannot be exported onto the new pin
        repo = shlex.quote(str(stuck.repo))
        tip = (git.rev_parse(stuck.repo, BRANCH_REF) or "HEAD")[:12]
        return (f"the pin moved (a rebase) since `zpatch edit`: keep the branch (git -C {repo} branch -f "
                f"zpatch-saved-{tip} {BRANCH}), then `zpatch unapply --discard {co}`, `zpatch edit {co}` and "
                "cherry-pick your commits from the saved branch")
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
    git.run(["update-ref", "--stdin"], cwd=t.repo,
            input=f"start\ndelete {NEXT}\ndelete {OVERLAY}\ndelete {BASE}\ncommit\n")
