"""`zpatch refresh`: hand edits in an applied checkout folded back into the overlay, as quilt's
`refresh` and devtool's `update-recipe` do, so that a fresh checkout + apply gives the same bytes.

Each changed hunk goes to the patch that owns its lines: `git blame` over the series committed on
its pin names the patch that last wrote them (for a pure insertion, the lines around it). A hunk on
upstream's own lines, or on lines of two patches, is refused with the two ways out: `--into PATCH`
(every edit into that patch) or `--new SUBJECT` (every edit into a new patch at the end).

The fold, in a scratch index: the edits of each owner, as a diff against the series' result, are
put into that patch's tree and every tree after it; a later patch that changes the lines around an
edit stops the fold (CONFLICT), naming it. The patches after the owner are rewritten only when
their own diff changed (line numbers moved).

Writes, in this order: the overlay through its front door (the commit point of the fold), then the
checkout's record (the checkout now holds the refreshed series, applied). A run killed between the
two leaves the checkout holding exactly the overlay's new series under an older record; the next
refresh sees that and only records it.
"""
from __future__ import annotations

import datetime
import email.utils
import hashlib
import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import apply, clone, edit_mode, git, overlay_write, patchfile, patchset, series as seriesmod, worktree
from .check import REQUIRED_HEADERS
from .errors import Exit, ZpatchError
from .record import NodeRecord, PatchRef, Record, UpstreamRecord, digest
from .workspace import Target, Workspace, copy_aside, edited, node_folder


@dataclass
class Hunk:
    path: str
    old: tuple[int, int]       # start, length in the series' result (a zero length: insert after start)
    new: tuple[int, int]       # start, length in the work tree
    owner: int | None = None   # index of the patch it goes to (len(series): the new patch)

    @property
    def lines(self) -> list[int]:
        """The work tree's lines of the hunk, first and last (for a deletion: where it was)."""
        start, n = self.new
        return [start, start + n - 1] if n else [start, start]


@dataclass
class Plan:
    target: Target
    hunks: list[Hunk] = field(default_factory=list)
    patches: list[tuple[str, bytes, str]] = field(default_factory=list)   # the new series: name, data, state
    rerecord: bool = False       # the checkout already holds the overlay's series: only record it
    left_out: list[dict] = field(default_factory=list)   # changes not folded: {path, why}

    def files(self) -> dict[str, bytes | None]:
        """The overlay files this plan writes (relative to the overlay)."""
        d = self.target.series.upstream.patches
        return {f"{d}/{n}": None if state == "dropped" else data for n, data, state in self.patches
                if state != "unchanged"}

    def series(self) -> list[tuple[str, bytes]]:
        """The series after the fold: each patch's name and bytes (a dropped one left out)."""
        return [(n, d) for n, d, state in self.patches if state != "dropped"]


