"""`zpatch apply` and `zpatch unapply`: how they decide what to write.

Both compute the whole result first, in scratch indexes, so every failure is known before the first
write; then the workspace's transaction (operation.commit) carries it out under the checkout lock
with a journal. Nothing is written or deleted unless its bytes are what zpatch expects there.
"""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path, PurePosixPath

# edit_mode, diagnose and tempfile are imported where they are used: a no-op apply never needs them
from . import clone, git, operation, patchfile, record, worktree
from .errors import Exit, ZpatchError
from .operation import Change
from .patchset import Overlay, cwd, overlay_files
from .record import NodeRecord, PatchRef, Record, UpstreamRecord
from .workspace import Target, Workspace, edited, edits_since_apply, refuse_edits


def _fast_noop(ws: Workspace, rec: Record | None) -> bool:
    """True when the checkout already holds exactly this overlay; reads files only, runs no git."""
    if rec is None or record.pointer(ws.zdir) != str(ws.ov.root):    # another overlay's: point at this one
        return False
    for t in ws.targets:
        ur = rec.upstreams.get(t.name)
        if ur is None or [(p.name, p.sha256) for p in ur.patches] != [(p.name, p.sha256) for p in t.series.patches]:
            return False
        if git.head_commit(t.repo) != ur.commit or edited(t, ur):
            return False
    lo = ws.ov.lock.overlay
    if lo:
        if rec.node is None or rec.node.files != lo.sha256 or rec.node.path != lo.path:
            return False
        return set(ws.node_files().values()) <= {"ok"}
    return True


def back_to_pin(checkout: Path, repo: Path, pin: str, applied: bool) -> str:
    """Commands that put REPO (in CHECKOUT) back on PIN in the state it is in: an APPLIED checkout is
    unapplied first (git would refuse to check out over zpatch's changes) and applied again after,
    and a pin the repository lacks is fetched first."""
    co, q = shlex.quote(str(checkout)), shlex.quote(str(repo))
    steps = [] if git.has_commit(repo, pin) else [f"git -C {q} fetch origin {pin}"]
    head = git.head_commit(repo)
    if head and not git.run(["for-each-ref", "--count=1", "--contains", head], cwd=repo, check=False).stdout.strip():
        steps.insert(0, f"git -C {q} branch -f zpatch-saved-{head[:12]} {head}")   # commits no branch holds: keep them
    steps.append(f"git -C {q} checkout --detach {pin}")
    if applied:
        steps = [f"zpatch unapply {co}", *steps, f"zpatch apply {co}"]
    return " && ".join(steps)


def _back_to_pin(ws: Workspace, t: Target, rec: Record | None) -> str:
    return (f"{back_to_pin(ws.checkout, t.repo, t.pin, bool(rec is not None and rec.upstreams))}; "
            "or rerun with --3way to merge the patches onto what is there")


def _preflight(ws: Workspace, rec: Record | None, three_way: bool, paths: dict[str, list[str]]
               ) -> tuple[dict[str, str | None], dict[str, dict[str, tuple[str, str]]]]:
    """Everything that can refuse the apply, checked before anything is written. Returns each
    upstream's HEAD and HEAD's entries of its PATHS (read once here, reused by _scratch_result)."""
    heads, entries = {}, {}
    for t in ws.targets:
        heads[t.name] = git.head_commit(t.repo)
        if heads[t.name] != t.pin and not three_way:
            at = f"is at {heads[t.name][:12]}" if heads[t.name] else "has a HEAD that cannot be read"
            raise ZpatchError(f"{t.repo}: {t.name} {at}, pinned at {t.pin[:12]}",
                              Exit.BAD_CHECKOUT, hint=_back_to_pin(ws, t, rec))
    edits = edits_since_apply(ws, rec)
    if edits:
        raise refuse_edits(edits, "refusing to overwrite", f"zpatch apply {shlex.quote(str(ws.checkout))}")
    for t in ws.targets:
        ur = rec.upstreams.get(t.name) if rec else None
        recorded = set(ur.files) if ur else set()
        fresh = [f for f in t.series.files if f not in recorded]
        entries[t.name] = git.tree_entries(t.repo, "HEAD", scratch_paths(paths[t.name]))   # FRESH among them
        head = {f: entries[t.name][f][1] for f in fresh if f in entries[t.name]}
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
            stash = f"git -C {shlex.quote(str(t.repo))} stash push -- {shlex.join(sorted(dirty))}"
            raise ZpatchError(f"{t.repo / f}: has uncommitted changes and a patch touches it", Exit.BAD_CHECKOUT,
                              hint=f"commit them, or keep them aside: `{stash} && zpatch apply "
                                   f"{shlex.quote(str(ws.checkout))}`")
    return heads, entries


