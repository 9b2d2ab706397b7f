"""`zpatch checkout`: every upstream cloned at its pin into a new folder, from the cache (hard links,
no network when the cache is warm).

Resumable: the first write into DEST is a marker file (INCOMPLETE), the last one removes it. A run
killed in between leaves the marker, and the next `zpatch checkout DEST` (which `apply`, `unapply`,
`edit` and `status` name) keeps each upstream whose clone finished and clones the others again.
A resume removes only what the interrupted run made: before it removes an unfinished clone it checks
that everything in its folder is a file of the upstream's tree at its pin (or its .git, or zpatch's
own temporary folder), and refuses, changing nothing, when the user put anything else there.
DEST itself is never replaced, so it may be a mount point (a Docker volume): the root upstream is
cloned into a folder inside DEST and its .git moved up."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

# cache is imported where it is used: apply, unapply and status import this module for refuse_incomplete
from . import git, locks, paths, worktree
from .durable import fault_point, sync_dirs, write_atomic
from .errors import Exit, ZpatchError, from_oserror, git_cause
from .patchset import Overlay


# A blob the source repository lacks, as git names it: one checkout process, or parallel checkout's workers.
_MISSING = re.compile(r"unable to read sha1 file of (.+?) \(|cannot read object [0-9a-f]+ '(.+?)'")
INCOMPLETE = ".zpatch-checkout-incomplete"     # in DEST from the first write to the last
_STAGING = ".zpatch-clone"                       # the root upstream's clone, before its .git moves up


def incomplete(dest: Path) -> dict | None:
    """What the marker of an interrupted checkout of DEST says ({} when unreadable); None: no marker."""
    marker = Path(dest) / INCOMPLETE
    if not os.path.lexists(marker):
        return None
    try:
        data = json.loads(marker.read_bytes().decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def resume_command(dest: Path, info: dict | None = None) -> str:
    """The command that finishes the interrupted checkout of DEST, with the excludes it began with."""
    excl = (info or {}).get("exclude") or []
    excl = [e for e in excl if isinstance(e, str)] if isinstance(excl, list) else []
    return " ".join(["zpatch", "checkout", shlex.quote(str(dest)),
                     *(f"--exclude {shlex.quote(e)}" for e in excl)])


def refuse_incomplete(checkout: Path | None, cwd: Path | None = None) -> None:
    """apply, unapply, edit, status: an interrupted `zpatch checkout` is finished by checkout, not by
    them. They act on the checkout around CHECKOUT (None: around CWD), whose marker may sit in a parent."""
    start = Path(checkout) if checkout is not None else cwd
    for d in [start, *Path(os.path.abspath(start)).parents] if start is not None else []:
        info = incomplete(d)
        if info is not None:
            raise ZpatchError(f"{d}: a `zpatch checkout` into it was interrupted before it finished",
                              Exit.BAD_CHECKOUT,
                              hint=f"`{resume_command(d, info)}` finishes it: it keeps each upstream whose "
                                   "clone completed and clones the others again (refusing, with nothing "
                                   "changed, if a file of yours is where it would clone)")


def checkout(ov: Overlay, dest: Path, *, offline: bool = False, exclude: list[str] | None = None,
             progress: bool = False) -> dict:
    """Clone every upstream at its pin into DEST from the cache (hard links, no network when warm)."""
    dest = Path(dest)
    for e in exclude or []:
        try:
            worktree.rel_parts(e)
        except ZpatchError:
            raise ZpatchError(f"--exclude {e!r}: must be a relative path inside the checkout", Exit.USAGE)
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and incomplete(dest) is None)):
        raise _not_empty(ov, dest)
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise from_oserror(e, "cannot create it", path=dest, code=Exit.BAD_CHECKOUT,
                           hint="choose a destination in a writable directory")
    try:
        locks.folder(dest_fd, dest)       # two checkouts into one folder: one wins
        return _checkout_locked(ov, dest, created, offline, exclude, progress)
    finally:
        os.close(dest_fd)


def _not_empty(ov: Overlay, dest: Path) -> ZpatchError:
    """DEST is taken: apply to the ComfyUI checkout it is or lies in, or to the one just inside it;
    else make the checkout in a new folder inside it."""
    from .workspace import find_checkout, holds_root, make_one_hint
    folder = dest if dest.is_dir() else dest.parent
    try:
        top = find_checkout(folder, ov)
    except ZpatchError:
        top = None
    inside = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.is_symlink()
              and git.git_dir_of(d) is not None and holds_root(ov, d)] if top is None else []
    if top is not None and holds_root(ov, top):
        where = "apply to it" if top == folder.resolve() else f"it lies in the checkout {top}: apply to that"
        hint = f"{where} with `zpatch apply {shlex.quote(str(top))}`"
    elif inside:
        hint = f"`zpatch apply {shlex.quote(str(inside[0]))}` applies to the checkout inside it"
    else:
        hint = make_one_hint(folder, ov)
    return ZpatchError(f"{dest}: already exists and is not empty", Exit.BAD_CHECKOUT, hint=hint)


def _order(ov: Overlay) -> list:
    """Parents first: the custom node's clone lands inside the ComfyUI work tree."""
    return sorted(ov.series, key=lambda s: s.upstream.path.count("/") + (s.upstream.path != "."))