def refresh(root: Path, checkout: Path | None, *, into: str | None = None, new: str | None = None,
            dry_run: bool = False) -> dict:
    clone.refuse_incomplete(checkout, patchset.cwd() if checkout is None else None)
    if into and new:
        raise ZpatchError("--into and --new exclude each other", Exit.USAGE, hint="give one of them")
    if new is not None and (not new.strip() or re.search(r"[\x00-\x1f\x7f]", new)):
        raise ZpatchError(f"--new {new!r}: a subject is one line of text", Exit.USAGE,
                          hint="zpatch refresh --new 'Fix the tokenizer for ...'")
    with overlay_write.hold(root, "refresh") as writer:
        ov = patchset.load(root)          # read under the overlay lock: what this refresh replaces
        ws = Workspace.open(ov, checkout)
        with ws.locked() as recovered:
            edit_mode.refuse(ws, "refresh")
            co = shlex.quote(str(ws.checkout))
            rec = ws.load_record()
            if rec is None or not rec.upstreams:
                raise ZpatchError(f"{ws.checkout}: the overlay is not applied here; refresh folds the edits of an "
                                  "applied checkout into its patches", Exit.BAD_CHECKOUT, hint=f"zpatch apply {co}")
            if into is not None and not any(p.name == into for t in ws.targets for p in t.series.patches):
                raise ZpatchError(f"--into {into}: no patch of that name in the overlay", Exit.USAGE,
                                  hint=f"zpatch status {co} lists the patches")
            # --into names one patch: it takes the edits of that patch's upstream; the other upstream's
            # edits go where their lines' owners are
            plans = [_plan(ws, t, rec.upstreams[t.name], into if any(p.name == into for p in t.series.patches)
                           else None, new, dry_run) for t in ws.targets if t.name in rec.upstreams]
            owner = next((p for p in plans if any(x.name == into for x in p.target.series.patches)), None)
            if into is not None and (owner is None or not owner.hunks) and any(p.hunks for p in plans):
                edits = ", ".join(p.target.name for p in plans if p.hunks)
                raise ZpatchError(f"--into {into}: its upstream holds no edit; the edits are in {edits}",
                                  Exit.USAGE, hint=f"name a patch of {edits}, or leave --into out: "
                                                   f"`zpatch refresh{' --dry-run' if dry_run else ''} {co}`")
            node_files, node = _node_plan(ws, rec)
            result = {"overlay": str(ov.root), "checkout": str(ws.checkout), "dry_run": dry_run,
                      "recovered": recovered, "changed": False, "node_files": sorted(node_files),
                      "upstreams": [_plan_result(p) for p in plans], "warnings": [],
                      "left_out": [x for p in plans for x in p.left_out]}
            writes = {k: v for p in plans for k, v in p.files().items()}
            if not any(p.hunks or p.rerecord for p in plans) and not node_files and node == rec.node:
                return result
            result["changed"] = bool(writes or node_files)
            if dry_run:
                return result
            lk = overlay_write.new_lock(ov, {p.target.name: {n: _sha256(d) for n, d in p.series()}
                                             for p in plans if p.hunks})
            for p in plans:
                if any(s in ("new", "dropped") for _n, _d, s in p.patches):
                    rel = f"{p.target.series.upstream.patches}/{seriesmod.SERIES_NAME}"
                    writes[rel] = overlay_write.render_series(ov.root, rel, [n for n, _d in p.series()])
            if lk.overlay and node_files:
                writes.update({f"{lk.overlay.source}/{f}": data for f, data in node_files.items()})
                lk.overlay.sha256 = dict(node.files)
            writer.commit(writes, lk)               # the commit point: the overlay holds the fold
            ws.commit("refresh", [], _new_record(ws, rec, plans, node),
                      [d for t in ws.targets for d in _series_data(t, plans)])
            for p in plans:
                for name, data, state in p.patches:
                    if state == "new":
                        missing = [alts[0] for alts in REQUIRED_HEADERS
                                   if not any(a in patchfile.parse(name, data).headers for a in alts)]
                        if missing:
                            result["warnings"].append(f"{p.target.series.directory / name}: add the DEP-3 "
                                                      f"header(s) {', '.join(missing)} (zpatch check requires them)")
    return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plan_result(p: Plan) -> dict:
    names = [n for n, _d, _s in p.patches]     # a hunk's owner indexes the series before the fold
    return {"name": p.target.name, "rerecorded": p.rerecord,
            "hunks": [{"path": h.path, "lines": h.lines, "patch": names[h.owner]} for h in p.hunks],
            "patches": [{"name": n, "state": s} for n, _d, s in p.patches]}


def _series_data(t: Target, plans: list[Plan]) -> list[bytes]:
    p = next((p for p in plans if p.target is t), None)
    return [d for _n, d in p.series()] if p else [x.data for x in t.series.patches]


def _new_record(ws: Workspace, rec: Record, plans: list[Plan], node: NodeRecord | None) -> Record:
    ups = dict(rec.upstreams)
    for p in plans:
        t, ur = p.target, rec.upstreams[p.target.name]
        series = p.series()
        files = {f for n, d in series for f in patchfile.parse(n, d).files}
        ups[t.name] = UpstreamRecord(ur.commit, [PatchRef(n, _sha256(d)) for n, d in series],
                                     {f: worktree.blob_id(t.top, t.file(f)) for f in sorted(files)})
    return Record(ups, node)


