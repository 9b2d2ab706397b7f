"""The overlay's one front door (overlay_write.py) under attack: export and lock killed at every write
point and git step, two writers at once each held at its worst moment, an export from a stale edit
branch, and an overlay whose folders are links. Real processes, real git, real signals."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from testing import run as testing_run
from testing.fixtures import error_line, git, overlay_snapshot
from testing.pause import Held, zpatch_cmd

HEADERS = "\n\nOrigin: vendor\nForwarded: no\nLast-Update: 2026-12-03\nUpstream-License: test"


def gguf(co):
    return co / "custom_nodes/ComfyUI-GGUF"


def run(overlay, *args, kill_at=None, cwd=None) -> subprocess.CompletedProcess:
    return testing_run.zpatch(args[0], "--overlay", overlay, *args[1:], kill_at=kill_at, cwd=cwd)


def snap(root) -> dict:
    """Every file of the overlay at ROOT but zpatch's own write state (.zpatch/: lock, journal)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".zpatch" not in p.relative_to(root).parts}


def edit_with_every_kind_of_change(overlay, co) -> None:
    """CO in edit mode with a changed patch, a new one and a dropped one (series, lock and files move)."""
    assert run(overlay, "edit", co).returncode == 0
    g = gguf(co)
    (g / "loader.py").write_text((g / "loader.py").read_text().replace("loader line 36\n", "loader line 36 amended\n"))
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    (g / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=g)
    base = git("rev-parse", "refs/zpatch/base", cwd=g)
    c1, c2 = git("rev-list", "--reverse", f"{base}..HEAD", cwd=g).split()[:2]
    git("rebase", "-q", "--onto", c1, c2, cwd=g)       # drops patch 2; notes follow (notes.rewriteRef)


@pytest.fixture
def edited(world, checkout, tmp_path):
    """The overlay and a checkout in edit mode with changes to export, plus the overlay an uninterrupted
    export leaves (made on copies)."""
    assert run(world.overlay, "lock").returncode == 0        # the lock as zpatch writes it, not as the fixture did
    edit_with_every_kind_of_change(world.overlay, checkout)
    ov, co = tmp_path / "ref-overlay", tmp_path / "ref-checkout"
    shutil.copytree(world.overlay, ov)
    shutil.copytree(checkout, co, symlinks=True)
    r = run(ov, "export", co)
    assert r.returncode == 0, r.stderr
    return snap(world.overlay), snap(ov)


def _trial(world, checkout, tmp_path, n):
    ov, co = tmp_path / f"ov{n}", tmp_path / f"co{n}"
    shutil.copytree(world.overlay, ov)
    shutil.copytree(checkout, co, symlinks=True)
    return ov, co


@pytest.mark.slow
@pytest.mark.parametrize("next_command", ["export", "lock"])
def test_export_killed_at_every_write_and_git_step_is_finished_by_the_next_writer(world, checkout, tmp_path,
                                                                                edited, next_command):
    before, after = edited
    outcomes = set()
    n = 0
    while True:
        n += 1
        ov, co = _trial(world, checkout, tmp_path, n)
        r = run(ov, "export", co, kill_at=n)
        if r.returncode == 0:
            assert snap(ov) == after
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        # a reader sees the interruption and does not send the user to bless or undo it by hand
        ck = run(ov, "check", "--json", "--no-apply")
        assert "Traceback" not in ck.stderr
        for p in json.loads(ck.stdout)["problems"]:
            assert "finishes or rolls back" in (p["hint"] or ""), (n, p)
        r = run(ov, next_command, *([co] if next_command == "export" else []))
        assert r.returncode == 0, (n, r.stderr)
        now = snap(ov)
        assert now in (before, after), f"kill at point {n} left a mix"
        outcomes.add("before" if now == before else "after")
        assert not [k for k in now if k.endswith(".tmp") or ".zpatch-tmp" in k]
        if next_command == "lock":
            assert "up to date" in r.stdout      # the lock it found matched the files: nothing to bless
            r = run(ov, "export", co)
            assert r.returncode == 0, (n, r.stderr)
        assert snap(ov) == after
        # and the checkout agrees: nothing left to export, edit mode can be left
        assert json.loads(run(ov, "export", co, "--check", "--json").stdout)["changed"] is False
        shutil.rmtree(ov)
        shutil.rmtree(co)
    assert n > 10, n
    if next_command == "lock":     # lock changes nothing itself: it shows which side each kill fell on
        assert outcomes == {"before", "after"}, outcomes