def _complete(repo: Path, pin: str) -> bool:
    """REPO's clone finished: its last step, `git checkout --detach PIN`, wrote the index and then HEAD
    (a clone without checkout has no index, and HEAD names a branch)."""
    gd = repo / ".git"
    try:
        return (gd / "index").is_file() and (gd / "HEAD").read_bytes().decode("ascii").strip() == pin
    except (OSError, UnicodeDecodeError):
        return False


def _remove(path: Path) -> None:
    """PATH gone, never through a symlink (a link is removed, not followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _empty(dest: Path, *, keep_marker: bool) -> None:
    """Everything in DEST gone (but the marker, when KEEP_MARKER: the checkout stays resumable)."""
    for child in list(dest.iterdir()):
        if child.name != INCOMPLETE:
            _remove(child)
    if not keep_marker and os.path.lexists(dest / INCOMPLETE):
        os.unlink(dest / INCOMPLETE)
    sync_dirs([dest])


def _mark(dest: Path, exclude: list[str]) -> None:
    """The first write: DEST holds an unfinished checkout. Created in place (no temp file beside it,
    which would make DEST a non-empty folder without the marker) and durable before any clone."""
    data = json.dumps({"pid": os.getpid(), "exclude": exclude}).encode()
    fd = os.open(dest / INCOMPLETE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_dirs([dest])
    fault_point()


def _unmark(dest: Path) -> None:
    """The last step: the checkout is complete."""
    os.unlink(dest / INCOMPLETE)
    sync_dirs([dest])
    fault_point()


def _checkout_locked(ov: Overlay, dest: Path, created: bool, offline: bool, exclude: list[str] | None,
                     progress: bool) -> dict:
    exclude = list(exclude or [])
    info = incomplete(dest)
    if info is None and any(dest.iterdir()):   # filled by a run that held the lock before us
        raise _not_empty(ov, dest)
    resumed = info is not None
    result = {"checkout": str(dest), "upstreams": [], "missing_objects": [], "partial": [],
              "resumed": resumed, "kept": []}
    from . import cache
    try:
        if not resumed:
            _mark(dest, exclude)
        mirrors = {s.upstream.name: cache.ensure(s.upstream.url, s.upstream.commit, offline=offline,
                                                 progress=progress) for s in ov.series}
        # each upstream's excluded files at its pin, read from the cache: a clone of it reads the same
        known = {s.upstream.name: _check_excludes(mirrors[s.upstream.name], s.upstream, exclude) for s in ov.series}
        keep: set[str] = set()
        if resumed:
            same = info.get("exclude") == exclude    # else nothing the interrupted run cloned can be kept
            keep = _kept(ov, dest) if same else set()
            redo = [s.upstream for s in ov.series if s.upstream.name not in keep]
            # before anything is removed: the folders to clone again hold only what a checkout makes
            _refuse_strays(dest, redo, mirrors, exclude)
            tmp = dest / (INCOMPLETE + ".tmp")
            if os.path.lexists(tmp):
                os.unlink(tmp)
            if not same:
                for up in sorted(redo, key=lambda u: u.path.count("/") + (u.path != ".")):
                    _clear(dest, up)
                write_atomic(dest / INCOMPLETE, json.dumps({"pid": os.getpid(), "exclude": exclude}).encode())
        for s in _order(ov):
            up = s.upstream
            if up.name in keep:
                result["kept"].append(up.name)
                result["upstreams"].append({"name": up.name, "path": up.path, "commit": up.commit,
                                            "url": up.url, "excluded": _mine(up, exclude)})
                continue
            _clear(dest, up)
            _clone(dest, up, mirrors[up.name], exclude, result, known[up.name])
    except BaseException:
        if not resumed:
            # this run began with DEST empty (checked under the lock): all in it is this run's
            _empty(dest, keep_marker=False)
            if created:
                try:
                    dest.rmdir()
                except OSError:
                    pass
        # a resumed run leaves DEST as it is, marker included: `zpatch checkout DEST` again goes on
        raise
    _unmark(dest)
    return result


def _inside(path: str, folder: str) -> bool:
    """PATH (relative to DEST, "." for DEST) is FOLDER or lies in it."""
    return folder == "." or path == folder or path.startswith(folder + "/")


def _kept(ov: Overlay, dest: Path) -> set[str]:
    """The upstreams a resume keeps: each whose clone completed, unless an upstream around it is
    cloned again (its removal takes the nested one with it)."""
    keep: set[str] = set()
    redone: list[str] = []
    for s in _order(ov):
        up = s.upstream
        if not any(_inside(up.path, r) for r in redone) and _complete(dest / up.path, up.commit):
            keep.add(up.name)
        else:
            redone.append(up.path)
    return keep


def _clear(dest: Path, up) -> None:
    """UP's unfinished clone gone (for the root upstream, everything in DEST but the marker)."""
    if up.path == ".":
        _empty(dest, keep_marker=True)
        return
    repo = dest / up.path
    if os.path.lexists(repo):
        _remove(repo)
        sync_dirs([repo.parent])