def _outdated(ws: Workspace, t: Target, files: list[str]) -> ZpatchError:
    co, repo = shlex.quote(str(ws.checkout)), shlex.quote(str(t.repo))
    head = git.tree_blobs(t.repo, "HEAD", files)
    if files and all(f in head for f in files):
        q = " ".join(shlex.quote(f) for f in files)
        save = f"~/zpatch-saved-{t.name}-{git.hash_object_bytes(b''.join(worktree.read(t.top, t.file(f)) or b'' for f in files))[:12]}.patch"
        hint = (f"save your edit and apply the new series: git -C {repo} diff -- {q} > {save} && git -C {repo} "
                f"checkout -- {q} && zpatch apply {co}; then redo your edit from {save} (it holds the older "
                f"patches' changes too) and zpatch refresh {co}")
    else:
        hint = (f"copy your edited files elsewhere, put back upstream's (git -C {repo} checkout -- FILE; rm a file "
                f"a patch created), zpatch apply {co}, redo the edit, then zpatch refresh {co}")
    return ZpatchError(f"{t.repo}: the overlay's {t.name} series changed since this checkout was applied; refresh "
                       "would fold your edit into the older patches", Exit.BAD_CHECKOUT, hint=hint)


def _plan(ws: Workspace, t: Target, ur: UpstreamRecord, into: str | None, new: str | None, dry_run: bool) -> Plan:
    """What refreshing T's series from the work tree writes (nothing, when T holds no edit). DRY_RUN: a
    refusal's advice keeps --dry-run."""
    head = git.head_commit(t.repo)
    if not ur.three_way and head == ur.commit != t.pin:
        # the overlay's pin moved (a rebase) since this checkout was applied: the edit goes over to the
        # new pin by hand; rebasing the overlay back onto this commit would undo that rebase
        files = edited(t, ur)
        co = shlex.quote(str(ws.checkout))
        steps = [copy_aside(t.top, t.file(f), t.name) for f in files]
        steps += [f"git -C {shlex.quote(str(t.repo))} checkout -- {shlex.quote(f)}" for f in files]
        steps.append(apply.back_to_pin(ws.checkout, t.repo, t.pin, True))
        raise ZpatchError(f"{t.repo}: the overlay moved {t.name}'s pin to {t.pin[:12]} since this checkout was applied "
                          f"on {head[:12]}; refresh folds edits made on the pin", Exit.BAD_CHECKOUT,
                          hint=f"keep a copy of your edit and move the checkout to the pin: `{' && '.join(steps)}`; "
                               f"then redo the edit from the copy in ~ and `zpatch refresh {co}`")
    if ur.three_way or ur.commit != t.pin or head != t.pin:
        raise ZpatchError(f"{t.repo}: {t.name} is not at its pin {t.pin[:12]} (or was applied with --3way); refresh "
                          "folds edits made on the pin", Exit.BAD_CHECKOUT,
                          hint=f"carry the series to that commit first (zpatch rebase {t.name} --onto {head}), or "
                               "make the edit on a checkout at the pin")
    changed = edited(t, ur)
    others, left_out = _others(ws, t, ur, take=into is not None or new is not None)
    same_series = [(p.name, p.sha256) for p in ur.patches] == [(p.name, p.sha256) for p in t.series.patches]
    if not same_series:
        if _holds_series(t, ur):       # a refresh killed after it wrote the overlay: record what is there
            return Plan(t, patches=[(p.name, p.data, "unchanged") for p in t.series.patches], rerecord=True,
                        left_out=left_out)
        if not changed and not others:     # nothing edited here: apply brings the new series, refresh has no part
            return Plan(t, patches=[(p.name, p.data, "unchanged") for p in t.series.patches], left_out=left_out)
        raise _outdated(ws, t, changed or sorted(ur.files))
    patches = t.series.patches
    as_is = Plan(t, patches=[(p.name, p.data, "unchanged") for p in patches], left_out=left_out)
    changed = sorted(set(changed) | set(others))
    if not changed:
        return as_is
    with tempfile.TemporaryDirectory(prefix="zpatch-refresh-") as tmp:
        idx = git.ScratchIndex(t.repo, tmp)
        commits = idx.commit_patches(t.pin, [p.path for p in patches])
        top = commits[-1] if commits else t.pin
        idx.read_tree(top)
        apply.load_work_tree(t, idx, changed, {f: worktree.read(t.top, t.file(f)) for f in changed},
                             git.tree_entries(t.repo, top, changed))
        wanted = idx.run(["write-tree", "--missing-ok"]).stdout.strip()
        sweep = [x["path"] for x in left_out if x["why"].startswith("no patch changes this file")]
        hunks = _hunks(t, commits, top, wanted, changed, into, new, dry_run, sweep)
        if not hunks:
            return as_is                     # bytes differ only as git's filters see them (eol)
        trees = _fold(t, commits, top, wanted, hunks, idx)
        return Plan(t, hunks, _patches(t, idx, tmp, commits, trees, new), left_out=left_out)