def test_lock_killed_at_every_write_point_leaves_the_old_or_the_new_lock(world, tmp_path):
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_bytes(p.read_bytes().replace(b"Last-Update:", b"X-Reviewed: yes\nLast-Update:", 1))
    before = snap(world.overlay)
    ref = tmp_path / "ref"
    shutil.copytree(world.overlay, ref)
    assert run(ref, "lock").returncode == 0
    after = snap(ref)
    assert after != before
    n = 0
    while True:
        n += 1
        ov = tmp_path / f"ov{n}"
        shutil.copytree(world.overlay, ov)
        r = run(ov, "lock", kill_at=n)
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL
        # the lock is one file, written by rename (a kill may leave its temp file, until the next command)
        assert {k: v for k, v in snap(ov).items() if not k.endswith(".tmp")} in (before, after)
        assert run(ov, "lock").returncode == 0 and snap(ov) == after
        shutil.rmtree(ov)
    assert n > 2


# ---------------------------------------------------------------- two writers at once

def test_export_held_before_its_writes_makes_a_second_export_and_a_rebase_wait(world, checkout, tmp_path, edited):
    before, after = edited
    with Held(zpatch_cmd(world.overlay, "export", checkout), "overlay-planned") as first:
        for args in (("export", checkout), ("rebase", "comfyui-gguf", "--onto", "main"), ("lock",),
                     ("edit", checkout)):
            r = run(world.overlay, *args)
            assert r.returncode == 10 and "is writing this overlay" in error_line(r), (args, r.stderr)
        assert snap(world.overlay) == before       # planned, nothing written yet
        done = first.release()
    assert done.returncode == 0, done.stderr
    assert snap(world.overlay) == after


def test_a_rebase_that_finishes_first_is_never_undone_by_an_export_planned_before_it(world, checkout, tmp_path):
    """The race of the review: an export is planned while a rebase completes. Writers read the overlay
    under the lock, so the export waits (exit 10), and afterwards refuses: its branch starts at the old pin."""
    from testing.fixtures import commit
    run(world.overlay, "edit", checkout)
    g = gguf(checkout)
    (g / "loader.py").write_text((g / "loader.py").read_text() + "# more\n")
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    with Held(zpatch_cmd(world.overlay, "rebase", "comfyui-gguf", "--onto", "main"), "overlay-planned") as rb:
        r = run(world.overlay, "export", checkout)
        assert r.returncode == 10, r.stderr
        r = run(world.overlay, "lock")
        assert r.returncode == 10, r.stderr
        assert rb.release().returncode == 0
    rebased = snap(world.overlay)
    assert b"" + world.gguf_pin.encode() not in rebased["upstream.lock"]
    r = run(world.overlay, "export", checkout)
    assert r.returncode == 4 and "the pin moved" in r.stderr, r.stderr
    r = run(world.overlay, "lock")
    assert r.returncode == 0 and "up to date" in r.stdout       # never the old pin written back
    assert snap(world.overlay) == rebased


def test_lock_held_before_it_reads_makes_a_rebase_wait_and_then_sees_it(world, tmp_path):
    from testing.fixtures import commit
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    with Held(zpatch_cmd(world.overlay, "lock"), "overlay-held") as lk:
        r = run(world.overlay, "rebase", "comfyui-gguf", "--onto", "main")
        assert r.returncode == 10, r.stderr
        assert lk.release().returncode == 0
    assert run(world.overlay, "rebase", "comfyui-gguf", "--onto", "main").returncode == 0
    rebased = snap(world.overlay)
    with Held(zpatch_cmd(world.overlay, "lock"), "overlay-held") as lk:
        done = lk.release()
    assert done.returncode == 0 and "up to date" in done.stdout
    assert snap(world.overlay) == rebased


