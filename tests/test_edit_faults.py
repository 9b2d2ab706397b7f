"""Entering and leaving edit mode killed at every write and git step (edit_mode.py's promise): after
any kill, `edit` gives exactly the edit mode an uninterrupted run makes and `unapply` goes back to
the pins; unexported commits are never dropped by a plain `unapply`, and the hint it gives, run
literally, keeps them. Real processes, real SIGKILLs, real git."""
from __future__ import annotations

import shlex
import shutil
import signal
import subprocess

from pathlib import Path

import pytest

from testing import run
from testing.fixtures import HEADERS, error_line, git

REPOS = (".", "custom_nodes/ComfyUI-GGUF")


def cli(overlay: Path, *args, kill_at: int) -> subprocess.CompletedProcess:
    return run.zpatch(args[0], "--overlay", overlay, *args[1:], kill_at=kill_at)


def state(co: Path) -> dict:
    """What edit mode is made of, per repository, plus every work-tree file: HEAD (branch or detached),
    the branch, refs/zpatch/*, the notes (their text per commit: the notes ref's own commit carries a
    clock), notes.rewriteRef, and git status."""
    out: dict = {}
    for p in sorted(co.rglob("*")):
        parts = p.relative_to(co).parts
        if ".git" not in parts and p.is_file():
            out[p.relative_to(co).as_posix()] = p.read_bytes()
    for r in REPOS:
        repo = co / r
        refs = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=repo).splitlines()
        notes = git("notes", "--ref=refs/notes/zpatch", "list", cwd=repo, check=False).split("\n")
        out[r] = {
            "head": (repo / ".git/HEAD").read_text().strip(),
            "refs": [x for x in refs if not x.startswith("refs/notes/")],
            "has_notes": any(x.startswith("refs/notes/zpatch ") for x in refs),
            "notes": sorted((c, git("cat-file", "blob", b, cwd=repo)) for b, c in (n.split() for n in notes if n)),
            "rewrite": git("config", "--get-all", "notes.rewriteRef", cwd=repo, check=False),
            "status": git("status", "--porcelain", cwd=repo),
        }
    return out


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


@pytest.fixture
def states(world, zpatch, checkout, tmp_path):
    """The state before edit (a user's plain clones at the pins) and after an uninterrupted edit."""
    before = state(checkout)
    ref = copy(checkout, tmp_path / "ref")
    zpatch("edit", ref)
    after = state(ref)
    for r in REPOS:
        assert after[r]["head"] == "ref: refs/heads/zpatch/edit" and after[r]["has_notes"] and after[r]["rewrite"]
        assert any(x.startswith("refs/zpatch/base ") for x in after[r]["refs"])
        assert any(x.startswith("refs/zpatch/overlay ") for x in after[r]["refs"])
        assert not before[r]["has_notes"] and not before[r]["rewrite"]
    assert [len(after[r]["notes"]) for r in REPOS] == [1, 3]        # one commit per patch, each named
    return before, after


@pytest.mark.slow
def test_kill_edit_at_every_point_then_edit_or_unapply_finishes(world, zpatch, checkout, states, tmp_path):
    before, after = states
    n = 0
    while True:
        n += 1
        co = copy(checkout, tmp_path / f"e{n}")
        r = cli(world.overlay, "edit", co, kill_at=n)
        if r.returncode == 0:
            assert state(co) == after
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        other = copy(co, tmp_path / f"u{n}")
        # the next edit finishes it (killed after its last step, it is done: edit says so, as after any edit)
        if state(co) == after:
            assert "already in edit mode" in error_line(zpatch("edit", co, expect=4))
        else:
            zpatch("edit", co)
        assert state(co) == after, n
        # or unapply undoes it, and edit works again after
        zpatch("unapply", other)
        assert state(other) == before, n
        zpatch("edit", other)
        assert state(other) == after, n
        shutil.rmtree(co)
        shutil.rmtree(other)
    assert n > 8, "edit has a point after each ref, note, config and switch"