def _others(ws: Workspace, t: Target, ur: UpstreamRecord, *, take: bool) -> tuple[list[str], list[dict]]:
    """Changes in T outside what zpatch applied: the tracked files to fold too (TAKE: --into or --new
    says where they go), and what is left out, with why (untracked files, which may be build output;
    mode changes, which patches do not carry; tracked files when nothing says where they go)."""
    from .status import inside_nested
    take_now, left = [], []
    changed = {f: code for f, code in git.changed_paths(t.repo).items()
               if f not in ur.files and not inside_nested(t, ws.targets, f)}
    # a file deleted only because the source repository lacks its blob (a partial mirror) is no edit
    gone = [f for f, code in changed.items() if "D" in code]
    blobs = git.tree_blobs(t.repo, "HEAD", gone) if gone else {}
    lacking = set(git.missing_objects(t.repo, list(blobs.values()))) if blobs else set()
    for f, code in sorted(changed.items()):
        if blobs.get(f) in lacking:
            left.append({"path": t.file(f), "why": "not in the source repository (a partial mirror lacks its blob), "
                                                   f"not deleted by hand; a checkout made with --exclude {t.file(f)} "
                                                   "leaves it out"})
        elif code == "??":
            left.append({"path": t.file(f), "why": "untracked: refresh folds changes to tracked files "
                                                   "(git add it, then refresh with --new or --into)"})
        elif take:
            take_now.append(f)
        else:
            left.append({"path": t.file(f), "why": "no patch changes this file: --new SUBJECT or --into PATCH "
                                                   "takes it"})
    head = git.tree_entries(t.repo, "HEAD", sorted(ur.files))
    for f in sorted(ur.files):
        path = t.repo / f
        if f in head and path.is_file() and not path.is_symlink():
            exe = bool(path.stat().st_mode & 0o111)
            if exe != (head[f][0] == "100755"):
                left.append({"path": t.file(f), "why": "mode change: patches keep upstream's modes"})
    return take_now, left


def _holds_series(t: Target, ur: UpstreamRecord) -> bool:
    """The work tree holds exactly T's series applied on its pin, in every file the series touches, and
    upstream's bytes in every other file the record names (a patch the overlay dropped is not there)."""
    with tempfile.TemporaryDirectory(prefix="zpatch-refresh-") as tmp:
        idx = git.ScratchIndex(t.repo, tmp)
        try:
            commits = idx.commit_patches(t.pin, [p.path for p in t.series.patches])
        except ZpatchError:
            return False
        top = commits[-1] if commits else t.pin
        files = sorted(set(t.series.files) | set(ur.files))
        idx.read_tree(top)
        apply.load_work_tree(t, idx, files, {f: worktree.read(t.top, t.file(f)) for f in files},
                             git.tree_entries(t.repo, top, files))
        return idx.run(["write-tree", "--missing-ok"]).stdout.strip() == git.rev_parse(t.repo, f"{top}^{{tree}}", "tree")