def _scratch_result(ws: Workspace, t: Target, paths: list[str], current: dict[str, bytes | None],
                    undo: UpstreamRecord | None, then: list[patchfile.Patch], three_way: bool,
                    base: str | None, head: dict[str, tuple[str, str]] | None = None,
                    ) -> tuple[dict[str, tuple[str, str] | None], dict[str, tuple[str, str]]]:
    """PATHS after taking out what UNDO (zpatch's record) put in and applying THEN, computed in a
    scratch index. Returns path -> (mode, blob, work-tree bytes) or None, and HEAD's entries.
    A fixed number of git processes, however many files and patches.

    The preflight has made sure every path holds upstream's bytes or zpatch's recorded ones, so when
    the record was made on this HEAD, HEAD's own entries are the starting point: no work-tree bytes
    go through git's eol filters (which would turn ComfyUI-GGUF's CRLF into LF under core.autocrlf),
    and a file the user already put back needs nothing. Only on another HEAD are the recorded
    copies reversed from the work tree's bytes. HEAD: HEAD's entries of scratch_paths(PATHS) when the
    caller has read them already."""
    import tempfile
    if head is None:
        head = git.tree_entries(t.repo, "HEAD", scratch_paths(paths))
    reverse = undo is not None and undo.patches and undo.commit != git.head_commit(t.repo)
    with tempfile.TemporaryDirectory(prefix="zpatch-idx-") as tmp:
        idx = git.ScratchIndex(t.repo, tmp)
        idx.start("HEAD", {p: e for p, e in head.items() if e[0] != "040000"})     # folders: not entries
        if reverse:
            load_work_tree(t, idx, paths, current, head)
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
        entries = None
        if then:
            r = idx.apply([p.path for p in then], three_way=three_way)
            entries = idx.entries(paths)          # the result, read once: the check below and what follows
            unmerged = [p for p, e in entries.items() if e[2]]
            if not r.ok or unmerged:
                from . import diagnose
                fails = diagnose.failures(t.repo, base or "HEAD", then, stop_at_first=True)
                first = diagnose.one_line(fails[0]) if fails else r.last_line()
                how = (f"the 3-way merge left conflicts in {', '.join(unmerged)}; " if three_way and unmerged else "")
                raise ZpatchError(f"{t.name}: {how}{first}", Exit.CONFLICT,
                                  hint="nothing was changed; `zpatch check` lists every failing hunk against the "
                                       "pins" + ("" if not three_way else "; or move the upstream back to its pin"),
                                  details={"failures": fails, "conflicted_files": unmerged})
        if entries is None:
            entries = idx.entries(paths)
        _check_modes(t, then, entries, head)
        present = [p for p in paths if p in entries]
        idx.checkout_to(Path(tmp) / "out", present)      # the bytes git would check out (filters, eol)
        return {p: (entries[p][0], entries[p][1], (Path(tmp) / "out" / p).read_bytes()) if p in entries else None
                for p in paths}, head


