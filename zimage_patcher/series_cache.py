"""A patch series as commits on its base, kept between runs in $ZPATCH_CACHE/series/.

A rebase, drift's trial moves and publish first commit the series on its pin (the 3-way merge needs
each patch's preimage blobs, the range-diff and publish the commits): two git processes per patch,
plus mailinfo, every time, for a result that depends only on the pin and the patch files. Here it
is kept once made: its loose objects, the commit ids and each patch's mailinfo, under a key of the
base, the patches' bytes and the committer. A hit copies the objects into the caller's own scratch
store (checked on the way: a damaged entry is a miss, and dropped), so nothing later depends on the
cache, and pruning or deleting it never breaks a stopped rebase. Only a cache: a failure to read or
write it is a miss, never an error."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path

from . import git
from .cache import cache_home

FORMAT = 1                # bump when what an entry holds or means changes
KEEP = 64                 # entries kept (the newest used); each is a few kilobytes per patch
_META = "series.json"


def _root() -> Path:
    return cache_home() / "series"


def commit_patches(idx: git.ScratchIndex, base: str, patches: list[Path]) -> list[str]:
    """idx.commit_patches(BASE, PATCHES), kept between runs when IDX writes to a scratch store of its
    own; the index is left as a build leaves it (the tip's tree)."""
    store = idx.env.get("GIT_OBJECT_DIRECTORY")
    if not store or not re.fullmatch(r"[0-9a-f]{40}", base):
        return idx.commit_patches(base, patches)
    k = key(base, patches)
    hit = load(store, k)
    if hit is not None and len(hit) == len(patches):
        idx.read_tree(hit[-1] if hit else base)
        return hit
    before = set(objects(Path(store)))
    out = idx.commit_patches(base, patches)
    save(store, k, out, patches, exclude=before)
    return out


def key(base: str, patches: list[Path]) -> str:
    h = hashlib.sha256(f"zpatch-series {FORMAT} {base} {git.COMMITTER}\n".encode())
    for p in patches:
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


def objects(folder: Path) -> list[str]:
    """The loose objects under FOLDER, as ids."""
    return sorted(d.name + f.name for d in folder.iterdir() if len(d.name) == 2 and d.is_dir()
                  for f in d.iterdir() if len(f.name) == 38)


def _copy_checked(src: Path, dest: Path, oid: str) -> None:
    """Copy the loose object OID from the store SRC to DEST, checking it decodes to that id."""
    data = (src / oid[:2] / oid[2:]).read_bytes()
    if hashlib.sha1(zlib.decompress(data)).hexdigest() != oid:
        raise ValueError(f"object {oid} is damaged")
    target = dest / oid[:2] / oid[2:]
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f"tmp_obj_{os.getpid()}_{oid[2:10]}")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def load(store: str, k: str) -> list[str] | None:
    """The commits of entry K, their objects copied into the object folder STORE and the patches'
    mailinfo remembered (git.patch_message); None when there is no usable entry."""
    entry = _root() / k
    try:
        meta = json.loads((entry / _META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            return None
        for oid in meta["objects"]:
            _copy_checked(entry / "objects", Path(store), oid)
        for sha, (info, msg) in meta["messages"].items():
            git.remember_message(sha, info, msg)
        os.utime(entry)                          # the newest used are the ones kept
        return list(meta["commits"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, zlib.error):
        shutil.rmtree(entry, ignore_errors=True)     # damaged: made again by this run
        return None


def save(store: str, k: str, commits: list[str], patches: list[Path], *, exclude=frozenset()) -> None:
    """Keep the objects the series made in the scratch store STORE (all but EXCLUDE, which were there
    before) as entry K. Written whole under a temporary name, then renamed: a reader sees all of it or
    none."""
    root = _root()
    tmp = root / f".tmp-{os.getpid()}-{k[:16]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "objects").mkdir(parents=True)
        oids = [oid for oid in objects(Path(store)) if oid not in exclude]
        for oid in oids:
            _copy_checked(Path(store), tmp / "objects", oid)
        messages = {}
        for p in patches:
            sha = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            if (known := git.remembered_message(sha)) is not None:      # commit_tree asked for each
                messages[sha] = known
        (tmp / _META).write_text(json.dumps({"format": FORMAT, "commits": commits, "objects": oids,
                                             "messages": messages}), encoding="utf-8")
        try:
            os.rename(tmp, root / k)
        except OSError:                          # another run kept the same series first
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(root)
    except (OSError, ValueError, zlib.error):
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path) -> None:
    """Keep the KEEP entries used last; drop temporary folders a killed run left over an hour ago."""
    now = time.time()
    entries = []
    for d in root.iterdir():
        try:
            mtime = d.stat().st_mtime
        except OSError:
            continue
        if d.name.startswith(".tmp-"):
            if now - mtime > 3600:
                shutil.rmtree(d, ignore_errors=True)
        else:
            entries.append((mtime, d))
    for _, d in sorted(entries, reverse=True)[KEEP:]:
        shutil.rmtree(d, ignore_errors=True)