def test_two_checkouts_exporting_in_turn_never_revert_each_other(world, tmp_path):
    """Like `git push`: the second export finds the overlay moved since its `edit` and refuses; its hint,
    followed literally, keeps its commits on a saved branch and starts edit mode on the new overlay."""
    a = world.clone_checkout(tmp_path / "A")
    b = world.clone_checkout(tmp_path / "B")
    assert run(world.overlay, "edit", a).returncode == 0
    assert run(world.overlay, "edit", b).returncode == 0
    ga, gb = gguf(a), gguf(b)
    (ga / "loader.py").write_text((ga / "loader.py").read_text().replace("loader line 36\n", "loader line 36 A\n"))
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=ga)
    (gb / "loader.py").write_text((gb / "loader.py").read_text().replace("loader line 2\n", "loader line 2 B\n"))
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=gb)
    assert run(world.overlay, "export", a).returncode == 0
    exported_a = snap(world.overlay)
    b_tip = git("rev-parse", "HEAD", cwd=gb)
    r = run(world.overlay, "export", b)
    assert r.returncode == 5, r.stderr
    assert "changed in the overlay since `zpatch edit`" in error_line(r)
    assert snap(world.overlay) == exported_a                       # A's work is still there
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    keep = hint.split("save your branches and edit again: ", 1)[1].split(" (then cherry-pick", 1)[0]
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"     # zpatch as installed
    done = subprocess.run(keep, shell=True, capture_output=True, text=True, cwd=world.overlay,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 0, (keep, done.stderr)
    # nothing lost: B's commit is on the saved branch; edit mode now starts from A's export
    saved = [ln.strip() for ln in git("branch", "--list", "zpatch-saved-*", cwd=gb).splitlines()]
    assert len(saved) == 1 and git("rev-parse", saved[0], cwd=gb) == b_tip
    assert "loader line 36 A" in (gb / "loader.py").read_text()
    assert run(world.overlay, "export", b, "--check", "--json").returncode == 0
    # --force writes B's branch over A's change, when that is what the maintainer wants
    c = world.clone_checkout(tmp_path / "C")
    assert run(world.overlay, "edit", c).returncode == 0
    assert run(world.overlay, "export", a).returncode == 0            # A again: nothing new
    (ga / "nodes.py").write_text("GGUF = 3\n")
    git("commit", "-q", "-a", "-m", "nodes: three" + HEADERS, cwd=ga)
    assert run(world.overlay, "export", a).returncode == 0
    gc = gguf(c)
    (gc / "nodes.py").write_text("GGUF = 4\n")
    git("commit", "-q", "-a", "-m", "nodes: four" + HEADERS, cwd=gc)
    assert run(world.overlay, "export", c).returncode == 5
    r = run(world.overlay, "export", c, "--force")
    assert r.returncode == 0, r.stderr
    series = (world.overlay / "patches/comfyui-gguf/series").read_text()
    assert "nodes-four" in series and "nodes-three" not in series


def test_an_export_whose_result_is_already_the_overlay_is_not_refused(world, tmp_path, monkeypatch):
    """Two checkouts made the same change (same author, date, message): whichever exports second finds
    its own result in the overlay; that is no conflict, and its edit base catches up."""
    for k in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        monkeypatch.setenv(k, "2026-12-03T00:00:00Z")
    a = world.clone_checkout(tmp_path / "A")
    b = world.clone_checkout(tmp_path / "B")
    for co in (a, b):
        assert run(world.overlay, "edit", co).returncode == 0
        g = gguf(co)
        (g / "nodes.py").write_text("GGUF = 2\n")
        git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=g)
    assert run(world.overlay, "export", a).returncode == 0
    exported = snap(world.overlay)
    r = run(world.overlay, "export", b, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["changed"] is False, r.stderr
    assert snap(world.overlay) == exported
    assert run(world.overlay, "unapply", b).returncode == 0     # nothing unexported: edit mode can be left


# ---------------------------------------------------------------- the overlay's folders are plain

@pytest.mark.parametrize("link", ["patches", "patches/comfyui-gguf"])
def test_a_linked_folder_in_the_overlay_is_refused_by_check_and_by_every_writer(world, checkout, tmp_path, link):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(world.overlay / link, elsewhere)
    (world.overlay / link).symlink_to(elsewhere, target_is_directory=True)
    outside = snap(elsewhere)
    r = run(world.overlay, "check", "--no-apply", "--json")
    res = json.loads(r.stdout)
    assert r.returncode == 1 and any("is a symlink" in p["message"] for p in res["problems"]), res
    edit_with_every_kind_of_change_ok = run(world.overlay, "edit", checkout)
    assert edit_with_every_kind_of_change_ok.returncode == 3, edit_with_every_kind_of_change_ok.stderr
    for args in (("lock",), ("export", checkout), ("rebase", "comfyui-gguf", "--onto", "main")):
        r = run(world.overlay, *args)
        assert r.returncode == 3 and "is a symlink" in error_line(r), (args, r.stderr)
    assert snap(elsewhere) == outside


def test_a_writer_refuses_a_half_written_journal_it_cannot_read(world, tmp_path):
    """A damaged journal is named with the way out, and nothing is written."""
    from zimage_patcher.overlay_write import journal
    j = journal(world.overlay)
    j.parent.mkdir(parents=True, exist_ok=True)
    j.write_text("{not json")
    before = overlay_snapshot(world)
    r = run(world.overlay, "lock")
    assert r.returncode == 4 and "journal" in error_line(r) and str(j) in r.stderr
    assert overlay_snapshot(world) == before


def test_writers_with_other_caches_still_meet_at_the_overlay(world, checkout, tmp_path, edited):
    """Found by an attack: the lock and journal lived in the cache, keyed by the overlay's path, so a
    writer with another cache (sudo, a container, another HOME) neither waited nor saw a killed write."""
    before, after = edited
    other = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "other-xdg"), "ZPATCH_CACHE": str(tmp_path / "other")}
    with Held(zpatch_cmd(world.overlay, "export", checkout), "overlay-planned") as first:
        r = testing_run.zpatch("lock", "--overlay", world.overlay, env=other)
        assert r.returncode == 10 and "is writing this overlay" in r.stderr, r.stderr
        assert first.release().returncode == 0
    assert snap(world.overlay) == after
    # a killed write is found by a writer with another cache, and finished before anything else
    ov, co = _trial(world, checkout, tmp_path, "k")
    shutil.rmtree(ov)
    shutil.copytree(world.overlay, ov)
    p = ov / "patches/comfyui-gguf/0001-loader-gemma3.patch"          # an intended hand edit to lock
    p.write_bytes(p.read_bytes().replace(b"Last-Update:", b"X-Reviewed: yes\nLast-Update:", 1))
    ref = tmp_path / "ref"
    shutil.copytree(ov, ref)
    assert run(ref, "lock").returncode == 0
    journaled = 0
    for n in range(1, 40):
        trial = tmp_path / f"killed{n}"
        shutil.copytree(ov, trial)
        r = run(trial, "lock", kill_at=n)
        if r.returncode == 0:
            break
        journaled += (trial / ".zpatch/journal.json").exists()
        r = testing_run.zpatch("lock", "--overlay", trial, env=other)
        assert r.returncode == 0 and snap(trial) == snap(ref), (n, r.stderr)
        assert not (trial / ".zpatch/journal.json").exists()
    assert journaled, "no kill left a journal for the other cache's writer to find"


