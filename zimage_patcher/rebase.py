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

A conflict stops the rebase: the patch is applied 3-way in a sparse scratch clone in the overlay's
state area (overlay_write.area), with conflict markers, and the state (upstream, old pin, target,
todo, done) is saved in op.json there. `--continue` takes the resolved files, `--skip` drops the
patch, `--abort` forgets everything. Every rebase command holds the overlay's front door
(overlay_write.hold), and the overlay (patches, series, upstream.lock) is written only when the last
patch is through, as its one transaction, whose commit point is the lock: a kill there is rolled back
(or forward) by the next command that writes the overlay. `--dry-run` writes nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from . import (cache, git, lock as lockmod, operation, overlay_write, patchfile, patchset, probes, rebase_state,
               series_cache, worktree)
from .errors import Exit, ZpatchError
from .patchfile import Patch
from .patchset import Overlay, Series
from .rebase_state import RebaseState
from .durable import fault_point

def _area(root: Path) -> Path:
    """The rebase's scratch files (its state, the patches it made, the conflict clone, its objects)."""
    return overlay_write.state_path(root).parent


def in_progress(root: Path) -> RebaseState | None:
    return rebase_state.load(overlay_write.state_path(root))


def _save(root: Path, op: RebaseState) -> None:
    rebase_state.save(overlay_write.state_path(root), op)


def _series(ov: Overlay, name: str) -> Series:
    s = next((s for s in ov.series if s.upstream.name == name), None)
    if s is None:
        raise ZpatchError(f"{name}: no such upstream in {lockmod.LOCK_NAME}", Exit.USAGE,
                          hint="one of: " + ", ".join(s.upstream.name for s in ov.series))
    return s


_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", re.M)