def _hunks(t: Target, commits: list[str], top: str, wanted: str, files: list[str], into: str | None,
           new: str | None, dry_run: bool = False, sweep: list[str] | None = None) -> list[Hunk]:
    """Every hunk of the edit, each with the patch it goes to; refuses one that no single patch owns.
    SWEEP: changed files no patch touches, which --into and --new would take too (the refusal says so)."""
    names = [p.name for p in t.series.patches]
    index = {c: i for i, c in enumerate(commits)}
    out, unowned = [], []
    for f in files:
        if into is None and new is None and not os.path.lexists(t.repo / f) and git.show_blob(t.repo, top, f):
            # a whole file gone is no edit of one patch's lines: a patch that deletes it only when told
            last = next((p.name for p in reversed(t.series.patches) if f in p.files), names[-1] if names else "PATCH")
            co, dry = shlex.quote(str(t.top)), " --dry-run" if dry_run else ""
            back = (f"git -C {shlex.quote(str(t.repo))} checkout -- {shlex.quote(f)} && "
                    if git.show_blob(t.repo, t.pin, f) is not None else "")      # else a patch created it
            raise ZpatchError(f"{t.repo / f}: deleted; refresh folds a deletion of a whole file only when told where",
                              Exit.CONFLICT,
                              hint=f"put it back patched: `{back}zpatch apply {co}`   or   make a patch delete it: "
                                   f"`zpatch refresh{dry} --into {shlex.quote(last)} {co}`")
        found = git.diff_hunks(t.repo, top, wanted, f)
        if found is None:
            raise ZpatchError(f"{t.repo / f}: a binary change; refresh folds text edits", Exit.BAD_CHECKOUT,
                              hint="make the change in edit mode: zpatch edit, commit it, zpatch export")
        length = len(_lines(git.show_blob(t.repo, top, f)))
        try:
            (git.show_blob(t.repo, wanted, f) or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            raise ZpatchError(f"{t.repo / f}: not UTF-8 text after the edit (byte {e.start}); the patches are "
                              "UTF-8 text", Exit.BAD_CHECKOUT, hint="save the file as UTF-8, then rerun") from None
        for a, b, c, d in found:
            h = Hunk(f, (a, b), (c, d))
            if into is not None:
                h.owner = names.index(into) if into in names else None
            elif new is not None:
                h.owner = len(names)
            else:
                first, last = (a, a + b - 1) if b else (max(a, 1), min(a + 1, length))
                owners = ({index[x] for x in git.blame_commits(t.repo, t.pin, top, f, first, last) if x in index}
                          if length and first <= last else set())
                h.owner = owners.pop() if len(owners) == 1 else None
                if h.owner is None:
                    unowned.append((h, sorted(names[i] for i in owners)))
            out.append(h)
    if into is not None and out and out[0].owner is None:
        raise ZpatchError(f"--into {into}: that patch belongs to another upstream than the edit in "
                          f"{t.repo / out[0].path}", Exit.USAGE, hint="name a patch of that upstream's series")
    if unowned:
        h, owners = unowned[0]
        co = shlex.quote(str(t.top))
        why = (f"changed by {' and '.join(owners)}" if owners else "upstream's own, no patch changes them")
        last = next((p.name for p in reversed(t.series.patches) if h.path in p.files), names[-1] if names else None)
        dry = " --dry-run" if dry_run else ""
        ways = ([f"zpatch refresh{dry} --into {last} {co}"] if last else []) + [f"zpatch refresh{dry} --new 'Subject' {co}"]
        also = f"   (either takes your change to {', '.join(sweep)} too)" if sweep else ""
        raise ZpatchError(f"{t.repo / h.path}: lines {h.lines[0]}-{h.lines[1]} are {why}; say where the edit goes",
                          Exit.CONFLICT, hint="   or   ".join(ways) + also,
                          details={"unowned": [{"path": x.path, "lines": x.lines, "patches": o} for x, o in unowned]})
    return out


def _lines(data: bytes | None) -> list[bytes]:
    return data.splitlines(keepends=True) if data else []


def _splice(old: list[bytes], new: list[bytes], hunks: list[Hunk]) -> bytes:
    """OLD with HUNKS (of the diff OLD -> NEW) made, and no other."""
    out, at = [], 0
    for h in sorted(hunks, key=lambda h: h.old[0]):
        (a, b), (c, d) = h.old, h.new
        cut = a - 1 if b else a              # a zero-length old side inserts after line a
        out += old[at:cut]
        out += new[c - 1:c - 1 + d] if d else []
        at = cut + b
    return b"".join(out + old[at:])


def _fold(t: Target, commits: list[str], top: str, wanted: str, hunks: list[Hunk],
          idx: git.ScratchIndex) -> list[str | None]:
    """The tree of every patch of the series (and of a new one at the end, else None) with the hunks of
    each owner spliced into that patch and every patch after it, at the lines they are at in that tree:
    each position is mapped exactly through the diff from the tree to the series' result (no context
    search, so no edit lands in a look-alike spot); a hunk on or next to lines a later patch changes
    cannot be moved under it (CONFLICT)."""
    names = [p.name for p in t.series.patches]
    paths = sorted({h.path for h in hunks})
    want = git.tree_entries(t.repo, wanted, paths)
    new_lines = {f: _lines(git.read_blob(t.repo, want[f][1]) if f in want else None) for f in paths}
    trees: list[str | None] = []
    for i, c in enumerate([*commits, None]):
        mine = [h for h in hunks if h.owner <= i]
        if c is None:                           # the new patch: the whole edit on the series' result
            trees.append(wanted if any(h.owner == len(commits) for h in hunks) else None)
            continue
        if not mine:
            trees.append(git.rev_parse(t.repo, f"{c}^{{tree}}", "tree"))
            continue
        here = git.tree_entries(t.repo, c, paths)
        blobs: dict[str, tuple[str, str] | None] = {}
        for f in sorted({h.path for h in mine}):
            moved = [_moved(t, h, git.diff_hunks(t.repo, c, top, f) if c != top else [], names, i)
                     for h in mine if h.path == f]
            data = _splice(_lines(git.read_blob(t.repo, here[f][1]) if f in here else None), new_lines[f], moved)
            every = len(moved) == len([h for h in hunks if h.path == f])
            if every and f not in want and not data:
                blobs[f] = None                 # the edit deletes the file
            else:
                mode = (here.get(f) or want.get(f) or ("100644",))[0]
                blobs[f] = (mode, git.write_blobs(t.repo, [data])[0])
        idx.read_tree(c)
        idx.set_blobs(blobs)
        trees.append(idx.run(["write-tree", "--missing-ok"]).stdout.strip())
    last = trees[-1] if trees[-1] is not None else trees[-2] if len(trees) > 1 else None
    if last is not None and last != wanted:
        raise ZpatchError(f"{t.repo}: the fold does not reproduce the work tree (tree {last[:12]}, want "
                          f"{wanted[:12]})", Exit.INTERNAL, hint="this is a bug; please report it")
    return trees


def _moved(t: Target, h: Hunk, later: list[tuple[int, int, int, int]] | None, names: list[str], i: int) -> Hunk:
    """H (in the series' result's lines) in the lines of patch I's tree, given LATER, the diff from that
    tree to the result (the patches after I). Refuses a hunk on or next to lines they change."""
    a, b = h.old
    first, last = (a - 1, a + b) if b else (a, a + 1)        # the hunk's lines and one on each side
    shift = 0
    for os_, ol, ns, nl in later or []:
        lo, hi = (ns, ns + nl - 1) if nl else (ns + 0.5, ns + 0.5)     # a deletion sits between lines
        if hi < first:
            shift += nl - ol
        elif lo <= last:
            after = [p.name for p in t.series.patches[h.owner + 1:] if h.path in p.files] or [names[-1]]
            raise ZpatchError(f"{t.repo / h.path}: the edit at lines {h.lines[0]}-{h.lines[1]} belongs to "
                              f"{names[h.owner]}, but {' and '.join(after)} after it changes the lines around it",
                              Exit.CONFLICT, hint=f"put it into the later patch: zpatch refresh --into {after[-1]} "
                                                  f"{shlex.quote(str(t.top))}")
    if later is None:
        raise ZpatchError(f"{t.repo / h.path}: a binary change between {names[i]} and the series' end",
                          Exit.BAD_CHECKOUT, hint="make the change in edit mode: zpatch edit, commit, zpatch export")
    return Hunk(h.path, (a - shift, b), h.new, h.owner)


def _patches(t: Target, idx: git.ScratchIndex, tmp: str, commits: list[str], trees: list[str | None],
             new: str | None) -> list[tuple[str, bytes, str]]:
    """The series after the fold: each patch's name, bytes and state (unchanged, changed, new). A patch
    is rewritten only when its own diff changed; a rewritten one says when (Last-Update)."""
    out = []
    parent, moved = t.pin, False
    for p, c, tree in zip(t.series.patches, commits, trees):
        if not moved and git.rev_parse(t.repo, f"{c}^{{tree}}", "tree") == tree:
            out.append((p.name, p.data, "unchanged"))       # before the first patch the edit goes into
            parent = c
            continue
        moved = True
        if tree == git.rev_parse(t.repo, f"{parent}^{{tree}}", "tree"):
            out.append((p.name, p.data, "dropped"))           # the edit undoes all of it
            continue
        mine = idx.commit_tree(tree, parent, p.path)
        data = patchfile.keep_headers(idx.format_patch(mine), p.data)
        if data == patchfile.keep_headers(idx.format_patch(c), p.data):
            out.append((p.name, p.data, "unchanged"))         # only its parent moved, not its diff
        else:
            out.append((p.name, patchfile.stamp_last_update(data), "changed"))
        parent = mine
    if trees[-1] is not None:
        message = Path(tmp) / "new-patch.eml"
        message.write_bytes(_new_message(t, new or "Local changes"))
        c = idx.commit_tree(trees[-1], parent, message)
        name = git.format_patch_name(t.repo, c, len(commits) + 1)
        if name in {n for n, _d, _s in out}:
            raise ZpatchError(f"{t.series.directory / name}: exists; the new patch needs another subject",
                              Exit.USAGE, hint="pass another --new SUBJECT")
        out.append((name, idx.format_patch(c), "new"))
    return out


def _new_message(t: Target, subject: str) -> bytes:
    """A mail for the new patch: the author git knows (else the series' last author), and the DEP-3
    fields the series' last patch has that say where the work comes from and under what licence."""
    prev = t.series.patches[-1] if t.series.patches else None
    ident = git.run(["var", "GIT_AUTHOR_IDENT"], cwd=t.repo, check=False)
    who = ident.stdout.rsplit(" ", 2)[0] if ident.ok and ident.stdout.strip() else None
    if not who:
        who = git.mailinfo(t.repo, prev.path).get("author", "zpatch") if prev else "zpatch"
    fields = {"Origin": "vendor", "Forwarded": "no"}
    if prev is not None:
        for key in ("Origin", "Upstream-License"):
            if key in prev.headers:
                fields[key] = prev.headers[key]
    fields["Last-Update"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    body = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return (f"From: {who}\nDate: {email.utils.formatdate()}\nSubject: [PATCH] {subject}\n\n"
            f"{body}").encode("utf-8")


def _node_plan(ws: Workspace, rec: Record) -> tuple[dict[str, bytes], NodeRecord | None]:
    """The node's files edited in the checkout (their new bytes, by the node's own path), and the
    node's record after the fold."""
    lo, old = ws.ov.lock.overlay, rec.node
    if lo is None or old is None:
        return {}, old
    edits, stale, missing = {}, False, []
    for f, want in lo.sha256.items():
        data = worktree.read(ws.checkout, f"{lo.path}/{f}")
        if data is None and f not in old.files:
            stale = True                   # the overlay added it since apply
            continue
        if data is None:
            missing.append(f)
            continue
        d = digest(data)
        if d == old.files.get(f):          # as zpatch installed it
            stale |= d != want
        elif d != want:                    # (== want: a refresh killed after it wrote the overlay)
            edits[f] = data
            stale |= want != old.files.get(f)    # and the overlay's copy changed since apply: the edit is older
    for f in node_folder(ws.checkout / lo.path):         # files the user added to the node
        if f not in lo.sha256 and f not in old.files:
            edits[f] = worktree.read(ws.checkout, f"{lo.path}/{f}")
    if missing:
        raise ZpatchError(f"{ws.checkout / lo.path / missing[0]}: missing; refresh does not delete the node's files",
                          Exit.BAD_CHECKOUT, hint=f"to drop it, delete {lo.source}/{missing[0]} in the overlay and run "
                                                  "zpatch lock; `zpatch apply` puts it back")
    if edits and (stale or set(old.files) != set(lo.sha256)):
        co = shlex.quote(str(ws.checkout))
        keep = [step for f in sorted(edits) for step in (copy_aside(ws.checkout, f"{lo.path}/{f}", "node"),
                                                           f"rm -- {shlex.quote(str(ws.checkout / lo.path / f))}")]
        raise ZpatchError(f"{ws.checkout / lo.path}: the overlay's node changed since this checkout was applied; "
                          "refresh would write your older copy over it", Exit.BAD_CHECKOUT,
                          hint=f"keep a copy of your edit and install the overlay's node: `{' && '.join(keep)} && "
                               f"zpatch apply {co}`; then redo the edit from the copy in ~ and `zpatch refresh {co}`")
    if edits:
        return edits, NodeRecord(old.path, {**lo.sha256, **{f: digest(d) for f, d in edits.items()}}, list(old.dirs))
    if stale or old.files == lo.sha256:
        return {}, old                      # nothing edited (or the overlay moved on: apply installs it)
    return {}, NodeRecord(old.path, dict(lo.sha256), list(old.dirs))
