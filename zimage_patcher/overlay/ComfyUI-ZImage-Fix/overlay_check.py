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
import shlex
from pathlib import Path

LOG = logging.getLogger("ComfyUI-ZImage-Fix")
# where each upstream of upstream.lock sits in a ComfyUI checkout (a test keeps this in step with it)
UPSTREAM_PATHS = {"comfyui": ".", "comfyui-gguf": "custom_nodes/ComfyUI-GGUF"}


def _git_dir(repo: Path) -> Path | None:
    git = repo / ".git"
    if git.is_dir():
        return git
    if git.is_file():                       # a worktree or submodule: "gitdir: <path>"
        text = git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            path = Path(text[len("gitdir:"):].strip())
            return path if path.is_absolute() else repo / path
    return None


def _blob_id(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def differences(checkout: Path) -> list[str] | None:
    """The files (relative to CHECKOUT) whose bytes are no longer what zpatch applied; None when zpatch
    never applied the overlay here (no record)."""
    git = _git_dir(checkout)
    if git is None:
        return None
    try:
        record = json.loads((git / "zpatch" / "record.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    out = []
    for name, up in sorted((record.get("upstreams") or {}).items()):
        where = UPSTREAM_PATHS.get(name)
        if where is None or not isinstance(up, dict):
            continue
        for rel, blob in sorted((up.get("files") or {}).items()):
            path = checkout / where / rel
            try:
                now = _blob_id(path.read_bytes()) if not path.is_symlink() else "symlink"
            except FileNotFoundError:
                now = None
            except OSError:
                now = "unreadable"
            if now != blob:
                out.append(rel if where == "." else f"{where}/{rel}")
    return out


def warning(checkout: Path) -> str | None:
    """The warning to log, or None when the overlay is in place (or zpatch never applied it here)."""
    found = differences(checkout)
    if not found:
        return None
    co = shlex.quote(str(checkout))
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (f"the Z-Image overlay is no longer in place in {checkout}: {shown} "
            f"{'differs' if len(found) == 1 else 'differ'} from what `zpatch apply` wrote (an update through "
            f"ComfyUI-Manager or git pull?). Gemma 3 GGUF text encoders and 4-D latents into the Wan VAE will "
            f"fail. See `zpatch status {co}`; `zpatch apply {co}` puts the patches back.")


def check_at_start(node_dir: Path) -> None:
    """Log the warning for the checkout this node sits in (<checkout>/custom_nodes/<node>); never raise."""
    try:
        text = warning(Path(node_dir).resolve().parents[1])
    except Exception as e:      # a check that breaks must not break ComfyUI's start
        LOG.debug("ComfyUI-ZImage-Fix: overlay check skipped: %s", e)
        return
    if text:
        LOG.warning("ComfyUI-ZImage-Fix: %s", text)