@pytest.mark.slow
def test_kill_edit_of_an_applied_checkout_then_edit_finishes(world, zpatch, checkout, states, tmp_path):
    """From an applied checkout edit unapplies first (a journaled transaction), then enters."""
    before, after = states
    zpatch("apply", checkout)
    n = 0
    interrupted_seen = False
    while True:
        n += 1
        co = copy(checkout, tmp_path / f"e{n}")
        r = cli(world.overlay, "edit", co, kill_at=n)
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        st = zpatch.json("status", co, expect=None)
        if st["interrupted"]:      # killed in its unapply: named as edit, whose rerun status offers
            assert st["interrupted"]["op"] == "edit" and any(f"`zpatch edit --overlay {world.overlay} {co}` again"
                                                              in a for a in st["advice"]), st
            interrupted_seen = True
        if state(co) != after:
            zpatch("edit", co)
        assert state(co) == after, n
        shutil.rmtree(co)
    assert n > 15 and interrupted_seen


@pytest.fixture
def exported(world, zpatch, checkout, states):
    """CHECKOUT in edit mode with nothing to export."""
    zpatch("edit", checkout)
    assert zpatch.json("export", checkout)["changed"] is False
    assert state(checkout) == states[1]
    return checkout


@pytest.mark.slow
def test_kill_unapply_leaving_edit_mode_at_every_point(world, zpatch, exported, states, tmp_path):
    before, after = states
    n = 0
    while True:
        n += 1
        co = copy(exported, tmp_path / f"l{n}")
        r = cli(world.overlay, "unapply", co, kill_at=n)
        if r.returncode == 0:
            assert state(co) == before
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        other = copy(co, tmp_path / f"m{n}")
        zpatch("unapply", co)        # finishes: at the pins, no branch, no refs/zpatch/*, no notes, no config
        assert state(co) == before, n
        zpatch("edit", co)
        assert state(co) == after, n
        # edit instead: it completes edit mode again, or (all still in it) says so, and unapply still works
        r = zpatch("edit", other, expect=None)
        if r.exit_code == 0:
            assert state(other) == after, n
        else:
            assert "already in edit mode" in error_line(r), r.output
            zpatch("unapply", other)
            assert state(other) == before, n
        shutil.rmtree(co)
        shutil.rmtree(other)
    assert n > 8


def _work(co: Path) -> None:
    """Commits that are not exported: ComfyUI's patch amended, a new commit in ComfyUI-GGUF."""
    (co / "comfy/sd.py").write_text((co / "comfy/sd.py").read_text().replace("line 11 of sd.py", "line 11 AMENDED"))
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=co)
    g = co / "custom_nodes/ComfyUI-GGUF"
    (g / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=g)


def _kept(repo: Path) -> bool:
    """REPO's edit branch still holds the unexported work."""
    return git("rev-parse", "-q", "--verify", "refs/heads/zpatch/edit", cwd=repo, check=False) != ""


def _run_hint(zp, hint: str) -> None:
    """Run the commands of the hint's 'keep them' part, in order, exactly as written."""
    keep = hint.split("; or drop them", 1)[0]
    for cmd in keep.split("`")[1::2]:
        argv = shlex.split(cmd)
        if argv[0] == "zpatch":
            zp(*argv[1:])
        else:
            assert argv[:2] == ["git", "-C"] and argv[3] == "switch", argv
            git(*argv[1:])