def scratch_paths(paths: list[str]) -> list[str]:
    """PATHS and what else a scratch index that holds only them needs from HEAD: the folders above
    them (HEAD's file or submodule where a patch needs a folder must clash there, as in a full index)
    and the .gitattributes files that can apply to them (checkout-index reads attributes from the
    index: eol, filters)."""
    dirs = {d for p in paths for d in operation.parent_dirs(p)}
    extra = {".gitattributes", *dirs, *(f"{d}/.gitattributes" for d in dirs)}
    return list(dict.fromkeys([*paths, *sorted(extra)]))


def load_work_tree(t: Target, idx: git.ScratchIndex, paths: list[str], current: dict[str, bytes | None],
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


def node_folder_hint(checkout: Path, top: Path, files: set[str]) -> str:
    """The way past a node folder zpatch did not make. When it holds none of the node's files or folders
    (what unapply leaves when someone put a file of theirs in it), the user's files move to a new folder
    in ~ and the node installs there as before; otherwise the folder moves aside, with a name ComfyUI
    skips (.disabled: a .bak beside it would load twice)."""
    q = shlex.quote(str(top))
    if top.is_symlink() or not top.is_dir():
        return f"move it away (mv {q} {shlex.quote(str(top) + '.disabled')}) and rerun"
    names = sorted(e.name for e in top.iterdir())
    taken = {f.split("/")[0] for f in files}
    if taken & set(names):
        return f"move it away (mv {q} {shlex.quote(str(top) + '.disabled')}) and rerun"
    mark = hashlib.sha256("\0".join(names).encode()).hexdigest()[:12]
    dest = "~/" + shlex.quote(f"zpatch-saved-{top.name}-{mark}")
    moves = " ".join(shlex.quote(str(top / n)) for n in names)
    return (f"it holds only files of yours: keep them elsewhere and apply: `mkdir {dest} && mv -- {moves} {dest}/ "
            f"&& zpatch apply {shlex.quote(str(checkout))}`")


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
                                  hint=node_folder_hint(ws.checkout, top, {rel[len(lo.path) + 1:] for rel in want}))
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


def _open(ov: Overlay, checkout: Path | None) -> tuple[Workspace, dict]:
    clone.refuse_incomplete(checkout, cwd() if checkout is None else None)
    ws = Workspace.open(ov, checkout)
    return ws, {"checkout": str(ws.checkout), "changed": False, "replaced": [], "recovered": None,
                "upstreams": [], "node": ws.node_rel, "files_written": [], "files_removed": []}


def _unlocked_noop(ws: Workspace, result: dict) -> bool:
    """The no-op fast path: reads files only, no lock, no git. A run in flight has a journal (or was
    killed writing it: the locked path sweeps what it left)."""
    if ws.journal.exists() or ws.journal.with_name(ws.journal.name + ".tmp").exists():
        return False
    rec = ws.load_record()
    if not _fast_noop(ws, rec):
        return False
    result["upstreams"] = [_up_result(t, rec.upstreams[t.name]) for t in ws.targets]
    return True


def already_applied(ov: Overlay, checkout: Path | None) -> dict | None:
    """What `apply` returns when CHECKOUT already holds exactly this overlay, decided by apply's own
    first step (files only); None when only the locked path can tell. The console script's fast path
    (entry.py) asks this before it loads the CLI."""
    ws, result = _open(ov, checkout)
    return result if _unlocked_noop(ws, result) else None


