"""The patch set as a whole: where it lives, its lock, its series, patches and node files, all verified."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import lock as lockmod
from . import patchfile, paths, series
from .errors import Exit, ZpatchError

PACKAGE_DIR = Path(__file__).resolve().parent


def cwd() -> Path:
    try:
        return Path.cwd().resolve()
    except OSError:
        raise ZpatchError("the current directory no longer exists", Exit.BAD_CHECKOUT,
                          hint="cd to an existing directory, or pass the paths explicitly")


def find_root(explicit: str | os.PathLike | None = None, *, for_writing: bool = False,
              checkout: str | os.PathLike | None = None) -> Path:
    """The overlay directory (the one holding upstream.lock).

    Order: --overlay, $ZPATCH_OVERLAY, the current directory or an ancestor (like git finds
    .git), the overlay that last applied CHECKOUT (or the checkout the current directory lies in),
    the source tree of an editable install, the copy bundled into the wheel.
    """
    if explicit or os.environ.get("ZPATCH_OVERLAY"):
        root = Path(explicit or os.environ["ZPATCH_OVERLAY"]).resolve()
        if not (root / lockmod.LOCK_NAME).is_file():
            raise ZpatchError(f"{root}: no {lockmod.LOCK_NAME} here", Exit.BAD_OVERLAY,
                              hint="point --overlay (or ZPATCH_OVERLAY) at the zimage-patcher repository")
        return root
    from .record import is_overlay, pointed_overlay
    here = cwd()
    for d in (here, *here.parents):
        if is_overlay(str(d)):
            return d
    try:
        applied_by = pointed_overlay(Path(checkout).absolute() if checkout else here)
    except OSError:
        applied_by = None
    if applied_by and is_overlay(applied_by):
        beside = Path(applied_by).resolve() in (PACKAGE_DIR.parent, (PACKAGE_DIR / "_bundle").resolve())
        if not (for_writing and (beside or is_installed_copy(Path(applied_by)))):
            return Path(applied_by).resolve()
        # a checkout last written with the overlay beside zpatch (found, never named): a writer still
        # refuses to rewrite zpatch's own tree unless it is named
    elif applied_by:
        # the overlay this checkout last used is gone: comparing against another one, or advising a
        # write to it, would act on an overlay the user never chose here
        raise ZpatchError(f"{applied_by}: the overlay that last applied this checkout is gone (moved or deleted)",
                          Exit.BAD_OVERLAY, hint="run inside the overlay's repository, or name it with --overlay DIR",
                          details={"no_overlay": True})
    if for_writing:   # never rewrite the source tree or bundle of the installed zpatch by accident
        src = PACKAGE_DIR.parent       # an editable install's repository: the CLI names it in the hint
        mine = (src / lockmod.LOCK_NAME).is_file() and (src / "patches").is_dir() and (src / ".git").exists()
        raise ZpatchError(f"{here}: no overlay (upstream.lock and patches/) here or above", Exit.BAD_OVERLAY,
                          hint="run inside the overlay's repository or pass --overlay DIR",
                          details={"no_overlay": True, **({"overlay_source": str(src)} if mine else {})})
    for d in (PACKAGE_DIR.parent, PACKAGE_DIR / "_bundle"):
        if (d / lockmod.LOCK_NAME).is_file():
            return d
    raise ZpatchError("no overlay found (upstream.lock)", Exit.BAD_OVERLAY,
                      hint="run inside the zimage-patcher repository or pass --overlay DIR", details={"no_overlay": True})


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def overlay_files(source: Path) -> list[str]:
    """Files of the custom node to install, relative POSIX paths, sorted; caches excluded."""
    out = []
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source)
        if "__pycache__" in rel.parts or p.suffix == ".pyc":
            continue
        if p.is_symlink():   # the node is installed as plain files; a link could pull in anything
            raise ZpatchError(f"{p}: is a symlink; the node folder may hold only plain files", Exit.BAD_OVERLAY,
                              hint="replace the link with the file it points to")
        if p.is_file():
            out.append(rel.as_posix())
    return out


@dataclass
class Series:
    upstream: lockmod.Upstream
    directory: Path
    patches: list[patchfile.Patch]

    @property
    def files(self) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.patches:
            for f in p.files:
                seen.setdefault(f, None)
        return list(seen)


@dataclass
class Overlay:
    root: Path
    lock: lockmod.Lock
    series: list[Series]

    def overlay_source(self) -> Path | None:
        return self.root / self.lock.overlay.source if self.lock.overlay else None


def load_series(root: Path, up: lockmod.Upstream) -> tuple[Path, list[str]]:
    directory = root / up.patches
    names = series.parse(directory / series.SERIES_NAME)
    present = {p.name for p in directory.glob("*.patch")} | {p.name for p in directory.glob("*.diff")}
    for name in names:
        if not (directory / name).is_file():
            raise ZpatchError(f"{directory / series.SERIES_NAME}: names {name}, which does not exist",
                              Exit.BAD_OVERLAY, hint=f"restore {directory / name} or drop it from the series")
    strays = sorted(present - set(names))
    if strays:
        raise ZpatchError(f"{directory / strays[0]}: patch file is not listed in the series",
                          Exit.BAD_OVERLAY,
                          hint=f"add it to {directory / series.SERIES_NAME} or delete it")
    return directory, names


def _no_link(root: Path, rel: str) -> None:
    """The overlay's own files are plain files in plain folders, every folder on the way included:
    export and rebase rewrite them, and a link would carry those writes elsewhere (the front door's
    writes refuse the same links, so `check` and the writers agree)."""
    cur = root
    for part in PurePosixPath(rel).parts:
        cur = cur / part
        if cur.is_symlink():
            raise ZpatchError(f"{cur}: is a symlink; the overlay's lock, series folders, patches and node "
                              "files must be plain",
                              Exit.BAD_OVERLAY, hint="replace the link with the file or folder it points to")


@dataclass
class Problem:
    kind: str                  # lock, series, patch, hash, layout, overlay
    error: ZpatchError
    upstream: str | None = None
    patch: str | None = None


def collect(root: Path, *, verify_hashes: bool = True) -> tuple[Overlay | None, list[Problem]]:
    """Walk the overlay once: lock, series, patches, hashes, layout, node. Every problem is kept;
    `load` raises the first, `check` reports them all. Series whose patches did not all parse are
    left out of the Overlay (nothing can be applied from them)."""
    try:
        _no_link(root, lockmod.LOCK_NAME)
        lk = lockmod.parse(root / lockmod.LOCK_NAME)
    except ZpatchError as e:
        return None, [Problem("lock", e)]
    problems: list[Problem] = []
    all_series = []
    for up in lk.upstreams:
        try:
            _no_link(root, f"{up.patches}/{series.SERIES_NAME}")
            directory, names = load_series(root, up)
        except ZpatchError as e:
            problems.append(Problem("series", e, up.name))
            continue
        patches = []
        for n in names:
            try:
                _no_link(root, f"{up.patches}/{n}")
                patches.append(patchfile.load(directory / n, n))
            except ZpatchError as e:
                problems.append(Problem("patch", e, up.name, n))
        if verify_hashes:
            try:
                verify_upstream_hashes(root, up, patches)
            except ZpatchError as e:
                problems.append(Problem("hash", e, up.name))
        if len(patches) == len(names):
            all_series.append(Series(up, directory, patches))
    ov = Overlay(root, lk, all_series)
    problems += [Problem("layout", e, up) for up, e in _layout_problems(ov)]
    if lk.overlay:
        try:
            _no_link(root, lk.overlay.source)    # the folder and every folder above it, as for patches
            src = ov.overlay_source()
            overlay_files(src)     # refuses symlinks in the node's source folder
            if verify_hashes:
                verify_overlay_hashes(ov)
        except ZpatchError as e:
            problems.append(Problem("overlay", e))
    return ov, problems


def _layout_problems(ov: Overlay) -> list[tuple[str, ZpatchError]]:
    """A series may not write into another upstream's repository or the node's folder: git would
    take the nested repository's files as the parent's untracked files."""
    fences = [s.upstream.path for s in ov.series if s.upstream.path != "."]
    fences += [ov.lock.overlay.path] if ov.lock.overlay else []
    out = []
    for s in ov.series:
        for p in s.patches:
            for f in p.files:
                full = paths.under(s.upstream.path, f)
                hit = next((x for x in fences if x != s.upstream.path and (full + "/").startswith(x + "/")), None)
                if hit:
                    node = ov.lock.overlay and hit == ov.lock.overlay.path
                    out.append((s.upstream.name, ZpatchError(
                        f"{p.name}: touches {full}, inside {hit}, which is not {s.upstream.name}'s",
                        Exit.BAD_OVERLAY,
                        hint=(f"the node's files come from {ov.lock.overlay.source}, not from patches" if node
                              else f"move the change into the series of the upstream at {hit}"))))
                    break
    return out


def load(root: Path, *, verify_hashes: bool = True) -> Overlay:
    """The overlay, every part checked; the first problem raises."""
    ov, problems = collect(root, verify_hashes=verify_hashes)
    if problems:
        raise problems[0].error
    return ov


def verify_upstream_hashes(root: Path, up: lockmod.Upstream, patches: list[patchfile.Patch]) -> None:
    recorded = dict(up.sha256)
    for p in patches:
        want = recorded.pop(p.name, None)
        if want is None:
            raise ZpatchError(f"{p.path}: not recorded in {lockmod.LOCK_NAME}", Exit.BAD_OVERLAY,
                              hint="if the new patch is intended, run `zpatch lock`")
        if want != p.sha256:
            raise ZpatchError(f"{p.path}: sha256 {p.sha256[:12]} does not match {lockmod.LOCK_NAME} "
                              f"({want[:12]}); the patch was modified", Exit.BAD_OVERLAY,
                              hint="if the edit is intended, run `zpatch lock`; else `git checkout` the file")
    if recorded:
        name = sorted(recorded)[0]
        raise ZpatchError(f"{lockmod.LOCK_NAME}: records {up.patches}/{name}, which is not in the series",
                          Exit.BAD_OVERLAY, hint="run `zpatch lock` to drop stale entries")


def verify_overlay_hashes(ov: Overlay) -> None:
    src = ov.overlay_source()
    if src is None or not src.is_dir():
        raise ZpatchError(f"{src}: overlay source folder missing", Exit.BAD_OVERLAY)
    actual = {f: sha256_file(src / f) for f in overlay_files(src)}
    if actual != ov.lock.overlay.sha256:
        changed = sorted(set(actual) ^ set(ov.lock.overlay.sha256)
                         | {f for f in actual if ov.lock.overlay.sha256.get(f, actual[f]) != actual[f]})
        raise ZpatchError(f"{src / changed[0]}: overlay file differs from {lockmod.LOCK_NAME}",
                          Exit.BAD_OVERLAY, hint="if the edit is intended, run `zpatch lock`")


def is_installed_copy(root: Path) -> bool:
    """The overlay bundled into an installed zpatch (site-packages), which no one should edit."""
    root = root.resolve()
    return root == (PACKAGE_DIR / "_bundle").resolve() or "site-packages" in root.parts


def node_hashes(root: Path, node: lockmod.OverlayFiles) -> dict[str, str]:
    """The sha256 of every file of the node's source folder, as the lock records them."""
    src = root / node.source
    return {f: sha256_file(src / f) for f in overlay_files(src)}