@pytest.mark.slow
def test_kill_unapply_discard_with_unexported_work(world, zpatch, checkout, states, tmp_path):
    before, after = states
    zpatch("edit", checkout)
    _work(checkout)
    r = zpatch("unapply", checkout, expect=4)
    assert "not exported" in error_line(r)
    n = 0
    saved = 0
    while True:
        n += 1
        co = copy(checkout, tmp_path / f"d{n}")
        r = cli(world.overlay, "unapply", "--discard", co, kill_at=n)
        if r.returncode == 0:
            assert state(co) == before
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        other = copy(co, tmp_path / f"k{n}")
        zpatch("unapply", "--discard", co)          # what was begun, finished
        assert state(co) == before, n
        # a plain unapply never drops what is left of the work: it refuses, and its hint keeps it
        kept = {r: _kept(other / r) for r in REPOS}
        zp = type(zpatch)(copy(world.overlay, tmp_path / f"ov{n}"))   # the export writes this copy
        r = zp("unapply", other, expect=None)
        if any(kept.values()):
            assert r.exit_code == 4 and "not exported" in error_line(r), (n, r.output)
            _run_hint(zp, next(l for l in r.stderr.splitlines() if l.startswith("hint: ")))
            zp("unapply", other)
            saved += 1
            comfy = (zp.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch").read_text()
            assert ("line 11 AMENDED" in comfy) == kept["."], n
            gguf = (zp.overlay / "patches/comfyui-gguf/series").read_text().split()
            assert ("0004-nodes-bump.patch" in gguf) == kept["custom_nodes/ComfyUI-GGUF"], (n, gguf)
            assert zp.json("check")["clean"]
        else:
            assert r.exit_code == 0, r.output
        assert state(other)["."]["refs"] == before["."]["refs"] and not state(other)["."]["has_notes"]
        shutil.rmtree(co)
        shutil.rmtree(other)
    assert n > 8 and saved


@pytest.mark.parametrize("how", ["half-left", "half-made"])
def test_status_reports_an_interrupted_edit_mode_and_its_advice_finishes_it(world, zpatch, checkout, how):
    """Found by the kill tests: status raised on a half-left edit mode (HEAD back on the pin, the branch
    still there). It reports it, exits 1, and `zpatch unapply` (its advice) finishes it."""
    zpatch("edit", checkout)
    g = checkout / "custom_nodes/ComfyUI-GGUF"
    git("switch", "-q", "--detach", world.gguf_pin, cwd=g)          # as `unapply` killed after its first step
    if how == "half-made":
        git("branch", "-D", "zpatch/edit", cwd=g)                   # as `edit` killed before its branch
    res = zpatch.json("status", checkout, expect=1)
    u = next(u for u in res["upstreams"] if u["name"] == "comfyui-gguf")
    assert u["edit"]["interrupted"] is True and u["edit"]["exported"] is False
    text = zpatch("status", checkout, expect=1).output
    assert "zpatch export" not in text and "zpatch apply" not in text     # both refuse a half-made edit mode
    advice = next(x for x in text.splitlines() if "finishes leaving it" in x).split("`")
    assert advice[3].startswith("zpatch unapply") and advice[4].startswith(" finishes leaving it")
    r = run.follow(advice[3], checkout.parent, world.env)      # run literally: the advice names the overlay
    assert r.returncode == 0, r.stdout + r.stderr
    assert git("rev-parse", "HEAD", cwd=g) == world.gguf_pin
    assert git("for-each-ref", "refs/zpatch", "refs/heads/zpatch", cwd=g) == ""
    assert zpatch.json("status", checkout, expect=1)["upstreams"][1].get("edit") is None


def test_export_on_a_half_made_edit_mode_says_how_to_finish_it_and_that_works(world, zpatch, checkout, tmp_path):
    """A second trial: export on an edit interrupted before its branch hinted `git switch zpatch/edit`,
    which fails: there is no such branch yet."""
    zpatch("edit", checkout)
    g = checkout / "custom_nodes/ComfyUI-GGUF"
    git("switch", "-q", "--detach", world.gguf_pin, cwd=g)
    git("branch", "-D", "zpatch/edit", cwd=g)                       # as `edit` killed before its branch
    r = zpatch("export", checkout, expect=4)
    assert "half made" in error_line(r) and "switch" not in r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1]
    done = run.follow(hint, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    u = zpatch.json("status", checkout)["upstreams"][1]
    assert u["edit"]["interrupted"] is False and u["edit"]["exported"] is True