def apply(ov: Overlay, checkout: Path | None, *, three_way: bool = False) -> dict:
    ws, result = _open(ov, checkout)
    if _unlocked_noop(ws, result):
        return result
    with ws.locked() as recovered:
        from . import edit_mode
        result["recovered"] = recovered
        edit_mode.refuse(ws, "apply")
        rec = ws.load_record()
        if _fast_noop(ws, rec):
            result["upstreams"] = [_up_result(t, rec.upstreams[t.name]) for t in ws.targets]
            return result
        olds = {t.name: rec.upstreams.get(t.name) if rec else None for t in ws.targets}
        touched = {t.name: list(dict.fromkeys([*(olds[t.name].files if olds[t.name] else []), *t.series.files]))
                   for t in ws.targets}
        heads, head_entries = _preflight(ws, rec, three_way, touched)
        changes: list[Change] = []
        ups = {}
        for t in ws.targets:
            old, paths = olds[t.name], touched[t.name]
            cur = {p: worktree.read(t.top, t.file(p)) for p in paths}
            res, _head = _scratch_result(ws, t, paths, cur, old, t.series.patches,
                                         three_way and heads[t.name] != t.pin, heads[t.name], head_entries[t.name])
            ch, after = _changes_for(t, paths, cur, res)
            changes += ch
            ups[t.name] = UpstreamRecord(heads[t.name], [PatchRef(p.name, p.sha256) for p in t.series.patches],
                                         {f: after[f] for f in t.series.files},
                                         three_way=heads[t.name] != t.pin)
        node_changes, node = _node_plan(ws, rec, install=True)
        changes += node_changes
        new = Record(ups, node)
        if rec is not None and rec.to_bytes() == new.to_bytes() and not changes:
            record.remember_overlay(ws.zdir, ws.ov.root)
            result["upstreams"] = [_up_result(t, ups[t.name]) for t in ws.targets]
            return result
        copies = [p.data for t in ws.targets for p in t.series.patches]
        ws.commit("apply", changes, new, copies)
    replaced = [t.name for t in ws.targets if rec and t.name in rec.upstreams
                and rec.upstreams[t.name].patches != ups[t.name].patches]
    result.update(changed=True, replaced=replaced,
                  upstreams=[_up_result(t, ups[t.name]) for t in ws.targets],
                  files_written=[c.full for c in changes if c.after], files_removed=[c.full for c in changes
                                                                                   if not c.after])
    return result


def _up_result(t: Target, ur: UpstreamRecord) -> dict:
    return {"name": t.name, "path": t.rel, "pin": t.pin, "head": ur.commit, "three_way": ur.three_way,
            "applied": [p.name for p in ur.patches]}


def unapply(ov: Overlay, checkout: Path | None, *, discard: bool = False, then: str | None = None,
            op: str = "unapply") -> dict:
    """THEN: the command a refusal's hint ends in, and OP the name its journal gives an interrupted run
    (the command that asked for the unapply, when not the user: edit)."""
    from . import edit_mode
    clone.refuse_incomplete(checkout, cwd() if checkout is None else None)
    ws = Workspace.open(ov, checkout)
    with ws.locked() as recovered:
        rec = ws.load_record()
        result = {"checkout": str(ws.checkout), "changed": False, "recovered": recovered, "upstreams": [],
                  "node": None, "files_restored": [], "left_edit_mode": [], "off_pin": []}
        if any(edit_mode.active(t) for t in ws.targets):
            left = edit_mode.leave(ws, discard=discard)
            result["left_edit_mode"] = [u["name"] for u in left]
            # a rebase moved the pin since `edit`: back where the branch began, the old pin; say the way on
            result["off_pin"] = [{"name": u["name"], "head": u["head"], "pin": u["pin"],
                                  "next": back_to_pin(ws.checkout, ws.checkout / u["path"], u["pin"], False)
                                  + f" && zpatch apply {shlex.quote(str(ws.checkout))}"}
                                 for u in left if u["head"] != u["pin"]]
            result["changed"] = True
            rec = ws.load_record()
        record.remember_overlay(ws.zdir, ws.ov.root)
        if rec is None:
            return result
        edits = edits_since_apply(ws, rec)
        if edits:
            raise refuse_edits(edits, "unapply would lose that edit", then or f"zpatch unapply {shlex.quote(str(ws.checkout))}")
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
        ws.commit(op, changes, None, [], sweep=sweep)
        if rec.node:
            result["node"] = rec.node.path
            result["node_kept"] = (ws.checkout / rec.node.path).is_dir()   # it holds files that are not ours
    result["changed"] = True
    result["files_restored"] = [c.full for c in changes]
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
