"""A ComfyUI checkout as zpatch sees it: its upstream repositories, what is applied, and the
operations on it (checkout, apply, unapply, status). All or nothing; user edits are never lost."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import cache, diagnose, git, state
from .errors import Exit, ZpatchError
from .patchset import Overlay, Series, overlay_files, sha256_file


@dataclass
class Target:
    series: Series
    repo: Path

    @property
    def name(self) -> str:
        return self.series.upstream.name

    @property
    def pin(self) -> str:
        return self.series.upstream.commit


def _root_target(targets: list[Target]) -> Target:
    return next((t for t in targets if t.series.upstream.path == "."), targets[0])


def resolve(ov: Overlay, checkout: Path, *, need_repos: bool = True) -> list[Target]:
    """Map each upstream to its repository inside CHECKOUT and make sure git will act on that
    repository and not on a parent (a nested custom node without its own .git would silently
    resolve to the ComfyUI repository)."""
    checkout = Path(checkout)
    if not checkout.is_dir():
        raise ZpatchError(f"{checkout}: no such directory", Exit.BAD_CHECKOUT,
                          hint=f"create it with `zpatch checkout {checkout}`")
    checkout = checkout.resolve()
    targets = []
    for s in ov.series:
        repo = (checkout / s.upstream.path).resolve()
        if checkout not in (repo, *repo.parents):
            raise ZpatchError(f"{s.upstream.path}: resolves outside {checkout} (symlink?)", Exit.BAD_CHECKOUT)
        if need_repos:
            if not repo.is_dir():
                raise ZpatchError(f"{repo}: {s.upstream.name} is missing", Exit.BAD_CHECKOUT,
                                  hint=f"git clone {s.upstream.url} {repo}, or use `zpatch checkout`")
            if state.git_dir_of(repo) is None:
                top = git.toplevel(repo)
                if top is None:
                    raise ZpatchError(f"{repo}: not a git repository", Exit.BAD_CHECKOUT,
                                      hint=f"git clone {s.upstream.url} {repo}, or use `zpatch checkout`")
                raise ZpatchError(f"{repo}: not its own git repository (git would act on {top})",
                                  Exit.BAD_CHECKOUT,
                                  hint=f"replace it with a clone: git clone {s.upstream.url} {repo}")
        targets.append(Target(s, repo))
    return targets


def _blob_or_none(path: Path) -> str | None:
    return git.hash_object_bytes(path.read_bytes()) if path.is_file() else None


def _changed_since(state_files: dict[str, str | None], repo: Path) -> list[str]:
    """Paths whose content differs from what zpatch left there."""
    return [f for f, want in state_files.items() if _blob_or_none(repo / f) != want]


def _overlay_target(ov: Overlay, checkout: Path) -> Path | None:
    return checkout / ov.lock.overlay.path if ov.lock.overlay else None


def _describe_series(ov: Overlay) -> dict:
    return {s.upstream.name: [{"name": p.name, "sha256": p.sha256} for p in s.patches] for s in ov.series}


# ---------------------------------------------------------------- checkout

_MISSING = re.compile(r"unable to read sha1 file of (.+?) \(")


def checkout(ov: Overlay, dest: Path, *, offline: bool = False, exclude: list[str] | None = None,
             progress: bool = False) -> dict:
    """Clone every upstream at its pin into DEST from the cache (hard links, no network when warm)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ZpatchError(f"{dest}: already exists and is not empty", Exit.BAD_CHECKOUT,
                          hint=f"apply to it with `zpatch apply {dest}`, or choose a new directory")
    mirrors = {s.upstream.name: cache.ensure(s.upstream.url, s.upstream.commit, offline=offline,
                                             progress=progress) for s in ov.series}
    created = not dest.exists()
    result = {"checkout": str(dest), "upstreams": [], "missing_objects": []}
    try:
        # Parents first: the custom node's clone lands inside the ComfyUI work tree.
        for s in sorted(ov.series, key=lambda s: s.upstream.path.count("/") + (s.upstream.path != ".")):
            up = s.upstream
            repo = dest / up.path
            repo.parent.mkdir(parents=True, exist_ok=True)
            git.run(["clone", "--no-checkout", "--quiet", str(mirrors[up.name]), str(repo)])
            git.run(["remote", "set-url", "origin", up.url], cwd=repo)
            mine = [e[len(up.path) + 1:] if up.path != "." else e for e in exclude or []
                    if up.path == "." or e.startswith(up.path + "/")]
            if mine:
                git.run(["sparse-checkout", "set", "--no-cone", "/*", *[f"!/{m}" for m in mine]], cwd=repo)
            r = git.run(["checkout", "--quiet", "--detach", up.commit], cwd=repo, check=False)
            missing = _MISSING.findall(r.stderr)
            if not r.ok and not missing:
                raise ZpatchError(f"git checkout {up.commit[:12]} failed in {repo}: "
                                  f"{r.stderr.strip().splitlines()[-1]}", Exit.ENVIRONMENT)
            result["missing_objects"] += [f"{up.path}/{m}" if up.path != "." else m for m in missing]
            result["upstreams"].append({"name": up.name, "path": up.path, "commit": up.commit,
                                        "url": up.url, "excluded": mine})
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in list(dest.iterdir()):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise
    return result


