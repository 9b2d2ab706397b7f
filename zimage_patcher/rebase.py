"""`zpatch rebase`: carry one upstream's series from its pin onto another upstream commit.

One patch at a time, on the plumbing of a scratch index over the cache (no checkout of the user's),
each patch ends as one of:
  unchanged   applies exactly and exports to the same bytes
  refreshed   applies (exactly or 3-way) with the same change: only offsets, context or index lines moved
  changed     the 3-way merge (or the maintainer's resolution) changed what the patch does
  upstreamed  upstream already has it: the 3-way result adds nothing, or it reverse-applies
  obsolete    one of its Obsolete-If probes fires on the target (probes.py), conflict or not
  conflict    none of the above (with --dry-run the report goes on to the next patch)
  skipped     dropped by `--skip`

A conflict stops the rebase: the patch is applied 3-way in a sparse scratch clone in the cache, with
conflict markers, and the state is saved in op.json beside it. `--continue` takes the resolved files,
`--skip` drops the patch, `--abort` forgets everything. The overlay (patches, series, upstream.lock) is
written only when the last patch is through: backups first, then the files, then the lock; a kill
there is rolled back by the next rebase command. `--dry-run` does all of it and writes nothing.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from . import cache, git, lock as lockmod, patchset, probes
from .edit import _keep_headers
from .errors import Exit, ZpatchError
from .patchfile import Patch
from .patchset import Overlay, Series
from .worktree import Exclusive, fault_point

OP_NAME = "op.json"


def _area(root: Path) -> Path:
    """The rebase scratch area of the overlay at ROOT (one rebase at a time per overlay)."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache.cache_home() / "rebase" / key


def _locked(root: Path) -> Exclusive:
    """One rebase command at a time per overlay: a lock beside its scratch area."""
    path = _area(root).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Exclusive(path, lambda pid: ZpatchError(
        f"another zpatch rebase (pid {pid}) is running on this overlay", Exit.BUSY,
        hint="wait for it, then zpatch rebase --continue or --abort"))


