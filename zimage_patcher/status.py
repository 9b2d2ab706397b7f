"""`zpatch status`: what is applied, missing, outdated or modified in a checkout. Read-only: it
never takes the lock or writes; an interrupted run is reported, not repaired."""
from __future__ import annotations

from pathlib import Path

from . import clone, diagnose, edit_mode, git, hunks, operation, record, worktree
from .errors import ZpatchError
from .patchset import Overlay, cwd
from .record import Record
from .workspace import Target, Workspace, edited, node_folder


def _edit_owners(t: Target, ur: record.UpstreamRecord, zdir: Path, f: str) -> tuple[set[str], bool | None]:
    """The patches whose lines the hand edit in F changes, as refresh would place it: the lines each
    applied patch wrote (zpatch's copies of them, from the commit they were applied on), and for a pure
    insertion the lines around it. Second: whether refresh must be told where the edit goes (lines of
    upstream's own or of two patches, or the file deleted). Every patch that changes F, and None, when
    that cannot be traced here (a 3-way apply, a patch git must apply, bytes other than zpatch wrote)."""
    touching = {p.name for p in t.series.patches if f in p.files}
    now = worktree.read(t.top, t.file(f))
    if now is None:
        return touching, True
    if ur.three_way:
        return touching, None
    steps = []
    try:
        for ref in ur.patches:
            data = record.copy_path(zdir, ref).read_bytes()
            diffs = hunks.parse(data)
            diff = next((d for d in diffs or () if d.path == f), None)
            if diffs is None or diff is not None and diff.delete:
                return touching, None
            if diff is not None:
                steps.append((ref.name, diff.hunks))
    except (ZpatchError, OSError):
        return touching, None
    traced = hunks.line_authors(git.show_blob(t.repo, ur.commit, f) or b"", steps)
    if traced is None or git.hash_object_bytes(traced[0]) != ur.files.get(f):
        return touching, None        # not the bytes zpatch wrote (eol filters, a copy gone): no tracing
    result, labels = traced
    import difflib
    owners: set[str] = set()
    unowned = False
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, hunks.lines_of(result), hunks.lines_of(now),
                                                     autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        found = {x for x in labels[max(i1 - 1, 0):i1 + 1] if x} if i1 == i2 else {x for x in labels[i1:i2] if x}
        unowned |= len(found) != 1
        owners |= found
    return (owners & {p.name for p in t.series.patches}) or touching, unowned


def status(ov: Overlay, checkout: Path | None) -> dict:
    """Read-only: never takes the lock or writes; an interrupted run is reported, not repaired."""
    clone.refuse_incomplete(checkout, cwd() if checkout is None else None)
    ws = Workspace.open(ov, checkout)
    journal = operation.pending(ws.journal)
    rec = ws.load_record() or Record({})
    out = {"checkout": str(ws.checkout), "upstreams": [], "node": None, "clean": journal is None,
           "interrupted": {"op": journal["op"], "pid": journal["pid"]} if journal else None}
    for t in ws.targets:
        head = git.head_commit(t.repo)
        if edit_mode.active(t):
            out["upstreams"].append(_edit_status(ws, t, head))
            out["clean"] &= out["upstreams"][-1]["edit"]["exported"] and not out["upstreams"][-1]["foreign_changes"]
            continue
        ur = rec.upstreams.get(t.name)
        recorded = {p.name: p.sha256 for p in ur.patches} if ur else {}
        modified_files = set(edited(t, ur)) if ur else set()
        traced = {f: _edit_owners(t, ur, ws.zdir, f) for f in modified_files}
        owners = {f: o for f, (o, _) in traced.items()}
        unrecorded = [p for p in t.series.patches if p.name not in recorded]
        found = diagnose.classify(t.repo, unrecorded, t.series.files) if unrecorded else {}
        patches = []
        for p in t.series.patches:
            if p.name not in recorded:
                s = found[p.name]           # applied by hand (git am), missing, or conflicting
            elif recorded[p.name] != p.sha256:
                s = "outdated"              # an older version of this patch is applied
            elif any(p.name in owners[f] for f in p.files if f in owners):
                s = "modified"              # applied, then edited by hand (its own lines)
            else:
                s = "applied"
            patches.append({"name": p.name, "state": s,     # an outdated patch may hold an edit too
                            "edited": sorted(f for f in p.files if p.name in owners.get(f, ()))
                            if s in ("modified", "outdated") else []})
        # a file the series changes is the patches' business only where a patch is there (zpatch's or
        # applied by hand); anywhere else a change in it is the user's own edit, in the way of apply
        theirs = {f for p, e in zip(t.series.patches, patches) if e["state"] != "missing" and e["state"] != "conflict"
                  for f in p.files} | (set(ur.files) if ur else set())
        foreign = [{"path": f, "git_status": code, "in_patched_file": f in t.series.files}
                   for f, code in sorted(git.changed_paths(t.repo).items())
                   if f not in theirs and not inside_nested(t, ws.targets, f)]
        entry = {"name": t.name, "path": t.rel, "pin": t.pin, "head": head, "at_pin": head == t.pin,
                 "three_way": bool(ur and ur.three_way), "patches": patches, "foreign_changes": foreign,
                 "unowned_edits": sorted(f for f, (_, unowned) in traced.items() if unowned),
                 "untraced_edits": sorted(f for f, (_, unowned) in traced.items() if unowned is None)}
        out["upstreams"].append(entry)
        if not entry["at_pin"] or foreign or any(p["state"] != "applied" for p in patches):
            out["clean"] = False
    lo = ov.lock.overlay
    if lo:
        files = ws.node_files()
        if rec.node:
            for f, state in files.items():    # as zpatch installed it, but the overlay's node changed since
                if state == "modified" and rec.node.files.get(f) is not None and \
                        _digest(ws.checkout, f"{lo.path}/{f}") == rec.node.files[f]:
                    files[f] = "outdated"
            # files of the user's in the installed node's folder: refresh would add them to the node
            files.update({f: "added" for f in node_folder(ws.checkout / lo.path)
                          if f not in files and f not in rec.node.files})
        vals = set(files.values())
        out["node"] = {"path": lo.path, "files": files,
                       "state": "installed" if vals == {"ok"} else "missing" if vals == {"missing"} else
                       "outdated" if vals <= {"ok", "outdated"} else "modified"}
        if out["node"]["state"] != "installed" and not any(u.get("edit") for u in out["upstreams"]):
            out["clean"] = False       # in edit mode the node is not installed: it is edited in the overlay
    return out