# ---------------------------------------------------------------- apply

def _fast_noop(ov: Overlay, targets: list[Target], st: dict | None, checkout: Path) -> bool:
    """True when the checkout already holds exactly this overlay; reads files only, runs no git."""
    if not st or st.get("series") != _describe_series(ov):
        return False
    for t in targets:
        ust = st["upstreams"].get(t.name)
        if ust is None or read_head_or_git(t.repo) != ust["commit"]:
            return False
        if _changed_since(ust["files"], t.repo):
            return False
    if ov.lock.overlay:
        if st.get("overlay", {}).get("files") != ov.lock.overlay.sha256:
            return False
        tgt = _overlay_target(ov, checkout)
        for f, digest in ov.lock.overlay.sha256.items():
            if not (tgt / f).is_file() or sha256_file(tgt / f) != digest:
                return False
    return True


def read_head_or_git(repo: Path) -> str | None:
    return state.read_head(repo) or git.head(repo)


def _reverse_recorded(root_gd: Path, st: dict, targets: list[Target]) -> None:
    for t in targets:
        ust = st["upstreams"].get(t.name)
        if not ust or not ust["patches"]:
            continue
        copies = [state.applied_copy(root_gd, t.name, p["name"]) for p in reversed(ust["patches"])]
        r = git.apply(t.repo, copies, reverse=True)
        if not r.ok:
            raise ZpatchError(f"{t.repo}: could not reverse the recorded patches: "
                              f"{r.stderr.strip().splitlines()[-1]}", Exit.CONFLICT)


def _apply_recorded(root_gd: Path, st: dict, targets: list[Target]) -> None:
    for t in targets:
        ust = st["upstreams"].get(t.name)
        if ust and ust["patches"]:
            git.apply(t.repo, [state.applied_copy(root_gd, t.name, p["name"]) for p in ust["patches"]])


