"""What zpatch applied to a checkout, kept inside the checkout's own git dir (never tracked).

Layout under <git-dir>/zpatch/:
  record.json         the typed record below; replacing it is the commit point of apply/unapply
  patches/<sha256>    a content-addressed copy of every applied patch, so `unapply` reverses exactly
                      what went in even after the overlay moved on (quilt keeps .pc/ for this)
  journal.json, lock  the transaction in progress and the checkout lock (operation.py)

Everything read back is checked: types, relative paths that stay inside, copies against their
sha256. A damaged record is an error naming the file, never a reason to write elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import Exit, ZpatchError, from_oserror
from .durable import sync_dirs, write_atomic
from .worktree import rel_parts

RECORD_VERSION = 2
RECORD_NAME = "record.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass
class PatchRef:
    name: str
    sha256: str


@dataclass
class UpstreamRecord:
    commit: str                          # HEAD when applied
    patches: list[PatchRef]
    files: dict[str, str | None]         # path -> git blob id of the bytes zpatch left (None: deleted)
    three_way: bool = False              # applied off its pin with a 3-way merge


@dataclass
class NodeRecord:
    path: str                            # the custom node's folder inside the checkout
    files: dict[str, str]                # path in that folder -> sha256 of what zpatch installed
    dirs: list[str] = field(default_factory=list)   # folders zpatch created there (removed when empty)


@dataclass
class Record:
    upstreams: dict[str, UpstreamRecord]
    node: NodeRecord | None = None

    def to_bytes(self) -> bytes:
        data = {"version": RECORD_VERSION, **asdict(self)}
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def zpatch_dir(git_dir: Path) -> Path:
    return git_dir / "zpatch"


def check_zdir(zdir: Path) -> None:
    """zpatch's folder and its copies folder must be real directories: a symlink there would carry
    the record, the lock and the garbage collection of copies out of the checkout."""
    for d in (zdir, zdir / "patches"):
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise ZpatchError(f"{d}: is a symlink or not a directory; zpatch keeps its record only in a real "
                              "folder inside the git dir", Exit.BAD_CHECKOUT,
                              hint=f"remove {d} (zpatch recreates it), then rerun")


def _damaged(path: Path, why: str) -> ZpatchError:
    return ZpatchError(f"{path}: zpatch's record of this checkout is damaged ({why})", Exit.BAD_CHECKOUT,
                       hint=f"inspect it; to forget it, move {path.parent} away, then make the files "
                            "pristine with `git checkout -- <files>` and rerun `zpatch apply`")


def _check_files(path: Path, files: object, digest: re.Pattern, nullable: bool) -> dict:
    if not isinstance(files, dict):
        raise _damaged(path, "files is not a table")
    for rel, d in files.items():
        try:
            rel_parts(rel)
        except ZpatchError:
            raise _damaged(path, f"unsafe path {rel!r}")
        if not ((d is None and nullable) or (isinstance(d, str) and digest.fullmatch(d))):
            raise _damaged(path, f"bad digest for {rel!r}")
    return dict(files)


def parse(path: Path, data: bytes) -> Record:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _damaged(path, "not JSON")
    if not isinstance(raw, dict):
        raise _damaged(path, "not a JSON object")
    if raw.get("version") != RECORD_VERSION or type(raw.get("version")) is not int:
        raise _damaged(path, f"version {raw.get('version')!r}, this zpatch reads {RECORD_VERSION}")
    ups = raw.get("upstreams")
    if not isinstance(ups, dict):
        raise _damaged(path, "upstreams is not a table")
    upstreams = {}
    for name, u in ups.items():
        if not isinstance(u, dict) or not isinstance(u.get("commit"), str) or not _SHA1.fullmatch(u["commit"]):
            raise _damaged(path, f"upstream {name!r}")
        patches = u.get("patches")
        if not isinstance(patches, list) or not all(
                isinstance(p, dict) and isinstance(p.get("name"), str) and "/" not in p["name"]
                and isinstance(p.get("sha256"), str) and _SHA256.fullmatch(p["sha256"]) for p in patches):
            raise _damaged(path, f"patches of {name!r}")
        upstreams[name] = UpstreamRecord(
            commit=u["commit"], patches=[PatchRef(p["name"], p["sha256"]) for p in patches],
            files=_check_files(path, u.get("files"), _SHA1, nullable=True),
            three_way=bool(u.get("three_way", False)))
    node = raw.get("node")
    if node is not None:
        if not isinstance(node, dict) or not isinstance(node.get("path"), str):
            raise _damaged(path, "node")
        try:
            rel_parts(node["path"])
            dirs = node.get("dirs", [])
            if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
                raise ZpatchError("dirs", Exit.BAD_CHECKOUT)
            for d in dirs:
                rel_parts(d)
        except ZpatchError:
            raise _damaged(path, "node path")
        node = NodeRecord(node["path"], _check_files(path, node.get("files"), _SHA256, nullable=False), dirs)
    return Record(upstreams, node)


# The overlay that last applied, unapplied, refreshed or edited a checkout, one absolute path in a file
# beside the record (edit mode has no record): zpatch run inside the checkout uses it, as quilt keeps
# its patches folder beside the tree it patched.
POINTER_NAME = "overlay"


def pointer(zdir: Path) -> str | None:
    """The absolute path the pointer holds; None when there is none, or it is anything but a small
    regular file of one absolute path (a FIFO must not hang zpatch, a huge file not fill memory)."""
    try:
        fd = os.open(zdir / POINTER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        data = os.read(fd, 4097) if stat.S_ISREG(st.st_mode) and st.st_size <= 4096 else b""
        text = data.decode("utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return text if os.path.isabs(text) and "\0" not in text else None


def remember_overlay(zdir: Path, root: Path) -> None:
    """Point the checkout at ROOT (the caller holds the checkout's lock)."""
    if pointer(zdir) != str(root):
        write_atomic(zdir / POINTER_NAME, f"{root}\n".encode("utf-8"))


def is_overlay(path: str) -> bool:
    return os.path.isabs(path) and os.path.isfile(os.path.join(path, "upstream.lock")) \
        and os.path.isdir(os.path.join(path, "patches"))


def pointed_overlay(path: Path) -> str | None:
    """The overlay named by the pointer of the checkout PATH lies in (nested upstreams climb to it), as
    written, whether or not it is still an overlay (is_overlay); None when there is none."""
    from .git import git_dir_of
    for d in (path, *path.parents):
        gd = git_dir_of(d)
        if gd is not None and (gd / "zpatch").is_dir():
            return pointer(gd / "zpatch")
    return None


def load(zdir: Path) -> Record | None:
    check_zdir(zdir)
    path = zdir / RECORD_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise from_oserror(e, "cannot be read", path=path, otherwise=_damaged(path, e.strerror or "unreadable"))
    return parse(path, data)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_copies(zdir: Path, blobs: list[bytes]) -> None:
    """Content-addressed copies: writing one that exists is a no-op, so this is safe to repeat."""
    d = zdir / "patches"
    d.mkdir(parents=True, exist_ok=True)
    wrote = False
    for blob in blobs:
        path = d / digest(blob)
        if not path.is_file():   # the record names it: durable before the record is (0.3 ms a patch here)
            write_atomic(path, blob, sync_folder=False)
            wrote = True
    if wrote:
        sync_dirs([d, zdir])


def copy_path(zdir: Path, ref: PatchRef) -> Path:
    """The stored copy of REF, verified against its sha256 before anyone applies it."""
    path = zdir / "patches" / ref.sha256
    try:
        data = path.read_bytes()
    except OSError as e:
        raise from_oserror(e, "cannot be read", path=path, otherwise=_damaged(path, f"the copy of {ref.name} is missing"))
    if digest(data) != ref.sha256:
        raise _damaged(path, f"the copy of {ref.name} does not match its sha256 (tampered)")
    return path


def collect_garbage(zdir: Path, rec: Record | None) -> None:
    """Drop copies no record refers to (after the journal is gone, so recovery never needs them)."""
    keep = {p.sha256 for u in (rec.upstreams.values() if rec else []) for p in u.patches}
    d = zdir / "patches"
    check_zdir(zdir)
    if d.is_dir():
        for f in d.iterdir():
            if f.name not in keep and f.is_file() and not f.is_symlink():   # only what zpatch could have written
                f.unlink(missing_ok=True)
