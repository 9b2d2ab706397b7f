"""Fault injection: SIGKILL at every write point of apply, re-apply and unapply, kills at random
moments (inside git too), and concurrent runs. After any of them the checkout holds exactly the
state before or the state after (never a mix), the user's own edits survive, and the next command
works. Real processes, real git, real signals."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing import run
from testing.fixtures import SD_PY, gone, replace_line, tree_snapshot
from testing.pause import Held

from zimage_patcher import patchset
from zimage_patcher.workspace import Workspace


def cli(overlay: Path, *args, kill_at: int | None = None) -> subprocess.CompletedProcess:
    return run.zpatch(args[0], "--overlay", overlay, *args[1:], kill_at=kill_at)


def user_edits(co: Path) -> None:
    (co / "nodes.py").write_text("NODES = 'my unrelated edit'\n")
    (co / "my_notes.txt").write_text("keep me\n")
    (co / "custom_nodes/ComfyUI-GGUF/nodes.py").write_text("GGUF = 'mine too'\n")


def recover_only(overlay: Path, co: Path) -> str | None:
    """What the next command does first, and nothing more: take the lock, roll the journal."""
    ws = Workspace.open(patchset.load(overlay, verify_hashes=False), co)
    with ws.locked() as said:
        return said


def prepare(world, tmp_path, op: str) -> tuple[Path, dict, dict]:
    """A checkout in its state before OP, and the snapshots before and after OP."""
    base = world.clone_checkout(tmp_path / "base")
    user_edits(base)
    if op in ("reapply", "unapply"):
        assert cli(world.overlay, "apply", base).returncode == 0
    if op == "reapply":   # the overlay moves on: a patch changes, a node file is added
        world.build_overlay(comfy_edits=[("sd: v2", {"comfy/sd.py": replace_line(
            SD_PY, "line 12 of sd.py\n", "line 12 V2\n")})])
        (world.overlay / "node/ComfyUI-ZImage-Fix/sub").mkdir()
        (world.overlay / "node/ComfyUI-ZImage-Fix/sub/extra.py").write_text("E = 1\n")
        world.relock()
    ref = tmp_path / "ref"
    shutil.copytree(base, ref, symlinks=True)
    r = cli(world.overlay, "unapply" if op == "unapply" else "apply", ref)
    assert r.returncode == 0, r.stderr
    return base, tree_snapshot(base), tree_snapshot(ref)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["apply", "reapply", "unapply"])
def test_kill_at_every_write_point(world, tmp_path, op):
    base, before, after = prepare(world, tmp_path, op)
    command = "unapply" if op == "unapply" else "apply"
    outcomes = {"before": 0, "after": 0}
    n = 0
    while True:
        n += 1
        co = tmp_path / f"trial{n}"
        shutil.copytree(base, co, symlinks=True)
        r = cli(world.overlay, command, co, kill_at=n)
        if r.returncode == 0:          # fewer write points than n: the run completed
            assert tree_snapshot(co) == after
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        st = cli(world.overlay, "status", co, "--json")
        assert st.returncode in (0, 1) and "Traceback" not in st.stderr
        recover_only(world.overlay, co)
        snap = tree_snapshot(co)
        assert snap in (before, after), f"kill at write point {n} left a mixed state"
        outcomes["before" if snap == before else "after"] += 1
        # and the tools carry on: finishing the operation gives exactly the state after
        r = cli(world.overlay, command, co)
        assert r.returncode == 0, r.stderr
        assert tree_snapshot(co) == after
        shutil.rmtree(co)
    assert n > 10, "the operation should have many write points"
    assert outcomes["before"] and outcomes["after"], outcomes   # both sides of the commit point were hit


@pytest.mark.slow
def test_a_killed_recovery_is_recovered_too(world, tmp_path):
    """Kill apply at each write point, then kill the recovery itself: the third run still ends at
    exactly the state after, with no temp file of either killed run left behind (found by an attack)."""
    base, before, after = prepare(world, tmp_path, "apply")
    n = 0
    while True:
        n += 1
        co = tmp_path / f"trial{n}"
        shutil.copytree(base, co, symlinks=True)
        if cli(world.overlay, "apply", co, kill_at=n).returncode == 0:
            break
        for m in (1, 2, 3):
            cli(world.overlay, "apply", co, kill_at=m)
        r = cli(world.overlay, "apply", co)
        assert r.returncode == 0, (n, r.stderr)
        assert tree_snapshot(co) == after, (n, _diff(tree_snapshot(co), after))
        shutil.rmtree(co)
    assert n > 10


def _diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:5]


def test_kills_at_random_moments_including_inside_git(world, tmp_path):
    base, before, after = prepare(world, tmp_path, "apply")
    rng = random.Random(20261126)
    cmd = [sys.executable, "-m", "zimage_patcher.cli", "apply", "--overlay", str(world.overlay)]
    seen = set()
    for trial in range(12):
        co = tmp_path / f"rnd{trial}"
        shutil.copytree(base, co, symlinks=True)
        p = subprocess.Popen([*cmd, str(co)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(0.05, 0.6))
        try:
            os.killpg(p.pid, signal.SIGKILL)      # zpatch and whatever git it is running
        except ProcessLookupError:
            pass
        p.wait()
        gone(p.pid)
        said = recover_only(world.overlay, co)
        snap = tree_snapshot(co)
        assert snap in (before, after), (trial, said, _diff(snap, before), _diff(snap, after))
        seen.add("before" if snap == before else "after")
        assert cli(world.overlay, "apply", co).returncode == 0
        assert tree_snapshot(co) == after
        shutil.rmtree(co)


def test_a_run_in_the_middle_of_its_writes_makes_the_others_wait(world, tmp_path):
    """Deterministic: the first apply is held in the middle of its transaction (its journal written,
    no file yet); three more started meanwhile exit 10, and the result is the first's."""
    base, before, after = prepare(world, tmp_path, "apply")
    co = tmp_path / "held"
    shutil.copytree(base, co, symlinks=True)
    cmd = [sys.executable, "-m", "zimage_patcher.cli", "apply", "--overlay", str(world.overlay), str(co)]
    first = Held(cmd, "journal-written")
    others = [subprocess.run(cmd, capture_output=True, text=True) for _ in range(3)]
    r = first.release()
    assert r.returncode == 0, r.stderr
    for r in others:
        assert r.returncode == 10 and "another zpatch (pid " in r.stderr, r.stderr
    assert tree_snapshot(co) == after