def apply(ov: Overlay, checkout: Path, *, allow_drift: bool = False) -> dict:
    targets = resolve(ov, checkout)
    checkout = Path(checkout).resolve()
    root = _root_target(targets)
    root_gd = state.git_dir_of(root.repo) or git.git_dir(root.repo)
    st = state.load(root_gd)
    result = {"checkout": str(checkout), "changed": False, "replaced": False, "upstreams": [],
              "overlay": ov.lock.overlay.path if ov.lock.overlay else None}
    if _fast_noop(ov, targets, st, checkout):
        result["upstreams"] = [{"name": t.name, "commit": t.pin, "head": st["upstreams"][t.name]["commit"],
                                "applied": [p.name for p in t.series.patches]} for t in targets]
        return result

    # 1. Preconditions, all checked before anything is written.
    heads = {}
    for t in targets:
        heads[t.name] = read_head_or_git(t.repo)
        if heads[t.name] != t.pin and not allow_drift:
            raise ZpatchError(f"{t.repo}: {t.name} is at {str(heads[t.name])[:12]}, pinned at {t.pin[:12]}",
                              Exit.BAD_CHECKOUT,
                              hint=f"git -C {t.repo} checkout {t.pin}, or rerun with --allow-drift "
                                   "to try a 3-way apply")
    previous = st if st and st.get("upstreams") else None
    if previous:
        changed = _edited_since_apply(previous, targets)
        if changed:
            raise ZpatchError(f"{changed[0]}: modified since zpatch applied it; refusing to overwrite",
                              Exit.BAD_CHECKOUT,
                              hint="save your edit (git diff > my.patch), then `git checkout` the file and rerun")
    for t in targets:
        for f in t.series.files:   # a symlinked directory would carry a patch out of the tree
            real = (t.repo / f).resolve()
            if t.repo not in real.parents:
                raise ZpatchError(f"{t.repo / f}: resolves to {real}, outside {t.repo} (symlink)",
                                  Exit.BAD_CHECKOUT, hint="replace the symlink with the upstream files")
        recorded = set(previous["upstreams"].get(t.name, {}).get("files", {})) if previous else set()
        # Hash here against HEAD's blob ids (one cheap git call); only files that look changed
        # go to `git status`, which knows about filters such as core.autocrlf.
        blobs = git.tree_blobs(t.repo, "HEAD", t.series.files)
        suspects = [f for f in t.series.files if f not in recorded and _blob_or_none(t.repo / f) != blobs.get(f)]
        dirty = git.changed_paths(t.repo, suspects) if suspects else {}
        if dirty:
            f = sorted(dirty)[0]
            raise ZpatchError(f"{t.repo / f}: has uncommitted changes and a patch touches it", Exit.BAD_CHECKOUT,
                              hint=f"commit or stash them first: git -C {t.repo} stash")
    ov_target = _overlay_target(ov, checkout)
    if ov_target is not None and ov_target.exists() and not (previous and previous.get("overlay")):
        raise ZpatchError(f"{ov_target}: exists and was not installed by zpatch", Exit.BAD_CHECKOUT,
                          hint=f"move it away (mv {ov_target} {ov_target}.bak) and rerun")

    # 2. Take the old overlay out (from zpatch's own copies), then put the new one in.
    if previous:
        _reverse_recorded(root_gd, previous, targets)
    done: list[Target] = []
    try:
        for t in targets:
            files = [p.path for p in t.series.patches]
            if not files:
                done.append(t)
                continue
            if heads[t.name] == t.pin:
                r = git.apply(t.repo, files)
            else:
                r = _three_way(t, files)
            if not r.ok:
                fails = diagnose.failures(t.repo, heads[t.name] or t.pin, t.series.patches, stop_at_first=True)
                first = diagnose.one_line(fails[0]) if fails else r.stderr.strip().splitlines()[-1]
                raise ZpatchError(f"{t.name}: {first}", Exit.CONFLICT,
                                  hint="nothing was changed; `zpatch check` lists every failing hunk",
                                  details={"failures": fails})
            done.append(t)
    except BaseException:
        for t in reversed(done):
            if t.series.patches:
                git.apply(t.repo, [p.path for p in reversed(t.series.patches)], reverse=True)
        if previous:
            _apply_recorded(root_gd, previous, targets)
        raise

    # 3. The custom node, then the record.
    if ov_target is not None:
        _install_overlay(ov, ov_target, previous)
    new_state = {
        "series": _describe_series(ov),
        "upstreams": {t.name: {"commit": heads[t.name],
                               "patches": [{"name": p.name, "sha256": p.sha256} for p in t.series.patches],
                               "files": {f: _blob_or_none(t.repo / f) for f in t.series.files}}
                      for t in targets},
        "overlay": {"path": ov.lock.overlay.path, "files": dict(ov.lock.overlay.sha256)} if ov.lock.overlay else None,
    }
    state.save(root_gd, new_state, {t.name: {p.name: p.data for p in t.series.patches} for t in targets})
    result["changed"] = True
    result["replaced"] = previous is not None
    result["upstreams"] = [{"name": t.name, "commit": t.pin, "head": heads[t.name],
                            "applied": [p.name for p in t.series.patches]} for t in targets]
    return result


def _edited_since_apply(st: dict, targets: list[Target]) -> list[str]:
    """Files edited since zpatch applied them. An upstream whose files were all put back to
    HEAD by hand (git checkout -- .) holds nothing of ours any more: its entry leaves ST."""
    edited = []
    for t in targets:
        ust = st["upstreams"].get(t.name)
        changed = _changed_since(ust["files"], t.repo) if ust else []
        if not changed:
            continue
        head = git.tree_blobs(t.repo, "HEAD", list(ust["files"]))
        if all(_blob_or_none(t.repo / f) == head.get(f) for f in ust["files"]):
            del st["upstreams"][t.name]
            continue
        edited += [str(t.repo / f) for f in changed]
    return edited


def _three_way(t: Target, files: list[Path]) -> git.GitResult:
    """--allow-drift: 3-way merge against the pinned blobs; on conflict restore the files."""
    r = git.apply(t.repo, files, three_way=True)
    git.run(["reset", "--quiet", "--", *t.series.files], cwd=t.repo, check=False)   # --3way staged them
    if r.ok and "with conflicts" not in r.stderr:
        return r
    touched = list(git.tree_blobs(t.repo, "HEAD", t.series.files))   # the rest were created by patches
    if touched:
        git.run(["checkout", "HEAD", "--", *touched], cwd=t.repo, check=False)
    for f in t.series.files:
        if f not in touched and (t.repo / f).exists():
            (t.repo / f).unlink()
    return git.GitResult(1, r.stdout, r.stderr or "3-way merge left conflicts")


def _install_overlay(ov: Overlay, target: Path, previous: dict | None) -> None:
    src = ov.overlay_source()
    if previous and previous.get("overlay"):
        _remove_overlay(target, previous["overlay"]["files"])
    for f in overlay_files(src):
        (target / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f, target / f)


