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

from . import git, hunks
from .cache import cache_home

FORMAT = 2                # bump when what an entry holds or means changes (git.py's own bytes are in the key too)
KEEP = 64                 # entries kept (the newest used); each is a few kilobytes per patch
_META = "series.json"
META_LIMIT = 4 << 20      # bytes of series.json, and of one object inflated: an entry is far smaller
OBJECT_LIMIT = 64 << 20


def _root() -> Path:
    return cache_home() / "series"


def commit_patches(idx: git.ScratchIndex, base: str, patches: list[Path]) -> list[str]:
    """idx.commit_patches(BASE, PATCHES), kept between runs when IDX writes to a scratch store of its
    own; the index is left as a build leaves it (the tip's tree)."""
    store = idx.env.get("GIT_OBJECT_DIRECTORY")
    if not store or not re.fullmatch(r"[0-9a-f]{40}", base):
        return idx.commit_patches(base, patches)
    k = key(base, patches)
    hit = load(store, k, base, patches)
    if hit is not None:
        idx.read_tree(hit[-1] if hit else base)
        return hit
    before = set(objects(Path(store)))
    out = idx.commit_patches(base, patches)
    save(store, k, base, out, patches, exclude=before)
    return out


def key(base: str, patches: list[Path]) -> str:
    """BASE, the patches' bytes, and git.py and hunks.py themselves: how a patch becomes a commit (the
    applied hunks, mailinfo, the message, the commit object) lives there, and an entry made by other code
    than this run's is not reused."""
    h = hashlib.sha256(f"zpatch-series {FORMAT} {base} {git.COMMITTER}\n".encode())
    for module in (git.__file__, hunks.__file__):
        h.update(hashlib.sha256(Path(module).read_bytes()).digest())
    for p in patches:
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


def objects(folder: Path) -> list[str]:
    """The loose objects under FOLDER, as ids."""
    return sorted(d.name + f.name for d in folder.iterdir() if len(d.name) == 2 and d.is_dir()
                  for f in d.iterdir() if len(f.name) == 38)


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, OBJECT_LIMIT)
    if d.unconsumed_tail or not d.eof:
        raise ValueError("an object larger than an entry holds, or cut short")
    return out


def _copy_checked(src: Path, dest: Path, oid: str) -> bytes:
    """Copy the loose object OID from the store SRC to DEST, checking it decodes to that id; returns
    it inflated ("TYPE SIZE\\0BODY")."""
    path = src / oid[:2] / oid[2:]
    if path.is_symlink() or not re.fullmatch(r"[0-9a-f]{40}", oid):
        raise ValueError(f"object {oid!r} is not a plain loose object")
    data = path.read_bytes()
    raw = _inflate(data)
    if hashlib.sha1(raw).hexdigest() != oid:
        raise ValueError(f"object {oid} is damaged")
    git.place_loose_object(str(dest), oid, lambda: data)
    return raw


def _check_chain(raw: dict[str, bytes], commits: list[str], base: str, patches: list[Path],
                 messages: dict) -> None:
    """Each commit is the one zpatch makes for its patch on the commit before (the first on BASE):
    its parent, and its author, date and message rebuilt from the entry's mailinfo, byte for byte.
    So the entry's commits and mailinfo agree with each other and with the patches' order."""
    if len(commits) != len(patches):
        raise ValueError("not one commit per patch")
    parent = base
    for cid, p in zip(commits, patches):
        head, _, body = raw[cid].partition(b"\0")
        if not head.startswith(b"commit "):
            raise ValueError(f"{cid} is not a commit")
        tree = re.match(rb"tree ([0-9a-f]{40})\n", body)
        info, msg = messages[hashlib.sha256(Path(p).read_bytes()).hexdigest()]
        if tree is None or git.commit_object(tree.group(1).decode(), parent, info, msg) != body:
            raise ValueError(f"{cid} is not the commit of {Path(p).name}")
        parent = cid


def _drop(entry: Path) -> None:
    if entry.is_symlink():
        entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(entry, ignore_errors=True)


def load(store: str, k: str, base: str, patches: list[Path]) -> list[str] | None:
    """The commits of entry K (the series PATCHES on BASE), their objects copied into the object folder
    STORE and the patches' mailinfo remembered (git.patch_message); None when there is no entry or it
    does not hold exactly what commit_patches would make (then it is dropped, and made again)."""
    entry = _root() / k
    try:
        if entry.is_symlink():
            raise ValueError("an entry is a folder of its own")
        meta_path = entry / _META
        if meta_path.stat().st_size > META_LIMIT:
            raise ValueError("series.json too large")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError("another format")
        commits, messages = list(meta["commits"]), dict(meta["messages"])
        raw = {oid: _copy_checked(entry / "objects", Path(store), oid) for oid in meta["objects"]}
        missing = [c for c in commits if c not in raw]
        if missing:
            raise ValueError(f"commit {missing[0]!r} not in the entry")
        _check_chain(raw, commits, base, patches, messages)
        for sha, (info, msg) in messages.items():
            git.remember_message(sha, info, msg)
        os.utime(entry)                          # the newest used are the ones kept
        return commits
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, zlib.error):
        _drop(entry)                             # damaged: made again by this run
        return None


def save(store: str, k: str, base: str, commits: list[str], patches: list[Path], *, exclude=frozenset()) -> None:
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
        raw = {oid: _inflate((Path(store) / oid[:2] / oid[2:]).read_bytes()) for oid in commits}
        _check_chain(raw, commits, base, patches, messages)       # else a later load could not check it
        (tmp / _META).write_text(json.dumps({"format": FORMAT, "commits": commits, "objects": oids,
                                             "messages": messages}), encoding="utf-8")
        try:
            os.rename(tmp, root / k)
        except OSError:                          # another run kept the same series first
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(root)
    except (OSError, ValueError, KeyError, zlib.error):     # not kept: the next run makes it again
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