def _tree(mirror: Path, pin: str) -> list[str]:
    """Every path of the tree at PIN (files, symlinks, gitlinks), as `git ls-tree -r` lists them."""
    out = git.run(["ls-tree", "-r", "-z", "--name-only", "--full-tree", pin], cwd=mirror).stdout
    return [p for p in out.split("\0") if p]


def _refuse_strays(dest: Path, redo: list, mirrors: dict, exclude: list[str]) -> None:
    """Refuse (exit 4, nothing changed) when a folder about to be removed and cloned again holds
    anything the interrupted checkout did not make: a path outside the tree at the pin of the
    upstream it lies in (the user's models, outputs, a note), at any depth."""
    files: set[str] = set()              # relative to DEST, made by a checkout
    dirs: set[str] = set()               # folders on the way to them (and to the nested upstreams)
    opaque: set[str] = set()             # zpatch's and git's own: never looked into
    for up in redo:
        for f in _tree(mirrors[up.name], up.commit):
            files.add(paths.under(up.path, f))
        opaque.add(paths.under(up.path, ".git"))
        if up.path != ".":
            dirs.add(up.path)
        else:
            opaque |= {_STAGING, INCOMPLETE, INCOMPLETE + ".tmp"}
    for p in [*files, *(u.path for u in redo if u.path != ".")]:
        parts = p.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    tops = [u for u in redo if not any(o is not u and o.path != u.path and _inside(u.path, o.path) for o in redo)]
    for up in sorted(tops, key=lambda u: u.path):
        stray = _first_stray(dest, up.path, files, dirs, opaque)
        if stray is None:
            continue
        owner = max((u for u in redo if _inside(stray, u.path)), key=lambda u: len(u.path) * (u.path != "."))
        full = dest / stray
        raise ZpatchError(
            f"{full}: not made by the interrupted checkout (not in {owner.name}'s tree at {owner.commit[:12]}); "
            f"resuming would delete it with {owner.name}'s unfinished clone", Exit.BAD_CHECKOUT,
            hint=f"move it away (mv {shlex.quote(str(full))} ~/), then rerun "
                 f"`{resume_command(dest, {'exclude': exclude})}`")