def _map_line(x: int, hunks: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """Old line X through a zero-context diff: its new line, or the new lines that replaced it."""
    delta = 0
    for s, l, t, m in hunks:
        if l == 0:                        # M lines inserted after old line S
            if x <= s:
                break
            delta = t + m - (s + 1)
        else:                             # old lines S..S+L-1 became new lines T..T+M-1
            if x < s:
                break
            if x < s + l:
                return (t, t + m - 1) if m else (max(t, 1), max(t, 1))
            delta = (t + m if m else t + 1) - (s + l)
    return x + delta, x + delta


def _blame(repo: Path, env: dict, p: Patch, pre: str, old_pin: str, onto: str, files: list[str]) -> list[dict]:
    """Each hunk of P in FILES: its lines on the target (mapped from PRE, the old series just before
    P, through git's diff to ONTO), and the upstream commits between the old pin and the target that
    touched those lines (`git log -L`); a hunk upstream left alone gets no commits."""
    out = []
    for f in files:
        hunks = [h for h in p.hunks if h.file == f]
        blob = git.show_blob(repo, onto, f)
        if not hunks or blob is None:
            continue
        lines = max(blob.count(b"\n") + (not blob.endswith(b"\n")), 1)
        diff = git.run(["-c", "diff.algorithm=myers", "diff", "--no-ext-diff", "--no-color", "-U0", pre, onto,
                        "--", f], cwd=repo, env=env, check=False).stdout
        moves = [(int(a), int(b or 1), int(c), int(d or 1)) for a, b, c, d in _HUNK_HEADER.findall(diff)]
        for h in hunks:
            first = _map_line(h.source_start, moves)
            last = _map_line(h.source_start + max(len(h.source_lines), 1) - 1, moves)
            lo, hi = min(first[0], lines), min(max(first[1], last[1]), lines)
            commits = git.log_subjects(repo, [f"-L{lo},{hi}:{f}", f"{old_pin}..{onto}"]) or []
            out.append({"file": f, "hunk": h.index, "lines": [lo, hi], "upstream_commits": commits[:10]})
    return out


class _Tip:
    """The series tip as it grows, and what the scratch index holds: after a patch applies, the index
    already is the next tip's tree, so no process re-reads it (a rebase costs little more than one
    `git apply` per patch)."""

    def __init__(self, idx: git.ScratchIndex, commit: str):
        self.idx, self.commit = idx, commit
        self.tree = idx.run(["rev-parse", f"{commit}^{{tree}}"]).stdout.strip()
        self.loaded: str | None = None       # the commit whose tree the index holds, None: unknown

    def load(self) -> None:
        if self.loaded != self.commit:
            self.idx.read_tree(self.commit)
            self.loaded = self.commit

    def advance(self, commit: str, tree: str) -> None:
        self.commit = self.loaded = commit
        self.tree = tree


def _carry(repo: Path, tip: _Tip, p: Patch, old_pin: str, onto: str, pre: str) -> dict:
    """Try P on the tip (ONTO plus the patches carried so far). Probes and the upstream commits to
    blame are read on ONTO, upstream's own tree. Returns {state, commit?, fired?, files?}; the patch
    text of a commit is formatted later, for the whole series at once (_format)."""
    fired, errors = probes.evaluate(p, repo, onto)
    res = _carry_on(repo, tip, p, old_pin, onto, pre, fired)
    if errors:     # reported with the patch, never a reason to stop carrying it (`check` insists on them)
        res["probe_errors"] = [e.message for e in errors]
    return res


def _carry_on(repo: Path, tip: _Tip, p: Patch, old_pin: str, onto: str, pre: str, fired: list[str]) -> dict:
    idx = tip.idx
    tip.load()
    if not idx.apply([p.path]).ok:       # a failed apply writes nothing: the index is still the tip
        r = idx.apply([p.path], three_way=True)
        tip.loaded = None                # it may hold the merge, conflicted or not
        conflicted = [f for f, e in idx.entries(p.files).items() if e[2]]
        if not r.ok or conflicted:
            tip.load()
            if idx.run(["apply", "--cached", "--check", "--reverse", str(p.path)], check=False).ok:
                return {"state": "obsolete" if fired else "upstreamed", "fired": fired}
            # obsolete or not, say what conflicts (`drift` reports both), and which upstream commits
            # touched the lines of its hunks (or, when none did, its files)
            files = conflicted or p.files
            hunks = _blame(repo, idx.env, p, pre, old_pin, onto, files)
            commits = list(dict.fromkeys(c for h in hunks for c in h["upstream_commits"]))
            return {"state": "obsolete" if fired else "conflict", "fired": fired, "files": files,
                    "hunks": [h for h in hunks if h["upstream_commits"]],
                    "upstream_commits": commits or git.commits_touching(repo, old_pin, onto, files, limit=20)}
    tree = idx.write_tree(sha1=len(tip.commit) == 40)
    if fired:
        tip.loaded = None
        return {"state": "obsolete", "fired": fired}
    if tree == tip.tree:
        tip.loaded = tip.commit
        return {"state": "upstreamed", "fired": []}
    commit = idx.commit_tree(tree, tip.commit, p.path)
    tip.advance(commit, tree)
    return {"state": "carried", "commit": commit}


class Trial:
    """Does series S still carry onto a commit? The cheap question `drift` asks many times when it
    looks for the newest commit the series moves onto: no blame, no formatting, one scratch index
    and object store for every commit tried (the old series is committed once, for the 3-way)."""

    def __init__(self, s: Series, mirror: Path, tmpdir: str):
        self.s, self.idx = s, git.ScratchIndex(mirror, tmpdir, read_only=True)
        series_cache.commit_patches(self.idx, s.upstream.commit, [p.path for p in s.patches])
        self.count = 0

    def first_conflict(self, onto: str) -> str | None:
        """The first patch that conflicts on ONTO (a patch upstream already has is no conflict),
        or None when the whole series carries."""
        self.count += 1
        idx = self.idx
        idx.read_tree(onto)
        for p in self.s.patches:
            if idx.apply([p.path]).ok:
                continue
            before = idx.run(["write-tree", "--missing-ok"]).stdout.strip()
            r = idx.apply([p.path], three_way=True)
            if r.ok and not any(e[2] for e in idx.entries(p.files).values()):
                continue
            idx.read_tree(before)       # a failed 3-way may leave a merge in the index
            if idx.run(["apply", "--cached", "--check", "--reverse", str(p.path)], check=False).ok:
                continue                # upstreamed: the series goes on without it
            return p.name
        return None


def _classify(entry: dict, data: bytes, p: Patch) -> bytes:
    """Set ENTRY's state from its new text DATA against the old patch P; the bytes to keep."""
    data = patchfile.keep_headers(data, p.data)
    if data == p.data:
        entry["state"] = "unchanged"
        return data
    entry["state"] = "refreshed" if _change(data) == _change(p.data) else "changed"
    return patchfile.stamp_last_update(data)


def _change(data: bytes) -> list[bytes]:
    """What a patch does: its files and the lines it adds and removes, without context, offsets or
    index lines (those moving is a refresh, not a change)."""
    diff = data[data.find(b"\ndiff --git "):]
    return [line for line in diff.split(b"\n") if line.startswith((b"diff --git ", b"+", b"-"))
            and not line.startswith((b"+++ ", b"--- "))]


def start(root: Path, name: str, onto: str, *, dry_run: bool = False, allow_unrelated: bool = False,
          offline: bool = False) -> dict:
    """Rebase NAME's series of the overlay at ROOT onto ONTO. A dry run touches no state and takes no
    lock (drift runs it beside a rebase in progress); a real one reads the overlay under the lock."""
    if dry_run:
        return _start(patchset.load(root), name, onto, None, allow_unrelated=allow_unrelated, offline=offline)
    with overlay_write.hold(root, "rebase") as writer:
        op = in_progress(root)
        if op is not None:
            raise ZpatchError(f"a rebase of {op.upstream} onto {op.onto[:12]} is in progress", Exit.BUSY,
                              hint="finish it first: zpatch rebase --continue, --skip or --abort")
        return _start(patchset.load(root), name, onto, writer, allow_unrelated=allow_unrelated, offline=offline)


def _start(ov: Overlay, name: str, onto: str, writer: overlay_write.Writer | None, *, allow_unrelated: bool,
           offline: bool) -> dict:
    dry_run = writer is None
    s = _series(ov, name)
    up = s.upstream
    mirror, target = cache.resolve(up.url, up.commit, onto, offline=offline)
    behind, ahead = git.behind_ahead(mirror, up.commit, target)
    if behind and not allow_unrelated:
        raise ZpatchError(f"{onto} ({target[:12]}) does not descend from the pin {up.commit[:12]} of {name}",
                          Exit.USAGE, hint="a rebase onto an older or unrelated commit needs --allow-unrelated")
    op = RebaseState(upstream=name, old_pin=up.commit, onto=target, onto_ref=onto, tip=target, ahead=ahead,
                     todo=[p.name for p in s.patches], started_from={p.name: p.sha256 for p in s.patches},
                     dry_run=dry_run)
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="zpatch-rebase-") as tmp:
            idx = git.ScratchIndex(mirror, tmp, read_only=True)
            return _run(ov, s, mirror, idx, op, None)
    area = _area(ov.root)
    shutil.rmtree(area, ignore_errors=True)
    area.mkdir(parents=True)
    _save(ov.root, op)
    try:
        return _resume(ov, op, writer)
    except Exception:
        # refused (or a bug) before any write to the overlay: as if never started, so the user fixes the
        # cause and reruns instead of aborting first
        if operation.pending(overlay_write.journal(ov.root)) is None:
            _forget(ov.root)
        raise


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