def in_progress(root: Path) -> dict | None:
    try:
        return json.loads((_area(root) / OP_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ZpatchError(f"{_area(root) / OP_NAME}: the state of a rebase in progress is damaged", Exit.BAD_CHECKOUT,
                          hint=f"zpatch rebase --abort (or remove {_area(root)})")


def _save(root: Path, op: dict) -> None:
    path = _area(root) / OP_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(OP_NAME + ".tmp")
    tmp.write_text(json.dumps(op, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _series(ov: Overlay, name: str) -> Series:
    s = next((s for s in ov.series if s.upstream.name == name), None)
    if s is None:
        raise ZpatchError(f"{name}: no such upstream in {lockmod.LOCK_NAME}", Exit.USAGE,
                          hint="one of: " + ", ".join(s.upstream.name for s in ov.series))
    return s


def _today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def _stamp(data: bytes) -> bytes:
    """DATA with its message's DEP-3 Last-Update set to today: a patch that moved says when."""
    head, sep, diff = data.partition(b"\ndiff --git ")
    head = re.sub(rb"^Last-Update: .*$", f"Last-Update: {_today()}".encode(), head, count=1, flags=re.M)
    return head + sep + diff


def _touching(repo: Path, old: str, new: str, files: list[str]) -> list[str]:
    """Upstream commits between the old pin and the target that touched FILES, newest first."""
    out = git.run(["log", "--format=%H %s", f"{old}..{new}", "--", *files], cwd=repo).stdout
    return out.splitlines()[:20]


def _carry(repo: Path, idx: git.ScratchIndex, tip: str, p: Patch, old_pin: str, onto: str) -> dict:
    """Try P on TIP (ONTO plus the patches carried so far). Probes and the upstream commits to blame
    are read on ONTO, upstream's own tree. Returns {state, commit?, data?, fired?, files?}."""
    fired = probes.fired(p, repo, onto)
    idx.read_tree(tip)
    exact = idx.apply([p.path]).ok
    conflicted: list[str] = []
    if not exact:
        idx.read_tree(tip)
        r = idx.apply([p.path], three_way=True)
        conflicted = [f for f, e in idx.entries(p.files).items() if e[2]]
        if not r.ok or conflicted:
            idx.read_tree(tip)
            if idx.run(["apply", "--cached", "--check", "--reverse", str(p.path)], check=False).ok:
                return {"state": "obsolete" if fired else "upstreamed", "fired": fired}
            return {"state": "obsolete" if fired else "conflict", "fired": fired,
                    "files": conflicted or p.files, "upstream_commits": _touching(repo, old_pin, onto, p.files)}
    tree = idx.run(["write-tree", "--missing-ok"]).stdout.strip()
    if fired:
        return {"state": "obsolete", "fired": fired}
    if tree == git.run(["rev-parse", f"{tip}^{{tree}}"], cwd=repo, env=idx.env).stdout.strip():
        return {"state": "upstreamed", "fired": []}
    commit = idx.commit_tree(tree, tip, p.path)
    data = _keep_headers(idx.format_patch(commit), p.data)
    if data == p.data:
        return {"state": "unchanged", "commit": commit, "data": data}
    return {"state": "refreshed" if _change(data) == _change(p.data) else "changed", "commit": commit,
            "data": _stamp(data)}


def _change(data: bytes) -> list[bytes]:
    """What a patch does: its files and the lines it adds and removes, without context, offsets or
    index lines (those moving is a refresh, not a change)."""
    diff = data[data.find(b"\ndiff --git "):]
    return [line for line in diff.split(b"\n") if line.startswith((b"diff --git ", b"+", b"-"))
            and not line.startswith((b"+++ ", b"--- "))]


def start(ov: Overlay, name: str, onto: str, *, dry_run: bool = False, allow_unrelated: bool = False,
          offline: bool = False) -> dict:
    if dry_run:
        return _start(ov, name, onto, dry_run=True, allow_unrelated=allow_unrelated, offline=offline)
    with _locked(ov.root):
        return _start(ov, name, onto, dry_run=False, allow_unrelated=allow_unrelated, offline=offline)


def _start(ov: Overlay, name: str, onto: str, *, dry_run: bool, allow_unrelated: bool, offline: bool) -> dict:
    op = None if dry_run else in_progress(ov.root)     # a dry run touches no state: drift runs beside one
    if op is not None:
        raise ZpatchError(f"a rebase of {op['upstream']} onto {op['onto'][:12]} is in progress", Exit.BUSY,
                          hint="zpatch rebase --continue, --skip or --abort")
    s = _series(ov, name)
    up = s.upstream
    mirror, target = cache.resolve(up.url, up.commit, onto, offline=offline)
    if not git.run(["merge-base", "--is-ancestor", up.commit, target], cwd=mirror, check=False).ok \
            and not allow_unrelated:
        raise ZpatchError(f"{onto} ({target[:12]}) does not descend from the pin {up.commit[:12]} of {name}",
                          Exit.USAGE, hint="a rebase onto an older or unrelated commit needs --allow-unrelated")
    op = {"version": 1, "upstream": name, "old_pin": up.commit, "onto": target, "onto_ref": onto,
          "tip": target, "todo": [p.name for p in s.patches], "done": [], "dry_run": dry_run,
          "ahead": len(git.rev_list(mirror, f"{up.commit}..{target}"))}
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="zpatch-rebase-") as tmp:
            idx = git.ScratchIndex(mirror, tmp, read_only=True)
            return _run(ov, s, mirror, idx, op, dry_run=True)
    area = _area(ov.root)
    shutil.rmtree(area, ignore_errors=True)
    area.mkdir(parents=True)
    _save(ov.root, op)
    return _resume(ov, op)


def _store(ov: Overlay, mirror: Path) -> git.ScratchIndex:
    """The rebase's own index and object store in its area (commits survive a stop), reading the
    cache mirror and the conflict clone through alternates; nothing is written to the cache."""
    area = _area(ov.root)
    # an index of this process's own: a run killed inside git leaves its index.lock behind
    idx = git.ScratchIndex(mirror, str(area), read_only=True, index=f"index-{os.getpid()}")
    work = area / "work" / ".git" / "objects"
    if work.is_dir():
        idx.env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] += os.pathsep + str(work)
    return idx


def _run(ov: Overlay, s: Series, repo: Path, idx: git.ScratchIndex, op: dict, *, dry_run: bool) -> dict:
    by_name = {p.name: p for p in s.patches}
    if not op.get("old_tip"):
        # the old series as commits on the old pin: a 3-way merge needs each patch's preimage blobs,
        # and the range-diff needs the old commits
        old = idx.commit_patches(op["old_pin"], [p.path for p in s.patches])
        op["old_tip"] = old[-1] if old else op["old_pin"]
    while op["todo"]:
        p = by_name[op["todo"][0]]
        res = _carry(repo, idx, op["tip"], p, op["old_pin"], op["onto"])
        entry = {"name": p.name, **{k: v for k, v in res.items() if k != "data"}}
        if res["state"] == "conflict" and not dry_run:
            return _stop(ov, s, op, p, res)
        if "commit" in res:
            op["tip"] = res["commit"]
            entry["data_sha256"] = hashlib.sha256(res["data"]).hexdigest()
            if not dry_run:
                _keep(ov.root, p.name, res["data"])
        op["done"].append(entry)
        op["todo"].pop(0)
        if not dry_run:
            _save(ov.root, op)
    return _finish(ov, s, repo, idx, op, dry_run=dry_run)


def _keep(root: Path, name: str, data: bytes) -> None:
    d = _area(root) / "out"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def _scratch_clone(ov: Overlay, s: Series, mirror: Path) -> Path:
    """A sparse clone of the cache mirror (objects shared), only the series' files in its work tree."""
    repo = _area(ov.root) / "work"
    if not (repo / ".git").is_dir():
        git.run(["clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(repo)])
        with open(repo / ".git/objects/info/alternates", "a", encoding="utf-8") as f:
            f.write(str(_area(ov.root) / "objects") + "\n")     # the commits of the patches carried so far
        files = sorted({f for p in s.patches for f in p.files})
        git.run(["sparse-checkout", "set", "--no-cone", *[f"/{f}" for f in files]], cwd=repo)
    return repo


def _stop(ov: Overlay, s: Series, op: dict, p: Patch, res: dict) -> dict:
    """A conflict: the patch applied 3-way in the scratch work tree, markers in the files."""
    mirror = cache.mirror_path(s.upstream.url)
    repo = _scratch_clone(ov, s, mirror)
    git.run(["checkout", "--quiet", "--force", "--detach", op["tip"]], cwd=repo)
    git.run(["apply", "--3way", str(p.path)], cwd=repo, check=False)
    merged = bool(git.run(["ls-files", "-u"], cwd=repo).stdout.strip())
    op["current"] = {"name": p.name, "files": res.get("files", []), "upstream_commits": res["upstream_commits"],
                     "fired": res.get("fired", []), "markers": merged}
    _save(ov.root, op)
    return _report(ov, s, op, stopped=True, scratch=repo)


def _finish(ov: Overlay, s: Series, repo: Path, idx: git.ScratchIndex, op: dict, *, dry_run: bool) -> dict:
    result = _report(ov, s, op, stopped=False)
    rd = git.run(["range-diff", "--no-color", f"{op['old_pin']}..{op['old_tip']}", f"{op['onto']}..{op['tip']}"],
                 cwd=repo, env=idx.env, check=False)
    result["range_diff"] = rd.stdout if rd.ok else ""
    if dry_run:
        return result
    _write_overlay(ov, s, op)
    (_area(ov.root) / OP_NAME).unlink()          # done: from here no command restores the backups
    fault_point()
    shutil.rmtree(_area(ov.root), ignore_errors=True)
    result["written"] = True
    return result


def _write_overlay(ov: Overlay, s: Series, op: dict) -> None:
    """Backups of the files it replaces, then the patches, the series, and the lock (with the new pin)
    last; recover() puts the backups back if this is cut short."""
    d = s.directory
    area = _area(ov.root)
    backup = area / "backup"
    backup.mkdir(exist_ok=True)
    lock_path = ov.root / lockmod.LOCK_NAME
    for f in [d / "series", lock_path, *(d / p.name for p in s.patches)]:
        shutil.copy2(f, backup / (f.name if f != lock_path else "upstream.lock"))
    op["writing"] = True
    _save(ov.root, op)
    fault_point()
    kept = [e for e in op["done"] if "data_sha256" in e]
    for e in kept:
        src = area / "out" / e["name"]
        if e["state"] != "unchanged":
            shutil.copy2(src, d / e["name"])
            fault_point()
    for e in op["done"]:
        if "data_sha256" not in e:
            (d / e["name"]).unlink(missing_ok=True)
            fault_point()
    if [e["name"] for e in kept] != [p.name for p in s.patches]:    # keep quilt's comments when nothing moved
        (d / "series").write_text("".join(e["name"] + "\n" for e in kept), encoding="utf-8")
    fault_point()
    lk = lockmod.parse(lock_path)
    for u in lk.upstreams:
        if u.name == s.upstream.name:
            u.commit = op["onto"]
    lockmod.write(ov.root, lk)
    fault_point()
    patchset.write_lock(ov.root)
    fault_point()


def recover(root: Path) -> str | None:
    """A rebase killed while writing the overlay: put the backups back. Returns what it did."""
    op = in_progress(root)
    if not op or not op.get("writing"):
        return None
    ov_lock = root / lockmod.LOCK_NAME
    backup = _area(root) / "backup"
    lk = lockmod.parse(backup / "upstream.lock")
    up = next(u for u in lk.upstreams if u.name == op["upstream"])
    d = root / up.patches
    for e in op["done"]:
        if (d / e["name"]).exists() and not (backup / e["name"]).exists():
            (d / e["name"]).unlink()
    for f in backup.iterdir():
        shutil.copy2(f, ov_lock if f.name == "upstream.lock" else d / f.name)
    stray = ov_lock.with_name(ov_lock.name + ".tmp")         # a kill inside the lock's own write
    if stray.is_file() and not stray.is_symlink():
        stray.unlink()
    op["writing"] = False
    _save(root, op)
    return "Put back patches/, the series and upstream.lock as they were before an interrupted rebase wrote them."


def resume(ov_root: Path, action: str) -> dict:
    """--continue, --skip or --abort of the rebase in progress for the overlay at OV_ROOT."""
    with _locked(ov_root):
        return _resume_locked(ov_root, action)


def _resume_locked(ov_root: Path, action: str) -> dict:
    op = in_progress(ov_root)
    if op is None:
        raise ZpatchError("no rebase in progress", Exit.USAGE, hint="start one: zpatch rebase UPSTREAM --onto REF")
    said = recover(ov_root)
    if action == "abort":
        (_area(ov_root) / OP_NAME).unlink()
        shutil.rmtree(_area(ov_root), ignore_errors=True)
        return {"aborted": True, "upstream": op["upstream"], "recovered": said}
    return _resume(patchset.load(ov_root, verify_hashes=False), op, action=action)


def _resume(ov: Overlay, op: dict, action: str | None = None) -> dict:
    s = _series(ov, op["upstream"])
    mirror = cache.mirror_path(s.upstream.url)
    idx = _store(ov, mirror)
    if action is not None and op.get("current"):
        cur = op.pop("current")
        p = next(p for p in s.patches if p.name == cur["name"])
        if action == "skip":
            op["done"].append({"name": p.name, "state": "skipped"})
        else:
            op["done"].append(_resolved(ov, op, p, cur))
            idx = _store(ov, mirror)
        op["todo"].pop(0)
        _save(ov.root, op)
    elif action == "skip":
        raise ZpatchError("the rebase is not stopped at a conflict: there is no patch to skip", Exit.USAGE,
                          hint="zpatch rebase --continue resumes it; --abort drops it")
    # --continue without a conflict: a run that was killed picks up where its state says
    return _run(ov, s, mirror, idx, op, dry_run=False)


def _resolved(ov: Overlay, op: dict, p: Patch, cur: dict) -> dict:
    """--continue: the maintainer's resolution in the scratch work tree becomes the patch."""
    repo = _area(ov.root) / "work"
    for f in p.files:
        path = repo / f
        if path.is_file() and re.search(rb"^(<{7}|>{7})( |$)", path.read_bytes(), re.M):
            raise ZpatchError(f"{path}: still has conflict markers", Exit.CONFLICT,
                              hint="resolve them, then zpatch rebase --continue (or --skip / --abort)")
    present = [f for f in p.files if (repo / f).exists()]
    gone = [f for f in p.files if not (repo / f).exists()]
    if present:
        git.run(["add", "--", *present], cwd=repo)
    if gone:
        git.run(["rm", "--quiet", "--cached", "--ignore-unmatch", "--", *gone], cwd=repo)
    if git.run(["ls-files", "-u"], cwd=repo).stdout.strip():
        raise ZpatchError(f"{repo}: unmerged paths remain", Exit.CONFLICT, hint="git add the resolved files")
    tree = git.run(["write-tree", "--missing-ok"], cwd=repo).stdout.strip()
    if tree == git.run(["rev-parse", f"{op['tip']}^{{tree}}"], cwd=repo).stdout.strip():
        if not cur.get("markers"):
            op["current"] = cur     # put back: nothing was resolved
            raise ZpatchError(f"{p.name}: nothing to continue with: git could not even merge it (a file it changes "
                              "was deleted or rewritten upstream), and the files are upstream's", Exit.CONFLICT,
                              hint=f"carry the patch's change into the files in {repo} by hand, then --continue; "
                                   "or --skip it")
        return {"name": p.name, "state": "upstreamed", "resolved": True}
    commit = git.ScratchIndex(repo, str(_area(ov.root))).commit_tree(tree, op["tip"], p.path)
    data = _stamp(_keep_headers(git.format_patch(repo, commit), p.data))
    _keep(ov.root, p.name, data)
    op["tip"] = commit
    return {"name": p.name, "state": "changed", "commit": commit, "resolved": True,
            "data_sha256": hashlib.sha256(data).hexdigest()}


def _report(ov: Overlay, s: Series, op: dict, *, stopped: bool, scratch: Path | None = None) -> dict:
    counts: dict[str, int] = {}
    for d in op["done"]:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return {"upstream": op["upstream"], "old_pin": op["old_pin"], "onto": op["onto"], "onto_ref": op["onto_ref"],
            "ahead": op["ahead"], "dry_run": op["dry_run"], "stopped": stopped,
            "patches": op["done"] + ([{"name": op["current"]["name"], "state": "conflict", **op["current"]}]
                                     if stopped else []),
            "todo": op["todo"][1:] if stopped else [], "counts": counts,
            "scratch": str(scratch) if scratch else None}