def test_concurrent_runs_never_both_write(world, tmp_path):
    """Free-running: whoever wins, the checkout ends exactly before or after, never a mix."""
    base, before, after = prepare(world, tmp_path, "apply")
    cmd = [sys.executable, "-m", "zimage_patcher.cli"]
    for rnd in range(5):
        co = tmp_path / f"c{rnd}"
        shutil.copytree(base, co, symlinks=True)
        ops = ["apply", "apply", "apply", "unapply"] if rnd % 2 else ["apply"] * 4
        procs = [subprocess.Popen([*cmd, op, "--overlay", str(world.overlay), str(co)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for op in ops]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        for code, err in results:
            assert code in (0, 10), err
            if code == 10:
                assert "another zpatch" in err
        assert any(code == 0 for code, _ in results)
        snap = tree_snapshot(co)
        assert snap in (before, after)
        st = json.loads(cli(world.overlay, "status", co, "--json").stdout)
        if snap == after:   # the record agrees with the files (the user's edits show as foreign)
            assert {p["state"] for u in st["upstreams"] for p in u["patches"]} == {"applied"}
            assert st["node"]["state"] == "installed" and st["interrupted"] is None
        else:   # the checkout is pristine and zpatch knows it: apply works from here
            assert cli(world.overlay, "apply", co).returncode == 0
            assert tree_snapshot(co) == after


@pytest.mark.parametrize("target", ["comfy/sd.py", "custom_nodes/ComfyUI-ZImage-Fix/nodes.py"])
def test_a_file_edited_after_a_kill_is_never_overwritten_and_the_hint_puts_it_back(world, tmp_path, target):
    """Killed mid-apply, then the user edits a file the run had written: the rollback refuses (exit 4),
    keeps the edit, and its hint is a command that restores the bytes from before the run."""
    base, before, after = prepare(world, tmp_path, "apply")
    for n in range(1, 60):
        co = tmp_path / f"trial{n}"
        shutil.copytree(base, co, symlinks=True)
        r = cli(world.overlay, "apply", co, kill_at=n)
        assert r.returncode != 0, "no kill left a written file before the commit point"
        journal = co / ".git/zpatch/journal.json"
        written = [target] if tree_snapshot(co).get(target) != before.get(target) else []
        if journal.exists() and written and not (co / ".git/zpatch/record.json").exists():
            break
        shutil.rmtree(co)
    edited = co / written[0]
    edited.write_text("my edit after the crash\n")
    r = cli(world.overlay, "apply", co)
    assert r.returncode == 4 and f"{edited}: changed after `zpatch apply`" in r.stderr, r.stderr
    assert edited.read_text() == "my edit after the crash\n" and journal.exists()
    hint = next(l for l in r.stderr.splitlines() if l.startswith("hint:"))
    command = hint.split("then ", 1)[1].rsplit(" and rerun", 1)[0]
    subprocess.run(command, shell=True, check=True)          # the user follows the hint
    r = cli(world.overlay, "apply", co)
    assert r.returncode == 0, r.stderr
    assert tree_snapshot(co) == after


@pytest.mark.slow
def test_a_run_killed_before_its_journal_leaves_no_litter_for_the_opposite_command(world, tmp_path):
    """Found by an attack: apply killed before its journal existed, then unapply ("nothing to do"),
    left `.git/zpatch/*.tmp` behind; and the other way round."""
    base, before, after = prepare(world, tmp_path, "apply")
    for first, then in (("apply", "unapply"), ("unapply", "apply")):
        for n in range(1, 12):
            co = tmp_path / f"{first}{n}"
            shutil.copytree(base, co, symlinks=True)
            if first == "unapply":
                assert cli(world.overlay, "apply", co).returncode == 0
            if cli(world.overlay, first, co, kill_at=n).returncode == 0:
                break
            assert cli(world.overlay, then, co).returncode == 0
            litter = [p for p in (co / ".git/zpatch").rglob("*") if p.name.endswith(".tmp") or "zpatch-tmp" in p.name]
            litter += [p for p in co.rglob("*.zpatch-tmp-*")]
            assert not litter, (first, n, litter)
            shutil.rmtree(co)
