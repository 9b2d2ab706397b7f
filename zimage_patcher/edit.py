"""Authoring the patches as commits: `edit` turns each patch into a commit on a branch on top of its
pin (edit_mode.py keeps the checkout's side), the maintainer works with plain git (amend, new
commits, rebase -i, drop), and `export` writes the series back through the overlay's front door
(overlay_write.py), byte-stable, rewriting only what changed.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import shlex
import tempfile
from pathlib import Path

from . import apply, cache, clone, edit_mode, git, overlay_write, patchfile, patchset, record, series as seriesmod
from .check import REQUIRED_HEADERS
from .errors import Exit, ZpatchError
from .patchset import Overlay
from .workspace import Target, Workspace


def edit(root: Path, checkout: Path | None) -> dict:
    """Each upstream's series becomes commits on `zpatch/edit` over its pin, checked out. The overlay
    is read under its lock, so the series the branch starts from is one no writer is changing."""
    clone.refuse_incomplete(checkout, patchset.cwd() if checkout is None else None)
    with overlay_write.hold(root, "edit"):
        ov = patchset.load(root)
        ws = Workspace.open(ov, checkout)
        for t in ws.targets:
            if edit_mode.half_made(t):    # an edit (or unapply) killed between its git steps: no branch,
                edit_mode.forget(t)       # so nothing of the user's; start that upstream over
        return _enter(ws)


def _enter(ws: Workspace) -> dict:
    # An edit killed after some upstreams entered edit mode: those keep their branch (judged by
    # nothing here: it may hold work by now), the others enter it. Only all of them in edit mode is
    # "already".
    entered = [t for t in ws.targets if edit_mode.active(t)]
    if len(entered) == len(ws.targets):
        t = entered[0]
        raise ZpatchError(f"{t.repo}: already in edit mode", Exit.BAD_CHECKOUT,
                          hint=f"`zpatch export {ws.checkout}` writes the patches; `zpatch unapply "
                               f"{ws.checkout}` leaves edit mode")
    todo = [t for t in ws.targets if t not in entered]
    rec = ws.load_record()
    co = shlex.quote(str(ws.checkout))
    for t in todo:
        if git.head_commit(t.repo) != t.pin:
            back = apply.back_to_pin(ws.checkout, t.repo, t.pin, bool(rec and rec.upstreams))
            raise ZpatchError(f"{t.repo}: {t.name} is not at its pin {t.pin[:12]}", Exit.BAD_CHECKOUT,
                              hint=f"{back} && zpatch edit {co}")
    if rec is not None and entered:       # apply refuses in edit mode, so only a hand could make this
        edit_mode.refuse(ws, "edit")
    for t in todo:
        if git.rev_parse(t.repo, edit_mode.BRANCH_REF):
            raise ZpatchError(f"{t.repo}: a branch {edit_mode.BRANCH} already exists", Exit.BAD_CHECKOUT,
                              hint=f"rename it (git -C {t.repo} branch -m {edit_mode.BRANCH} my-old-edit), then rerun")
        ours = set(rec.upstreams[t.name].files) if rec and t.name in rec.upstreams else set()
        head = git.tree_blobs(t.repo, "HEAD", t.series.files)
        for f in t.series.files:   # a file a patch creates must not be there already (git switch would refuse)
            if f not in head and f not in ours and os.path.lexists(t.repo / f):
                raise ZpatchError(f"{t.repo / f}: exists, and a patch creates it", Exit.BAD_CHECKOUT,
                                  hint=f"move it away (mv {t.repo / f} {t.repo / f}.bak), then rerun")
    dirty = []      # files zpatch applied are its own to take back; anything else must be clean
    for t in todo:
        ours = set(rec.upstreams[t.name].files) if rec and t.name in rec.upstreams else set()
        files = [f for f in edit_mode.dirty(t) if f not in ours]
        if files:
            dirty.append((t, files))
    if dirty:
        # stash only the user's own files, every upstream's in one hint: zpatch's applied ones are edit's
        # to take back, and in a stash they would block its pop after the next apply
        stash = " && ".join(f"git -C {shlex.quote(str(t.repo))} stash push --include-untracked -- {shlex.join(files)}"
                            for t, files in dirty)
        pop = " && ".join(f"git -C {shlex.quote(str(t.repo))} stash pop" for t, _ in dirty)
        t, files = dirty[0]
        more = sum(len(f) for _, f in dirty) - 1
        raise ZpatchError(f"{t.repo / files[0]}: has uncommitted changes"
                          + (f" (and {more} more file(s))" if more else ""), Exit.BAD_CHECKOUT,
                          hint=f"commit them, or keep them aside: `{stash} && zpatch edit {co}` "
                               f"(`{pop}` brings them back); a file "
                               "a partial mirror left out stays out of a checkout made with --exclude")
    if rec is not None:
        # from zpatch's own apply back to pristine, transactionally; a refusal's way on ends in edit
        apply.unapply(ws.ov, ws.checkout, then=f"zpatch edit {co}", op="edit")
    result = {"checkout": str(ws.checkout), "upstreams": [], "resumed": [t.name for t in entered]}
    with ws.locked():
        record.remember_overlay(ws.zdir, ws.ov.root)     # edit mode has no record: zpatch inside finds it so
        done: list[Target] = []
        for t in ws.targets:
            if t in entered:
                if edit_mode.half_left(t):    # an unapply killed after it left the branch: back onto it
                    git.run(["switch", "--quiet", edit_mode.BRANCH], cwd=t.repo)
                commits = git.rev_list(t.repo, f"{edit_mode.BASE}..{edit_mode.BRANCH_REF}")
                result["upstreams"].append({"name": t.name, "path": t.rel, "base": t.pin, "branch": edit_mode.BRANCH,
                                            "commits": [{"commit": c, "patch": git.note(t.repo, c)} for c in commits]})
                continue
            try:
                commits = edit_mode.enter(t)
            except ZpatchError:    # nothing of edit mode may be left half made: undo the upstreams done so far
                for d in done:
                    git.run(["switch", "--quiet", "--detach", d.pin], cwd=d.repo, check=False)
                    edit_mode.forget(d)
                raise
            done.append(t)
            result["upstreams"].append({"name": t.name, "path": t.rel, "base": t.pin, "branch": edit_mode.BRANCH,
                                        "commits": [{"commit": c, "patch": p.name}
                                                    for c, p in zip(commits, t.series.patches)]})
    return result


def export(root: Path, checkout: Path | None, *, check: bool = False, force: bool = False) -> dict:
    """Write patches/<upstream>/, its series and upstream.lock from the edit branches, through the
    front door. CHECK: write nothing, report what would change (exit 1 when anything would).
    FORCE: write even over patches that changed in the overlay since `zpatch edit`."""
    if check:
        ov = patchset.load(root)
        ws = Workspace.open(ov, checkout)
        return _result(ov, ws, [edit_mode.plan(ws, t) for t in ws.targets], check=True)
    with overlay_write.hold(root, "export") as writer:
        ov = patchset.load(root)                 # read under the lock: what this export replaces
        ws = Workspace.open(ov, checkout)
        plans = [edit_mode.plan(ws, t) for t in ws.targets]
        # what each branch exports, as the edit base records a series: [name, sha256] in order
        stamps = {sp.target.name: [[p.name, _sha256(p.data)] for p in sp.patches] for sp in plans}
        if not force:
            for sp in plans:
                _refuse_stale(ws, sp, plans, stamps[sp.target.name])
        result = _result(ov, ws, plans, check=False)
        result["recovered"] = writer.recovered
        tips = {sp.target.name: git.rev_parse(sp.target.repo, "HEAD") for sp in plans}
        if result["changed"]:
            files: dict[str, bytes | None] = {}
            for sp in plans:
                d = sp.target.series.upstream.patches
                files.update({f"{d}/{p.name}": p.data for p in sp.patches if p.state != "unchanged"})
                files.update({f"{d}/{name}": None for name in sp.removed})
                if sp.series_changed:
                    rel = f"{d}/{seriesmod.SERIES_NAME}"
                    files[rel] = overlay_write.render_series(ov.root, rel, sp.names)
            lk = overlay_write.new_lock(ov, {name: dict(stamp) for name, stamp in stamps.items()})
            result["lock_changed"] = overlay_write.lock_changes(ov.lock, lk)
            for sp in plans:      # before the write: a kill after it still knows the overlay is this branch's
                edit_mode.record_base(sp.target, stamps[sp.target.name], tips[sp.target.name], edit_mode.NEXT)
            writer.commit(files, lk)
        result["warnings"] = []
        # after the commit point the export is done: what follows only names new commits and moves the
        # edit base. A failure here is reported, not an error (exit 0: the overlay is written); a kill is
        # harmless (the next export matches a commit without its note by its file, and the base by NEXT)
        for sp in plans:
            t = sp.target
            try:
                for p in sp.patches:
                    if p.state == "new":
                        git.add_note(t.repo, p.commit, p.name)
                if edit_mode.base_record(t) != {"patches": stamps[t.name], "tip": tips[t.name]}:
                    edit_mode.record_base(t, stamps[t.name], tips[t.name])
                if edit_mode.base_record(t, edit_mode.NEXT) is not None:
                    git.run(["update-ref", "-d", edit_mode.NEXT], cwd=t.repo)
            except ZpatchError as e:
                result["warnings"].append(f"{t.repo}: the overlay is written, but recording it in the checkout "
                                          f"failed ({e.message}); the next export repairs it")
    return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refuse_stale(ws: Workspace, sp: edit_mode.SeriesPlan, plans: list[edit_mode.SeriesPlan],
                  ours: list[list[str]]) -> None:
    """The overlay moved on since `zpatch edit` made this branch (another checkout exported, a rebase
    changed a patch at the same pin): writing the branch would put the older text back over the newer,
    as a non-fast-forward push would. Refuse, unless the overlay already is what this export writes, or
    what this branch last exported (recorded before that export wrote, so a kill there does not count)."""
    t = sp.target
    now = edit_mode.series_stamp(t.series)
    if now == ours:
        return
    rec, nxt = edit_mode.base_record(t), edit_mode.base_record(t, edit_mode.NEXT)
    if rec is None:
        raise ZpatchError(f"{t.repo}: the edit branch does not record which overlay it was made from "
                          f"({edit_mode.OVERLAY} is missing)", Exit.BAD_CHECKOUT,
                          hint=f"`zpatch export --force {shlex.quote(str(ws.checkout))}` writes it anyway, over "
                               "whatever the overlay holds now")
    base = rec["patches"]
    if now == base or (nxt is not None and now == nxt["patches"]):
        return
    co = shlex.quote(str(ws.checkout))
    was, is_now = dict(base), dict(now)
    moved = next((n for n, h in now if was.get(n) != h), None) or next(n for n, _h in base if n not in is_now)
    saves = " && ".join(f"git -C {shlex.quote(str(o.target.repo))} branch -f "
                        f"zpatch-saved-{git.rev_parse(o.target.repo, edit_mode.BRANCH_REF)[:12]} {edit_mode.BRANCH}"
                        for o in plans)
    raise ZpatchError(f"{t.series.directory / moved}: changed in the overlay since `zpatch edit` made the branch in "
                      f"{t.repo}; exporting would put the older text back over it", Exit.CONFLICT,
                      hint=f"to keep the overlay's version, save your branches and edit again: {saves} && "
                           f"zpatch unapply --discard {co} && zpatch edit {co} (then cherry-pick your commits from "
                           f"the saved branches); to overwrite it: zpatch export --force {co}")


def _result(ov: Overlay, ws: Workspace, plans: list[edit_mode.SeriesPlan], *, check: bool) -> dict:
    result = {"overlay": str(ov.root), "checkout": str(ws.checkout), "check": check,
              "changed": any(p.changed for p in plans), "upstreams": []}
    for sp in plans:
        old = {p.name: p.data for p in sp.target.series.patches}
        d = sp.target.series.upstream.patches
        result["upstreams"].append({
            "name": sp.target.name, "reordered": sp.reordered, "removed": sp.removed,
            "patches": [{"name": p.name, "state": p.state, "commit": p.commit,
                         "missing_headers": _missing_headers(p.data),
                         "diff": _diff(f"{d}/{p.name}", old.get(p.name), p.data)} for p in sp.patches]})
    return result


def _diff(rel: str, old: bytes | None, new: bytes | None) -> str:
    """What would change in the patch file REL, as `git diff` shows it ("" when nothing)."""
    if old == new:
        return ""
    a = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
    b = (new or b"").decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"a/{rel}" if old is not None else "/dev/null",
                                        f"b/{rel}" if new is not None else "/dev/null"))


def _missing_headers(data: bytes) -> list[str]:
    """DEP-3 headers `zpatch check` requires that the commit message lacks."""
    headers = patchfile.parse("export", data).headers
    return [alts[0] for alts in REQUIRED_HEADERS if not any(a in headers for a in alts)]



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
                entry["patches"].append({"name": p.name, "state": state, "commit": None,
                                         "diff": _diff(f"{s.upstream.patches}/{p.name}", p.data, data)})
                result["changed"] |= state != "unchanged"
        result["upstreams"].append(entry)
    return result