def _run(ov: Overlay, s: Series, repo: Path, idx: git.ScratchIndex, op: RebaseState,
         writer: overlay_write.Writer | None) -> dict:
    dry_run = writer is None
    by_name = {p.name: p for p in s.patches}
    if not op.old_tip:
        # the old series as commits on the old pin: a 3-way merge needs each patch's preimage blobs,
        # and the range-diff needs the old commits
        old = series_cache.commit_patches(idx, op.old_pin, [p.path for p in s.patches])
        op.old_tip = old[-1] if old else op.old_pin
    tip = _Tip(idx, op.tip)
    order = [p.name for p in s.patches]
    while op.todo:
        p = by_name[op.todo[0]]
        pre = f"{op.old_tip}~{len(order) - order.index(p.name)}"     # the old series just before P
        res = _carry(repo, tip, p, op.old_pin, op.onto, pre)
        if res["state"] == "conflict" and not dry_run:
            _format(ov, idx, op, by_name, dry_run=False)     # the report names what the others became
            return _stop(ov, s, op, p, res)
        if "commit" in res:
            op.tip = res["commit"]
        op.done.append({"name": p.name, **res})
        op.todo.pop(0)
        if not dry_run:
            _save(ov.root, op)
    _format(ov, idx, op, by_name, dry_run=dry_run)
    return _finish(ov, s, repo, idx, op, writer)


