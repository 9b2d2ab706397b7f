"""The order of a transaction on disk, read off the real process with strace: a power cut can only
lose what was not yet synced, so each step must be synced before the step that relies on it.

    journal (file, then its folder)      before the first write to a target
    before bytes (git objects, copies)   before the first write to a target
    each written file                    before its rename
    every folder a write or removal touched, and the patch copies the record names
                                         before the commit point is replaced
    the commit point (file, then folder) before the journal is dropped

strace observes; it does not cut power. What the filesystem does with synced data is its promise,
not ours."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.fixtures import LOADER_PY, SD_PY, commit, replace_line

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed (Debian package strace)")

LINE = re.compile(r"^(\d+) +(\w+)\((.*)\) += (-?\d+)")
ARG = re.compile(r'\d+<([^>]*)>|"((?:[^"\\]|\\.)*)"')


@dataclass
class Event:
    pid: int
    call: str
    paths: list[str]


def traced(cwd: Path, *args) -> list[Event]:
    log = cwd / "strace.log"
    r = subprocess.run([STRACE, "-f", "-y", "-qq", "-o", str(log), "-e",
                        "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,link,linkat,mkdir,mkdirat",
                        sys.executable, "-m", "zimage_patcher.cli", *map(str, args)],
                       capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr
    events = []
    for line in log.read_text().splitlines():
        m = LINE.match(line)
        if m and m.group(4) == "0":
            events.append(Event(int(m.group(1)), m.group(2), [a or b for a, b in ARG.findall(m.group(3))]))
    log.unlink()
    return events


def check_order(events: list[Event], root: Path, journal: Path, point: Path, targets: set[str],
                befores: dict[str, Path] | None = None) -> dict:
    """Assert the order above for one transaction under ROOT; TARGETS: the paths (relative to ROOT) it
    writes or removes; BEFORES: target -> the loose object that keeps its bytes before. Returns counts for the caller to check that it saw a real transaction."""
    synced: list[tuple[int, str]] = []          # (index, path) of every fsync
    for i, e in enumerate(events):
        if e.call in ("fsync", "fdatasync"):
            synced.append((i, e.paths[0]))

    def synced_between(path: str, lo: int, hi: int) -> bool:
        return any(lo < i < hi and p == path for i, p in synced)

    j_at = next(i for i, e in enumerate(events) if e.call.startswith("rename") and e.paths[-1] == str(journal))
    p_at = max(i for i, e in enumerate(events)
               if (e.call.startswith("rename") and e.paths[-1] == str(point))
               or (e.call.startswith("unlink") and e.paths and e.paths[-1] == str(point)))
    drop = next(i for i, e in enumerate(events) if e.call.startswith("unlink") and e.paths[-1] == str(journal))
    writes = [(i, e) for i, e in enumerate(events)
              if (e.call.startswith(("rename", "unlink")) and e.paths
                  and os.path.relpath(e.paths[-1], root) in targets)]
    assert writes, "the transaction wrote no target"
    first = writes[0][0]
    assert j_at < first and synced_between(str(journal.parent), j_at, first), "journal not durable before the writes"
    for i, e in writes:
        dst = e.paths[-1]
        if e.call.startswith("rename"):
            assert synced_between(e.paths[0], 0, i), f"{dst}: renamed before its data was synced"
        assert synced_between(str(Path(dst).parent), i, p_at), f"{dst}: its folder not synced before the commit point"
    # folders zpatch created, and the patch copies the record names, are durable before the commit point
    for i, e in enumerate(events[:p_at]):
        if (e.call.startswith("mkdir") and e.paths[-1].startswith(str(root)) and "/objects/" not in e.paths[-1]
                and "/.zpatch/rebase" not in e.paths[-1]):     # a rebase's scratch: nothing rolls back from it
            made = e.paths[-1]
            assert synced_between(str(Path(made).parent), i, p_at), f"{made}: created but its parent never synced"
        if e.call.startswith("rename") and "/.git/zpatch/patches/" in e.paths[-1]:
            assert synced_between(e.paths[0], 0, i) and synced_between(str(Path(e.paths[-1]).parent), i, p_at)
    if point.exists():
        assert synced_between(str(point.with_name(point.name + ".tmp")), 0, p_at), "commit point's data not synced"
    assert synced_between(str(point.parent), p_at, drop), "commit point not durable before the journal is dropped"
    # the before bytes a rollback needs, kept as loose git objects: file and folder synced before the first write
    written = {os.path.relpath(e.paths[-1], root) for _, e in writes}
    for obj in [obj for rel, obj in (befores or {}).items() if rel in written]:
        assert synced_between(str(obj), 0, first) and synced_between(str(obj.parent), 0, first), \
            f"{obj}: a kept before-object not synced before the first write"
    return {"writes": len(writes), "syncs": len(synced)}


@pytest.fixture
def co(world, tmp_path):
    return world.clone_checkout(tmp_path / "co")


def loose_befores(co: Path, targets: set[str]) -> dict[str, Path]:
    """The loose objects that will keep the current bytes of TARGETS (those the store has as loose files)."""
    out = {}
    for rel in sorted(targets):
        path = co / rel
        if not path.is_file():
            continue
        repo = co / "custom_nodes/ComfyUI-GGUF" if rel.startswith("custom_nodes/ComfyUI-GGUF/") else co
        blob = subprocess.run(["git", "hash-object", "--no-filters", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
        obj = repo / ".git/objects" / blob[:2] / blob[2:]
        if obj.is_file():
            out[rel] = obj
    return out


def _targets(co: Path) -> set[str]:
    return {"comfy/sd.py", "custom_nodes/ComfyUI-GGUF/loader.py", "custom_nodes/ComfyUI-GGUF/tokenizer_util.py",
            "custom_nodes/ComfyUI-ZImage-Fix/__init__.py", "custom_nodes/ComfyUI-ZImage-Fix/nodes.py",
            "custom_nodes/ComfyUI-ZImage-Fix/sub/extra.py"}


def test_apply_reapply_and_unapply_sync_each_step_before_the_next(world, co, tmp_path):
    zdir = co / ".git/zpatch"
    args = dict(root=co, journal=zdir / "journal.json", point=zdir / "record.json", targets=_targets(co))
    seen = check_order(traced(tmp_path, "apply", "--overlay", world.overlay, co), **args)
    assert seen["writes"] >= 5
    # the overlay moves on: a re-apply reverses the old patches and writes a new folder
    world.build_overlay(comfy_edits=[("sd: v2", {"comfy/sd.py": replace_line(SD_PY, "line 12 of sd.py\n",
                                                                              "line 12 V2\n")})])
    (world.overlay / "node/ComfyUI-ZImage-Fix/sub").mkdir()
    (world.overlay / "node/ComfyUI-ZImage-Fix/sub/extra.py").write_text("E = 1\n")
    world.relock()
    befores = loose_befores(co, args["targets"])
    assert befores, "a re-apply keeps the patched files, which a scratch apply stored as loose objects"
    check_order(traced(tmp_path, "apply", "--overlay", world.overlay, co), befores=befores, **args)
    assert (co / "custom_nodes/ComfyUI-ZImage-Fix/sub/extra.py").exists()
    befores = loose_befores(co, args["targets"])
    seen = check_order(traced(tmp_path, "unapply", "--overlay", world.overlay, co), befores=befores, **args)
    assert seen["writes"] >= 5 and not (zdir / "record.json").exists()


def test_a_rebase_syncs_the_overlay_before_its_lock(world, tmp_path):
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    ov = world.overlay
    from zimage_patcher.overlay_write import area as _area
    names = {f"patches/comfyui-gguf/{p.name}" for p in (ov / "patches/comfyui-gguf").glob("*.patch")}
    events = traced(tmp_path, "rebase", "--overlay", ov, "comfyui-gguf", "--onto", "main")
    seen = check_order(events, root=ov, journal=_area(ov) / "journal.json", point=ov / "upstream.lock",
                       targets=names)
    assert seen["writes"] == 3      # the three refreshed patches