def test_export_keeps_the_series_comments_and_refuses_a_mode_change(world, checkout):
    """Found by an attack: any change of the list re-rendered the series without its comments; a chmod
    commit exported to a patch that check and apply then refused."""
    s = world.overlay / "patches/comfyui-gguf/series"
    s.write_text("# keep first: PR 123\n" + s.read_text().replace("0002-loader-tokenizer.patch\n",
                                                                  "0002-loader-tokenizer.patch  # needs 0001\n"))
    assert run(world.overlay, "lock").returncode == 0
    assert run(world.overlay, "edit", checkout).returncode == 0
    g = gguf(checkout)
    (g / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=g)
    assert run(world.overlay, "export", checkout).returncode == 0
    text = s.read_text()
    assert text.startswith("# keep first: PR 123\n") and "0002-loader-tokenizer.patch  # needs 0001\n" in text
    assert text.rstrip().endswith("nodes-bump.patch")
    before = snap(world.overlay)
    os.chmod(g / "loader.py", 0o755)
    git("commit", "-q", "-a", "-m", "chmod" + HEADERS, cwd=g)
    r = run(world.overlay, "export", checkout)
    assert r.returncode == 4 and "mode 100755" in error_line(r), r.stderr
    assert snap(world.overlay) == before


def test_leaving_edit_mode_keeps_commits_on_a_detached_head(world, checkout):
    """Found by an attack: after `git rebase --quit` (a detached HEAD), unapply left edit mode and the
    new commits were left to the reflog. It refuses; its hint, run literally, keeps them on a branch."""
    assert run(world.overlay, "edit", checkout).returncode == 0
    g = gguf(checkout)
    git("switch", "-q", "--detach", cwd=g)
    (g / "loader.py").write_text((g / "loader.py").read_text().replace("loader line 12\n", "loader line 12 WORK\n"))
    git("commit", "-q", "-a", "-m", "work" + HEADERS, cwd=g)
    work = git("rev-parse", "HEAD", cwd=g)
    r = run(world.overlay, "unapply", checkout)
    assert r.returncode == 4 and "on no branch" in error_line(r), r.stderr
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    keep = hint.split("keep them on a branch (", 1)[1].split("), then rerun", 1)[0]
    assert subprocess.run(keep, shell=True, capture_output=True).returncode == 0
    assert run(world.overlay, "unapply", checkout).returncode == 0
    assert git("branch", "--contains", work, "--format=%(refname:short)", cwd=g).startswith("zpatch-saved-")