def _format(ov: Overlay, idx: git.ScratchIndex, op: RebaseState, by_name: dict[str, Patch], *, dry_run: bool) -> None:
    """The new text of every carried patch, from one `git format-patch` of the new series, and each
    one's final state (unchanged, refreshed or changed). The series' commits form one chain from ONTO
    to the tip, in the order of `done`."""
    carried = [e for e in op.done if "commit" in e]
    first = next((i for i, e in enumerate(carried) if "data_sha256" not in e), None)
    if first is None:
        return
    todo = carried[first:]          # formatted in order: the ones before were done by an earlier stop
    base = carried[first - 1]["commit"] if first else op.onto
    texts = git.format_patches(idx.repo, f"{base}..{op.tip}", env=idx.env)
    if len(texts) != len(todo):
        raise ZpatchError(f"the rebased series has {len(texts)} commits for {len(todo)} patches",
                          Exit.INTERNAL, hint="zpatch rebase --abort, then report this")
    for e, data in zip(todo, texts):
        if e.get("resolved"):
            data = patchfile.stamp_last_update(patchfile.keep_headers(data, by_name[e["name"]].data))
        else:
            data = _classify(e, data, by_name[e["name"]])
        e["data_sha256"] = hashlib.sha256(data).hexdigest()
        if not dry_run:
            _keep(ov.root, e["name"], data)
    if not dry_run:
        _save(ov.root, op)