def _first_stray(dest: Path, folder: str, files: set[str], dirs: set[str], opaque: set[str]) -> str | None:
    """The first path (sorted, depth first) under DEST/FOLDER that is none of FILES, DIRS or OPAQUE;
    a symlink on the way to FOLDER counts too (the removal would act beyond it)."""
    if folder != ".":
        parts = folder.split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if os.path.islink(dest / rel):
                return rel
            if not os.path.lexists(dest / rel):
                return None
            if not os.path.isdir(dest / rel):
                return rel

    def walk(rel: str) -> str | None:
        try:
            entries = sorted(os.scandir(dest / rel if rel != "." else dest), key=lambda e: e.name)
        except NotADirectoryError:
            return None
        for e in entries:
            p = e.name if rel == "." else f"{rel}/{e.name}"
            if p in opaque:
                continue
            if e.is_dir(follow_symlinks=False):
                if p not in dirs and p not in files:
                    return p
                found = walk(p)
                if found:
                    return found
            elif p not in files:
                return p
        return None

    return walk(folder)


def _mine(up, exclude: list[str]) -> list[str]:
    """The excludes inside upstream UP, relative to it."""
    return [e[len(up.path) + 1:] if up.path != "." else e for e in exclude
            if up.path == "." or e.startswith(up.path + "/")]


def _check_excludes(mirror: Path, up, exclude: list[str]) -> dict[str, str]:
    """Each exclude inside UP names a file or folder of it at its pin (asked of the cache, before any
    write: a resumed checkout is refused before anything of it is touched). Returns the excluded
    files' blob ids at the pin."""
    mine = _mine(up, exclude)
    known = git.tree_blobs(mirror, up.commit, mine) if mine else {}
    unknown = [m for m in mine if m not in known and not git.run(
        ["ls-tree", "-d", up.commit, "--", m.rstrip("/")], cwd=mirror).stdout.strip()]
    if unknown:
        raise ZpatchError(f"--exclude {unknown[0]}: no such path in {up.name} at {up.commit[:12]}",
                          Exit.USAGE, hint="name a file or folder of the upstream")
    return known


def _clone(dest: Path, up, mirror: Path, exclude: list[str], result: dict, known: dict[str, str]) -> None:
    """UP cloned from MIRROR at its pin; KNOWN: its excluded files' blob ids there (_check_excludes)."""
    repo = dest / up.path
    if up.path == ".":
        # DEST holds the marker, and git clones into an empty folder only: clone beside it, inside
        # DEST (never replacing DEST, which may be a mount point), then move the .git up
        staging = dest / _STAGING
        git.run(["clone", "--no-checkout", "--quiet", str(mirror), str(staging)])
        os.rename(staging / ".git", dest / ".git")
        os.rmdir(staging)
        sync_dirs([dest])
        fault_point("root-cloned")       # tests hold a checkout here, half made
    else:
        repo.parent.mkdir(parents=True, exist_ok=True)
        git.run(["clone", "--no-checkout", "--quiet", str(mirror), str(repo)])
    git.run(["remote", "set-url", "origin", up.url], cwd=repo)
    mine = _mine(up, exclude)
    if mine:
        git.run(["sparse-checkout", "set", "--no-cone", "/*", *[f"!/{m}" for m in mine]], cwd=repo)
        lacks = git.missing_objects(repo, list(dict.fromkeys(known.values())))
        absent = [m for m, blob in known.items() if blob in lacks]
        if absent:
            # A source that lacks these blobs makes this a partial clone, and git commits over
            # a missing blob only in a promisor repository with the path out of the work tree:
            # say so, as a blobless clone does, so that edit mode and plain commits work.
            git.run(["config", "remote.origin.promisor", "true"], cwd=repo)
            git.run(["config", "remote.origin.partialclonefilter", "blob:none"], cwd=repo)
            result["partial"] += [f"{up.path}/{m}" if up.path != "." else m for m in absent]
    # Parallel checkout (git >= 2.32; older git ignores the setting): a core's worth of files each.
    args = ["-c", "checkout.workers=0", "checkout", "--quiet", "--detach", up.commit]
    r = git.run(args, cwd=repo, check=False)
    missing = list(dict.fromkeys(a or b for a, b in _MISSING.findall(r.stderr)))
    if not r.ok and not missing:
        raise git_cause(args, repo, r.returncode, r.stderr) or ZpatchError(
            f"git checkout {up.commit[:12]} failed in {repo}: {r.last_line()}", Exit.GIT_REFUSED)
    result["missing_objects"] += [f"{up.path}/{m}" if up.path != "." else m for m in missing]
    result["upstreams"].append({"name": up.name, "path": up.path, "commit": up.commit,
                                "url": up.url, "excluded": mine})