def _remove_overlay(target: Path, files: dict[str, str]) -> None:
    for f in files:
        (target / f).unlink(missing_ok=True)
    # Drop directories left empty, and the __pycache__ ComfyUI wrote when it imported the node.
    for d in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if d.name == "__pycache__":
            shutil.rmtree(d, ignore_errors=True)
        elif not any(d.iterdir()):
            d.rmdir()
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()


# ---------------------------------------------------------------- unapply

def unapply(ov: Overlay, checkout: Path) -> dict:
    targets = resolve(ov, checkout)
    checkout = Path(checkout).resolve()
    root = _root_target(targets)
    root_gd = state.git_dir_of(root.repo) or git.git_dir(root.repo)
    st = state.load(root_gd)
    result = {"checkout": str(checkout), "changed": False, "reversed": {}}
    if not st:
        return result
    changed = _edited_since_apply(st, targets)
    ovst = st.get("overlay")
    if ovst:
        tgt = checkout / ovst["path"]
        changed += [str(tgt / f) for f, d in ovst["files"].items()
                    if (tgt / f).is_file() and sha256_file(tgt / f) != d]
    if changed:
        raise ZpatchError(f"{changed[0]}: modified since zpatch applied it; unapply would lose that edit",
                          Exit.BAD_CHECKOUT,
                          hint="save your edit (git diff > my.patch) or move the file away, then rerun")
    _reverse_recorded(root_gd, st, targets)
    if ovst:
        _remove_overlay(checkout / ovst["path"], ovst["files"])
    state.clear(root_gd)
    result["changed"] = True
    result["reversed"] = {name: [p["name"] for p in u["patches"]] for name, u in st["upstreams"].items()}
    result["overlay_removed"] = ovst["path"] if ovst else None
    return result


# ---------------------------------------------------------------- status

def status(ov: Overlay, checkout: Path) -> dict:
    targets = resolve(ov, checkout)
    checkout = Path(checkout).resolve()
    root = _root_target(targets)
    root_gd = state.git_dir_of(root.repo) or git.git_dir(root.repo)
    st = state.load(root_gd) or {"upstreams": {}}
    _edited_since_apply(st, targets)      # forget upstreams reverted by hand
    out = {"checkout": str(checkout), "upstreams": [], "overlay": None, "clean": True}
    for t in targets:
        head = read_head_or_git(t.repo)
        ust = st["upstreams"].get(t.name, {})
        recorded = {p["name"]: p["sha256"] for p in ust.get("patches", [])}
        modified_files = set(_changed_since(ust.get("files", {}), t.repo))
        unrecorded = [p for p in t.series.patches if p.name not in recorded]
        found = diagnose.classify(t.repo, unrecorded, t.series.files) if unrecorded else {}
        patches = []
        for p in t.series.patches:
            if p.name not in recorded:
                s = found[p.name]           # applied by hand (git am), missing, or conflicting
            elif recorded[p.name] != p.sha256:
                s = "outdated"              # an older version of this patch is applied
            elif modified_files & set(p.files):
                s = "modified"              # applied, then edited by hand
            else:
                s = "applied"
            patches.append({"name": p.name, "state": s})
        foreign = [{"path": f, "git_status": code} for f, code in sorted(git.changed_paths(t.repo).items())
                   if f not in t.series.files and not _inside_nested(t, targets, f)]
        entry = {"name": t.name, "path": t.series.upstream.path, "pin": t.pin, "head": head,
                 "at_pin": head == t.pin, "patches": patches, "foreign_changes": foreign}
        out["upstreams"].append(entry)
        if not entry["at_pin"] or foreign or any(p["state"] != "applied" for p in patches):
            out["clean"] = False
    if ov.lock.overlay:
        tgt = checkout / ov.lock.overlay.path
        files = {}
        for f, d in ov.lock.overlay.sha256.items():
            files[f] = "missing" if not (tgt / f).is_file() else ("ok" if sha256_file(tgt / f) == d else "modified")
        vals = set(files.values())
        out["overlay"] = {"path": ov.lock.overlay.path,
                          "state": "installed" if vals == {"ok"} else ("missing" if vals == {"missing"} else "modified"),
                          "files": files}
        if out["overlay"]["state"] != "installed":
            out["clean"] = False
    return out


def _inside_nested(t: Target, targets: list[Target], rel: str) -> bool:
    """Paths that belong to another upstream nested in this one are that one's business."""
    abs_path = (t.repo / rel).resolve()
    return any(o is not t and o.repo != t.repo and o.repo in (abs_path, *abs_path.parents) for o in targets)