def _keep(root: Path, name: str, data: bytes) -> None:
    d = _area(root) / "out"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def _scratch_clone(ov: Overlay, s: Series, mirror: Path) -> Path:
    """A sparse clone of the cache mirror (objects shared), only the series' files in its work tree.
    Built under another name and renamed when complete: a kill halfway leaves no clone to trust."""
    repo = _area(ov.root) / "work"
    if not (repo / ".git").is_dir():
        part = repo.with_name("work.partial")
        shutil.rmtree(part, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
        git.run(["clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(part)])
        with open(part / ".git/objects/info/alternates", "a", encoding="utf-8") as f:
            f.write(str(_area(ov.root) / "objects") + "\n")     # the commits of the patches carried so far
        files = sorted({f for p in s.patches for f in p.files})
        git.run(["sparse-checkout", "set", "--no-cone", *[f"/{f}" for f in files]], cwd=part)
        os.replace(part, repo)
    return repo


def _stop(ov: Overlay, s: Series, op: RebaseState, p: Patch, res: dict) -> dict:
    """A conflict: the patch applied 3-way in the scratch work tree, markers in the files."""
    mirror = cache.mirror_path(s.upstream.url)
    repo = _scratch_clone(ov, s, mirror)
    git.run(["checkout", "--quiet", "--force", "--detach", op.tip], cwd=repo)
    git.run(["apply", "--3way", str(p.path)], cwd=repo, check=False)
    merged = bool(git.run(["ls-files", "-u"], cwd=repo).stdout.strip())
    op.current = {"name": p.name, "files": res.get("files", []), "upstream_commits": res["upstream_commits"],
                     "hunks": res.get("hunks", []), "fired": res.get("fired", []), "markers": merged,
                     **({"probe_errors": res["probe_errors"]} if res.get("probe_errors") else {})}
    _save(ov.root, op)
    return _report(ov, s, op, stopped=True, scratch=repo)


def _finish(ov: Overlay, s: Series, repo: Path, idx: git.ScratchIndex, op: RebaseState,
            writer: overlay_write.Writer | None) -> dict:
    result = _report(ov, s, op, stopped=False)
    rd = git.run(["range-diff", "--no-color", f"{op.old_pin}..{op.old_tip}", f"{op.onto}..{op.tip}"],
                 cwd=repo, env=idx.env, check=False)
    result["range_diff"] = rd.stdout if rd.ok else ""
    if writer is None:
        return result
    files, lk = _overlay_files(ov, s, op)
    op.lock_after = operation.digest(lockmod.render(ov.root, lk))   # from here, that lock means it is done
    _save(ov.root, op)
    writer.commit(files, lk)
    _forget(ov.root)
    result["written"] = True
    return result


def _overlay_files(ov: Overlay, s: Series, op: RebaseState) -> tuple[dict[str, bytes | None], lockmod.Lock]:
    """What the rebase writes into the overlay: the patches that moved, the ones dropped, the series
    when its list changed, and (the commit point) upstream.lock with the new pin and hashes."""
    d, out = s.upstream.patches, _area(ov.root) / "out"
    files: dict[str, bytes | None] = {}
    hashes = {}
    for e in op.done:      # an edit made while the rebase was stopped is never overwritten
        now = hashlib.sha256(worktree.read(ov.root, f"{d}/{e['name']}") or b"").hexdigest()
        if now != op.started_from.get(e["name"], now):
            raise ZpatchError(f"{ov.root / d / e['name']}: changed while the rebase was stopped; writing the "
                              "rebased patch would lose that edit", Exit.BAD_CHECKOUT,
                              hint="save your edit elsewhere, put the file back (git checkout -- it), then "
                                   "zpatch rebase --continue; or --abort")
        if "data_sha256" not in e:
            files[f"{d}/{e['name']}"] = None
            continue
        if e["state"] != "unchanged":
            data = (out / e["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != e["data_sha256"]:
                raise ZpatchError(f"{out / e['name']}: not the patch this rebase made", Exit.BAD_CHECKOUT,
                                  hint="zpatch rebase --abort, then rebase again")
            files[f"{d}/{e['name']}"] = data

        hashes[e["name"]] = e["data_sha256"]
    if list(hashes) != [p.name for p in s.patches]:     # keep quilt's comments when nothing moved
        files[f"{d}/series"] = overlay_write.render_series(ov.root, f"{d}/series", list(hashes))
    lk = lockmod.parse(ov.root / lockmod.LOCK_NAME)
    for u in lk.upstreams:
        if u.name == s.upstream.name:
            u.commit, u.sha256 = op.onto, hashes
    return files, lk


def _forget(root: Path) -> None:
    """The rebase is over (done or aborted): no command finds its state again."""
    overlay_write.state_path(root).unlink(missing_ok=True)
    fault_point()
    shutil.rmtree(_area(root), ignore_errors=True)


def forget_throwaway(root: Path) -> None:
    """ROOT was a throwaway overlay this process made and rebased (drift's smoke copies, the
    publisher's worktrees): nothing of the rebase is kept."""
    _forget(root)


def _complete(root: Path, op: RebaseState) -> bool:
    """Whether a rebase killed while writing the overlay had passed its commit point (the front door
    has rolled the write back or forward already): then nothing is left to do but report it."""
    if not op.lock_after:
        return False
    try:
        done = operation.digest((root / lockmod.LOCK_NAME).read_bytes()) == op.lock_after
    except OSError:
        done = False
    if not done:
        op.lock_after = None
        _save(root, op)
    return done


def resume(root: Path, action: str) -> dict:
    """--continue, --skip or --abort of the rebase in progress for the overlay at ROOT."""
    with overlay_write.hold(root, "rebase") as writer:
        return _resume_locked(root, action, writer)


def _resume_locked(root: Path, action: str, writer: overlay_write.Writer) -> dict:
    said = writer.recovered
    try:
        op = in_progress(root)
    except ZpatchError:
        if action != "abort":
            raise
        _forget(root)        # a damaged state: the front door has put the overlay back already
        return {"aborted": True, "upstream": None, "recovered": said}
    if op is None:
        shutil.rmtree(_area(root), ignore_errors=True)   # what a rebase killed at its first write left
        raise ZpatchError("no rebase in progress", Exit.USAGE, hint="start one: zpatch rebase UPSTREAM --onto REF")
    if _complete(root, op):     # killed after its commit point: nothing is left to continue, skip or abort
        ov = patchset.load(root, verify_hashes=False)
        _forget(root)
        result = _report(ov, _series(ov, op.upstream), op, stopped=False)
        result.update(written=True, aborted=False, finished_before=action,
                      recovered=said or "An interrupted rebase had written the overlay already; it is complete.")
        return result
    if action == "abort":
        _forget(root)
        return {"aborted": True, "upstream": op.upstream, "recovered": said}
    result = _resume(patchset.load(root, verify_hashes=False), op, writer, action=action)
    result["recovered"] = said
    return result


def _check_objects(root: Path, idx: git.ScratchIndex, op: RebaseState) -> None:
    """Every commit the state names exists (a damaged op.json is named, not a git error later)."""
    shas = [op.old_pin, op.onto, op.tip, *([op.old_tip] if op.old_tip else []),
            *(e["commit"] for e in op.done if e.get("commit"))]
    out = idx.run(["cat-file", "--batch-check=%(objecttype)"], input="".join(c + "\n" for c in shas)).stdout
    if out.split() != ["commit"] * len(shas):
        raise ZpatchError(f"{overlay_write.state_path(root)}: the state of the rebase in progress names commits that do not "
                          "exist", Exit.BAD_CHECKOUT, hint="zpatch rebase --abort, then rebase again")


def _resume(ov: Overlay, op: RebaseState, writer: overlay_write.Writer, action: str | None = None) -> dict:
    s = _series(ov, op.upstream)
    names = [e["name"] for e in op.done] + op.todo
    if names != [p.name for p in s.patches] or (op.current and op.todo[:1] != [op.current["name"]]):
        raise ZpatchError(f"the rebase in progress was made for another series of {s.upstream.name} than "
                          f"{s.directory / 'series'} lists now", Exit.BAD_CHECKOUT,
                          hint="put the series back as it was, or zpatch rebase --abort and start again")
    mirror = cache.mirror_path(s.upstream.url)
    idx = _store(ov, mirror)
    _check_objects(ov.root, idx, op)
    if action is not None and op.current:
        cur, op.current = op.current, None
        p = next(p for p in s.patches if p.name == cur["name"])
        if action == "skip":
            op.done.append({"name": p.name, "state": "skipped"})
        else:
            op.done.append(_resolved(ov, op, p, cur))
            idx = _store(ov, mirror)
        op.todo.pop(0)
        _save(ov.root, op)
    elif action == "skip":
        raise ZpatchError("the rebase is not stopped at a conflict: there is no patch to skip", Exit.USAGE,
                          hint="zpatch rebase --continue resumes it; --abort drops it")
    # --continue without a conflict: a run that was killed picks up where its state says
    return _run(ov, s, mirror, idx, op, writer)


def _resolved(ov: Overlay, op: RebaseState, p: Patch, cur: dict) -> dict:
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
    tree = git.run(["write-tree", "--missing-ok"], cwd=repo).stdout.strip()
    if tree == git.run(["rev-parse", f"{op.tip}^{{tree}}"], cwd=repo).stdout.strip():
        if not cur.get("markers"):
            op.current = cur     # put back: nothing was resolved
            raise ZpatchError(f"{p.name}: nothing to continue with: git could not even merge it (a file it changes "
                              "was deleted or rewritten upstream), and the files are upstream's", Exit.CONFLICT,
                              hint=f"carry the patch's change into the files in {repo} by hand, then --continue; "
                                   "or --skip it")
        return {"name": p.name, "state": "upstreamed", "resolved": True}
    commit = git.ScratchIndex(repo, str(_area(ov.root))).commit_tree(tree, op.tip, p.path)
    op.tip = commit
    return {"name": p.name, "state": "changed", "commit": commit, "resolved": True}


def _report(ov: Overlay, s: Series, op: RebaseState, *, stopped: bool, scratch: Path | None = None) -> dict:
    patches = op.done + ([{"name": op.current["name"], "state": "conflict", **op.current}] if stopped else [])
    counts: dict[str, int] = {}
    for d in patches:          # the patch stopped at counts too: a conflict is never `counts: {}`
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return {"upstream": op.upstream, "old_pin": op.old_pin, "onto": op.onto, "onto_ref": op.onto_ref,
            "ahead": op.ahead, "dry_run": op.dry_run, "stopped": stopped, "patches": patches,
            "todo": op.todo[1:] if stopped else [], "counts": counts,
            "scratch": str(scratch) if scratch else None}