def test_an_edit_branch_without_its_record_is_not_exported_over_the_overlay(world, tmp_path):
    """Found by an attack: deleting refs/zpatch/overlay (or pointing it at a commit) bypassed the check."""
    a, b = world.clone_checkout(tmp_path / "A"), world.clone_checkout(tmp_path / "B")
    for co in (a, b):
        assert run(world.overlay, "edit", co).returncode == 0
    (gguf(b) / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=gguf(b))
    assert run(world.overlay, "export", b).returncode == 0
    exported = snap(world.overlay)
    (gguf(a) / "nodes.py").write_text("GGUF = 3\n")
    git("commit", "-q", "-a", "-m", "nodes: three" + HEADERS, cwd=gguf(a))
    for damage in (["update-ref", "-d", "refs/zpatch/overlay"], ["update-ref", "refs/zpatch/overlay", "HEAD"],
                   ["update-ref", "refs/zpatch/overlay", "HEAD^{tree}"]):
        git(*damage, cwd=gguf(a))
        r = run(world.overlay, "export", a)
        assert r.returncode == 4 and "--force" in r.stderr, (damage, r.stderr)
        assert snap(world.overlay) == exported


def test_an_export_that_fails_after_writing_is_not_later_taken_for_a_stale_one(world, checkout):
    """Found by an attack: a held ref lock after the commit point made export exit 10 with the overlay
    written, and the next export refused its own work as stale."""
    assert run(world.overlay, "edit", checkout).returncode == 0
    g = gguf(checkout)
    (g / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=g)
    lock = g / ".git/refs/zpatch/overlay.lock"
    lock.write_text("")
    r = run(world.overlay, "export", checkout)
    assert r.returncode == 0 and "the overlay is written" in r.stderr, (r.returncode, r.stderr)
    lock.unlink()
    (g / "nodes.py").write_text("GGUF = 3\n")
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    r = run(world.overlay, "export", checkout)
    assert r.returncode == 0, r.stderr
    assert "GGUF = 3" in next((world.overlay / "patches/comfyui-gguf").glob("*nodes-bump.patch")).read_text()


def test_edit_mode_is_left_after_a_rebase_moved_the_pin(world, checkout, tmp_path):
    """Found by an attack: after a rebase moved the pin, export, unapply and status all pointed at
    `unapply`, which refused too, and --discard failed on a commit the checkout did not have."""
    from testing.fixtures import commit
    assert run(world.overlay, "edit", checkout).returncode == 0
    g = gguf(checkout)
    (g / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump" + HEADERS, cwd=g)
    assert run(world.overlay, "export", checkout).returncode == 0
    old_pin = world.gguf_pin
    commit(world.gguf_up, {"other.py": "x\n"}, "upstream moves")
    assert run(world.overlay, "rebase", "comfyui-gguf", "--onto", "main").returncode == 0
    st = json.loads(run(world.overlay, "status", checkout, "--json").stdout)
    u = next(u for u in st["upstreams"] if u["name"] == "comfyui-gguf")
    assert u["edit"]["pin_moved"] is True and u["edit"]["exported"] is True
    assert u["edit"]["commits"] == 4        # the branch's commits, counted on it (status said 0 here)
    assert "a rebase has moved the pin since" in st["advice"][0], st["advice"]     # it said nothing of it
    # unexported work on the stale branch: refused, and the hint keeps it
    (g / "nodes.py").write_text("GGUF = 3\n")
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    tip = git("rev-parse", "HEAD", cwd=g)
    advice = json.loads(run(world.overlay, "status", checkout, "--json").stdout)["advice"]
    assert not any("zpatch export" in a for a in advice), advice     # export refuses once the pin moved
    r = run(world.overlay, "unapply", checkout)
    assert r.returncode == 4 and "not exported" in error_line(r) and "the pin moved" in r.stderr, r.stderr
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    keep = hint.split("keep the branch (", 1)[1].split("), then", 1)[0]
    assert subprocess.run(keep, shell=True, capture_output=True).returncode == 0
    r = run(world.overlay, "unapply", "--discard", checkout)
    assert r.returncode == 0, r.stderr
    assert git("rev-parse", "HEAD", cwd=g) == old_pin                      # where the branch started
    assert git("rev-parse", f"zpatch-saved-{tip[:12]}", cwd=g) == tip      # nothing lost
    # it said "back at the pins" there; now it says where it is and the way on, which works as printed
    assert "(comfyui-gguf): back at the pins" not in r.stdout and f"back at {old_pin[:12]}" in r.stdout, r.stdout
    from testing.run import follow
    done = follow(r.stdout.split("Next: ", 1)[1].strip(), world.overlay, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert git("rev-parse", "HEAD", cwd=g) == git("rev-parse", "main", cwd=world.gguf_up)      # the new pin
    assert json.loads(run(world.overlay, "status", checkout, "--json").stdout)["clean"] is True
