# ComfyUI-ZImage-Fix: is the Z-Image overlay still in place? Checked when ComfyUI imports the node.
# Copyright (C) 2026 zimage-patcher maintainers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compare the files zpatch patched in this ComfyUI checkout with its record of the last apply
(`.git/zpatch/record.json`): an update through ComfyUI-Manager or `git pull` that reverts or stashes
the patches makes Gemma 3 GGUF text encoders fail to load later, far from the cause. Read-only, no
git process, a few file reads and hashes; it never raises (ComfyUI must start whatever it finds)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import stat
import time
from pathlib import Path

LOG = logging.getLogger("ComfyUI-ZImage-Fix")
# where each upstream of upstream.lock sits in a ComfyUI checkout (a test keeps this in step with it)
UPSTREAM_PATHS = {"comfyui": ".", "comfyui-gguf": "custom_nodes/ComfyUI-GGUF"}
# Bounds, so that no file found here can hold ComfyUI's start: what zpatch writes is far smaller
# (a record of a few kB, patched sources under 1 MB); past them the check gives up and says nothing.
RECORD_LIMIT = 4 << 20
FILE_LIMIT = 16 << 20
MAX_FILES = 1000
DEADLINE = 0.5            # seconds


class _GiveUp(Exception):
    """The record or a file is not what zpatch writes: no answer (never a warning on bad grounds)."""


def _read(path: Path, limit: int) -> bytes | None:
    """PATH's bytes when it is a regular file of at most LIMIT bytes; None when it is not there. Opened
    without following a last symlink and without blocking (a FIFO or a device is refused before any
    read can hang); anything else odd raises _GiveUp."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _GiveUp(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise _GiveUp(f"{path}: not a regular file of at most {limit} bytes")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise _GiveUp(f"{path}: grew past {limit} bytes")
        return data
    finally:
        os.close(fd)


def _git_dir(repo: Path) -> Path | None:
    git = repo / ".git"
    if git.is_dir():
        return git
    if git.is_file():                       # a worktree or submodule: "gitdir: <path>"
        text = (_read(git, 4096) or b"").decode("utf-8", "replace").strip()
        if text.startswith("gitdir:"):
            path = Path(text[len("gitdir:"):].strip())
            return path if path.is_absolute() else repo / path
    return None


def _blob_id(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def _current(checkout: Path, rel: str) -> str | None:
    """The blob id of CHECKOUT/REL now; None when it is not there. zpatch writes regular files through
    real folders only, so a symlink anywhere on the way, or anything but a regular file at the end, is
    a change, answered without following or opening it (a device is never opened)."""
    path = checkout
    for part in rel.split("/"):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return "symlink"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    data = _read(path, FILE_LIMIT)
    return None if data is None else _blob_id(data)


def _inside(rel: str) -> bool:
    """REL names a file inside its upstream's folder, as zpatch records them (status refuses others)."""
    parts = rel.split("/")
    return bool(rel) and "\0" not in rel and not rel.startswith("/") and ".." not in parts and "" not in parts


def differences(checkout: Path) -> list[str] | None:
    """The files (relative to CHECKOUT) whose bytes are no longer what zpatch applied; None when zpatch
    never applied the overlay here (no record) or the record is not one zpatch wrote."""
    try:
        return _differences(checkout)
    except _GiveUp as e:
        LOG.debug("ComfyUI-ZImage-Fix: overlay check gave up: %s", _shown(str(e))[:300])
        return None


def _differences(checkout: Path) -> list[str] | None:
    t0 = time.monotonic()
    git = _git_dir(checkout)
    if git is None:
        return None
    data = _read(git / "zpatch" / "record.json", RECORD_LIMIT)
    if data is None:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _GiveUp("record.json is not JSON") from None
    ups = record.get("upstreams") if isinstance(record, dict) else None
    if not isinstance(ups, dict):
        raise _GiveUp("record.json has no upstreams")
    out, seen = [], 0
    for name, up in sorted(ups.items()):
        where = UPSTREAM_PATHS.get(name)
        files = up.get("files") if isinstance(up, dict) else None
        if where is None or not isinstance(files, dict):
            continue
        for rel, blob in sorted(files.items()):
            seen += 1
            if seen > MAX_FILES:
                raise _GiveUp(f"record.json lists more than {MAX_FILES} files")
            if not _inside(rel) or not isinstance(blob, str):
                raise _GiveUp(f"record.json lists {_shown(repr(rel))[:200]}")
            if time.monotonic() - t0 > DEADLINE:
                raise _GiveUp("out of time")
            try:
                now = _current(checkout, f"{where}/{rel}" if where != "." else rel)
            except (_GiveUp, OSError, ValueError):     # unreadable, or a name no file system takes
                now = "not a file zpatch wrote"
            if now != blob:
                out.append(rel if where == "." else f"{where}/{rel}")
    return out


def _shown(text: str) -> str:
    """TEXT safe for a log line and a terminal: control characters and undecodable bytes escaped."""
    return "".join(c if c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF else
                   (f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("unicode_escape").decode())
                   for c in text)


def _quoted(path: Path) -> str:
    """PATH as a shell word that a paste gives back exactly: shlex's quoting, or bash's $'...' with
    \\xNN escapes for a path with control characters or bytes that are not UTF-8."""
    text = str(path)
    if text.isprintable() and _shown(text) == text:
        return shlex.quote(text)
    return "$'" + "".join(chr(b) if 32 <= b < 127 and chr(b) not in "\\'" else f"\\x{b:02x}"
                          for b in os.fsencode(text)) + "'"


def warning(checkout: Path) -> str | None:
    """The warning to log, or None when the overlay is in place (or zpatch never applied it here)."""
    found = differences(checkout)
    if not found:
        return None
    co = _quoted(checkout)
    shown = ", ".join(map(_shown, found[:5])) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (f"the Z-Image overlay is no longer in place in {_shown(str(checkout))}: {shown} "
            f"{'differs' if len(found) == 1 else 'differ'} from what `zpatch apply` wrote (an update through "
            f"ComfyUI-Manager or git pull?). Gemma 3 GGUF text encoders and 4-D latents into the Wan VAE will "
            f"fail. `zpatch status {co}` names what changed and how to put the patches back; after a plain "
            f"revert that is `zpatch apply {co}`.")


def check_at_start(node_dir: Path) -> None:
    """Log the warning for the checkout this node sits in (<checkout>/custom_nodes/<node>); never raise."""
    try:
        # as ComfyUI found the node (custom_nodes/<node>), not where a linked node folder really lies
        text = warning(Path(os.path.abspath(node_dir)).parents[1])
        if text:
            LOG.warning("ComfyUI-ZImage-Fix: %s", text)
    except Exception as e:      # a check that breaks (or a log handler that does) must not break ComfyUI's start
        try:
            LOG.debug("ComfyUI-ZImage-Fix: overlay check skipped: %s", _shown(str(e))[:300])
        except Exception:       # noqa: BLE001
            pass