def _digest(root: Path, rel: str) -> str | None:
    try:
        data = worktree.read(root, rel)
    except ZpatchError:              # a symlink in the way: never read through it
        return None
    return None if data is None else record.digest(data)


def _edit_status(ws: Workspace, t: Target, head: str | None) -> dict:
    """An upstream in edit mode: its commits as export would write them (the branch's, when an edit or
    unapply killed between its git steps left HEAD off it; none when it has no branch yet)."""
    interrupted = edit_mode.half_made(t) or not edit_mode.on_branch(t)
    moved = edit_mode.pin_moved(t)         # a rebase moved the pin: the branch cannot be exported any more
    sp = (None if edit_mode.half_made(t) or moved
          else edit_mode.plan(ws, t, allow_dirty=True, head=edit_mode.BRANCH_REF))
    states = {"unchanged": "committed", "changed": "changed", "new": "new"}
    patches = [{"name": p.name, "state": states[p.state]} for p in sp.patches] if sp else []
    patches += [{"name": n, "state": "dropped"} for n in sp.removed] if sp else []
    foreign = [{"path": f, "git_status": code} for f, code in sorted(git.changed_paths(t.repo).items())
               if not inside_nested(t, ws.targets, f)]
    return {"name": t.name, "path": t.rel, "pin": t.pin, "head": head, "at_pin": head == t.pin, "three_way": False,
            "patches": patches, "foreign_changes": foreign,
            "edit": {"branch": git.EDIT_BRANCH,
                     "commits": len(sp.patches) if sp else _commits_on_branch(t) if moved else 0,
                     "exported": (edit_mode.exported(ws, t) if moved else bool(sp) and not sp.changed)
                     and not interrupted, "interrupted": interrupted, "pin_moved": moved}}


def _commits_on_branch(t: Target) -> int:
    """The commits of the edit branch over the commit it started from (when the pin has moved on)."""
    base = git.rev_parse(t.repo, git.EDIT_BASE)
    return len(git.rev_list_parents(t.repo, f"{base}..{edit_mode.BRANCH_REF}")) if base else 0


def inside_nested(t: Target, targets: list[Target], rel: str) -> bool:
    """A path inside an upstream nested in T's tree is that upstream's business (its own status
    covers it); everything else in T, including inside nested folders of T, is T's."""
    abs_path = t.repo / rel
    return any(o is not t and o.repo != t.repo and t.repo in o.repo.parents
               and (o.repo == abs_path or o.repo in abs_path.parents) for o in targets)


def not_ready_for_smoke(ov: Overlay, checkout: Path, *, pristine: bool) -> str | None:
    """Why CHECKOUT cannot give a meaningful smoke of overlay OV (PRISTINE: its negative control, which
    needs upstream without the overlay); None when it can. A patch applied by hand (git am) counts as
    applied; an edited one too (the smoke then tests the edit)."""
    st = status(ov, checkout)
    node = st["node"]["state"] if st["node"] else None
    if pristine:
        there = [p["name"] for u in st["upstreams"] for p in u["patches"] if p["state"] not in ("missing", "conflict")]
        if there or node not in (None, "missing"):
            return (f"the negative control needs upstream without the overlay, but {there[0] if there else 'its node'} "
                    "is applied")
        return None
    absent = [f"{p['name']} ({p['state']})" for u in st["upstreams"] for p in u["patches"]
              if p["state"] in ("missing", "conflict", "outdated")]
    if absent or node == "missing":
        what = absent[0] if absent else f"the node {st['node']['path']} (missing)"
        return f"the overlay at {ov.root} is not applied here: {what}" + (
            f" and {len(absent) - 1} more" if len(absent) > 1 else "")
    return None
