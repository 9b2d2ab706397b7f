"""`zpatch checkout` killed at every write and git step: the hint the next command prints, run
literally, ends in exactly the checkout an uninterrupted run makes; the folder itself is never
replaced (it may be a mount point) and a folder that held something is never emptied."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess

from pathlib import Path

import pytest

from testing import run
from testing.fixtures import error_line, git

from zimage_patcher.clone import INCOMPLETE

REPOS = (".", "custom_nodes/ComfyUI-GGUF")


def cli(overlay: Path, *args, kill_at: int | None = None) -> subprocess.CompletedProcess:
    return run.zpatch(args[0], "--overlay", overlay, *args[1:], kill_at=kill_at)


def hinted(r: subprocess.CompletedProcess) -> list[str]:
    """The one command the `hint:` line names (in backticks), as argv."""
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    return shlex.split(hint.split("`")[1])


def run_hint(overlay: Path, argv: list[str]) -> subprocess.CompletedProcess:
    assert argv[0] == "zpatch", argv
    return cli(overlay, *argv[1:])


def snapshot(dest: Path) -> dict:
    """What a checkout is: every file outside .git, each repository's HEAD, refs, remote, sparse
    settings, and a clean `git status` (the folder's own identity is checked apart)."""
    out: dict = {}
    for p in sorted(dest.rglob("*")):
        rel = p.relative_to(dest).as_posix()
        if ".git" in p.relative_to(dest).parts:
            continue
        out[rel] = "-> " + os.readlink(p) if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    for r in REPOS:
        repo = dest / r
        out[f"{r}:HEAD"] = (repo / ".git/HEAD").read_text()
        out[f"{r}:refs"] = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=repo)
        out[f"{r}:remote"] = git("config", "--get-regexp", "^remote\\.", cwd=repo)
        out[f"{r}:status"] = git("status", "--porcelain", "--ignored", cwd=repo)
        out[f"{r}:sparse"] = git("config", "--get", "core.sparseCheckout", cwd=repo, check=False)
    assert out[".:status"] == "!! custom_nodes/" and out["custom_nodes/ComfyUI-GGUF:status"] == ""
    return out


def finish_from_apply_hint(world, dest: Path) -> None:
    """What a user does next: apply; it refuses and names the command that finishes the checkout."""
    r = cli(world.overlay, "apply", dest)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "interrupted" in error_line(r), r.stderr
    argv = hinted(r)
    assert argv[:2] == ["zpatch", "checkout"], argv
    r = run_hint(world.overlay, argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Resumed an interrupted checkout"), r.stdout


def test_kill_checkout_at_every_point_then_follow_the_hint(world, tmp_path):
    ref = tmp_path / "ref"
    r = cli(world.overlay, "checkout", ref)       # also warms the cache: the runs below only clone from it
    assert r.returncode == 0, r.stderr
    want = snapshot(ref)
    assert not (ref / INCOMPLETE).exists()
    n = 0
    while True:
        n += 1
        dest = tmp_path / f"trial{n}"
        r = cli(world.overlay, "checkout", dest, kill_at=n)
        if r.returncode == 0:            # more points asked for than the run has: it completed
            assert snapshot(dest) == want and not (dest / INCOMPLETE).exists()
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr)
        if (dest / INCOMPLETE).exists():
            st = cli(world.overlay, "status", dest)
            assert st.returncode == 4 and hinted(st)[:2] == ["zpatch", "checkout"], st.stderr
            assert "Traceback" not in st.stderr
            finish_from_apply_hint(world, dest)
        # else: killed after its very last step, the marker's removal
        assert snapshot(dest) == want, n
        assert not (dest / INCOMPLETE).exists() and not (dest / ".zpatch-clone").exists()
        assert cli(world.overlay, "apply", dest).returncode == 0    # and it is a checkout like any other
    assert n > 8, "checkout should have a point after each clone, checkout and the marker's writes"


def test_an_empty_folder_killed_into_is_resumed_in_place_even_when_the_resume_is_killed(world, tmp_path):
    ref = tmp_path / "ref"
    assert cli(world.overlay, "checkout", ref).returncode == 0
    want = snapshot(ref)
    n = 0
    while True:
        n += 1
        dest = tmp_path / f"vol{n}"         # a folder the user made (a mount point): kept, never replaced
        dest.mkdir()
        ino = dest.stat().st_ino
        r = cli(world.overlay, "checkout", dest, kill_at=n)
        if r.returncode == 0:
            break
        if (dest / INCOMPLETE).exists():
            for m in (1, 3):                 # the resume is killed too, then resumed again
                if (dest / INCOMPLETE).exists():
                    r = cli(world.overlay, "checkout", dest, kill_at=m)
                    assert r.returncode in (0, -signal.SIGKILL), r.stderr
            if (dest / INCOMPLETE).exists():
                finish_from_apply_hint(world, dest)
        assert dest.stat().st_ino == ino
        assert snapshot(dest) == want and not (dest / INCOMPLETE).exists(), n
    assert n > 8


def test_resume_keeps_complete_clones_and_redoes_the_rest(world, zpatch, tmp_path):
    ref = tmp_path / "ref"
    zpatch("checkout", ref)
    want = snapshot(ref)
    # killed after ComfyUI's checkout finished, in the middle of ComfyUI-GGUF's clone
    dest = tmp_path / "D"
    n = 0
    while True:
        n += 1
        r = cli(world.overlay, "checkout", dest, kill_at=n)
        assert r.returncode == -signal.SIGKILL
        if (dest / "custom_nodes/ComfyUI-GGUF/.git").exists():
            break
        shutil.rmtree(dest)
    root_index = (dest / ".git/index").stat().st_ino
    res = zpatch.json("checkout", dest)
    assert res["resumed"] and res["kept"] == ["comfyui"]
    assert (dest / ".git/index").stat().st_ino == root_index        # ComfyUI was not cloned again
    assert snapshot(dest) == want


def test_a_failing_resume_or_a_failing_first_run_never_deletes_what_was_there(world, zpatch, tmp_path):
    # a first run into an existing empty folder that fails: the folder stays, empty, as it was
    empty = tmp_path / "E"
    empty.mkdir()
    r = zpatch("checkout", empty, "--exclude", "no/such/file.py", expect=2)
    assert "--exclude" in r.stderr and empty.is_dir() and list(empty.iterdir()) == []
    # an interrupted checkout, then a resume that fails: what the first run made stays, marker included
    dest = tmp_path / "D"
    assert cli(world.overlay, "checkout", dest, kill_at=5).returncode == -signal.SIGKILL
    before = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    r = zpatch("checkout", dest, "--exclude", "no/such/file.py", expect=2)
    assert "no such path" in error_line(r)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == before
    assert (dest / INCOMPLETE).exists() and (dest / ".git").is_dir()
    # a folder with someone's files and no marker is refused, as before, untouched
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine").write_text("x")
    assert "already exists and is not empty" in error_line(zpatch("checkout", busy, expect=4))
    assert [p.name for p in busy.iterdir()] == ["mine"]
    # and the interrupted one resumes after all
    zpatch("checkout", dest)
    assert not (dest / INCOMPLETE).exists()


def test_the_hint_carries_the_excludes_the_checkout_began_with(world, zpatch, tmp_path):
    ref = tmp_path / "ref"
    zpatch("checkout", ref, "--exclude", "nodes.py")
    dest = tmp_path / "D"
    assert cli(world.overlay, "checkout", dest, "--exclude", "nodes.py", kill_at=6).returncode == -signal.SIGKILL
    r = zpatch("status", dest, expect=4)
    argv = hinted(r)
    assert argv[2:] == ["--overlay", str(world.overlay), str(dest), "--exclude", "nodes.py"], argv
    zpatch(*argv[1:])
    assert not (dest / "nodes.py").exists() and (ref / ".git/info/sparse-checkout").read_text() == \
        (dest / ".git/info/sparse-checkout").read_text()
    assert git("status", "--porcelain", cwd=dest) == git("status", "--porcelain", cwd=ref)


def _killed_in_root_clone(world, dest: Path, kill_at: int = 3) -> None:
    """A checkout killed while ComfyUI (the root upstream) is being cloned: its clone is not complete."""
    assert cli(world.overlay, "checkout", dest, kill_at=kill_at).returncode == -signal.SIGKILL
    assert (dest / INCOMPLETE).exists() and not (dest / "custom_nodes/ComfyUI-GGUF/.git").exists()


def test_a_resume_never_deletes_a_file_the_user_added(world, zpatch, tmp_path):
    ref = tmp_path / "ref"
    zpatch("checkout", ref)                  # warms the cache
    want = snapshot(ref)
    dest = tmp_path / "D"
    _killed_in_root_clone(world, dest)
    (dest / "models").mkdir()
    (dest / "models/m.bin").write_text("x\n")
    before = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    r = cli(world.overlay, "checkout", dest)
    assert r.returncode == 4, r.stderr
    line = error_line(r)
    assert "models" in line and "Traceback" not in r.stderr, r.stderr
    assert f"mv {dest / 'models'}" in r.stderr or "mv " in r.stderr
    assert (dest / "models/m.bin").read_text() == "x\n"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == before
    assert (dest / INCOMPLETE).exists()
    # the user moves it away, as the hint says, and the resume completes
    shutil.move(str(dest / "models"), str(tmp_path / "models"))
    r = cli(world.overlay, "checkout", dest)
    assert r.returncode == 0, r.stderr
    assert snapshot(dest) == want and not (dest / INCOMPLETE).exists()
    assert (tmp_path / "models/m.bin").read_text() == "x\n"


def test_a_resume_refuses_a_user_file_deep_inside_a_tracked_folder(world, zpatch, tmp_path):
    ref = tmp_path / "ref"
    zpatch("checkout", ref)
    dest = tmp_path / "D"
    _killed_in_root_clone(world, dest)
    # comfy/ is a folder of ComfyUI's tree; what the user put deep inside it is not
    mine = dest / "comfy/sub/deeper/mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine\n")
    before = tree_snapshot_with_git(dest)
    r = zpatch("checkout", dest, expect=4)
    assert f"{dest}/comfy/sub: not made by the interrupted checkout" in error_line(r), r.output
    assert tree_snapshot_with_git(dest) == before and mine.read_text() == "mine\n"
    # a file beside the tracked ones, at a name the tree lacks, is refused as well
    shutil.rmtree(dest / "comfy/sub")
    (dest / "comfy/notes.txt").write_text("n\n")
    r = zpatch("checkout", dest, expect=4)
    assert "comfy/notes.txt" in error_line(r) and (dest / "comfy/notes.txt").exists()
    # a file at a path of the tree is the checkout's to rewrite; a symlink in the way is refused
    (dest / "comfy/notes.txt").unlink()
    (dest / "comfy/sd.py").write_text("half-written\n")
    (dest / "custom_nodes").symlink_to(tmp_path / "elsewhere")
    r = zpatch("checkout", dest, expect=4)
    assert f"{dest}/custom_nodes:" in error_line(r)
    (dest / "custom_nodes").unlink()
    zpatch("checkout", dest)
    assert snapshot(dest) == snapshot(ref)


def test_an_incomplete_nested_upstream_with_a_user_file_is_refused(world, zpatch, tmp_path):
    ref = tmp_path / "ref"
    zpatch("checkout", ref)
    dest = tmp_path / "D"
    n = 0
    while True:        # killed after ComfyUI-GGUF's clone began, before it completed
        n += 1
        r = cli(world.overlay, "checkout", dest, kill_at=n)
        assert r.returncode == -signal.SIGKILL
        if (dest / "custom_nodes/ComfyUI-GGUF/.git").exists():
            break
        shutil.rmtree(dest)
    mine = dest / "custom_nodes/ComfyUI-GGUF/weights/w.gguf"
    mine.parent.mkdir(parents=True)
    mine.write_text("w\n")
    before = tree_snapshot_with_git(dest)
    r = zpatch("checkout", dest, expect=4)
    assert "custom_nodes/ComfyUI-GGUF/weights" in error_line(r), r.output
    assert tree_snapshot_with_git(dest) == before
    # a user file outside the incomplete upstream is not in the way: nothing there is removed
    shutil.move(str(dest / "custom_nodes/ComfyUI-GGUF/weights"), str(dest / "custom_nodes/weights"))
    res = zpatch.json("checkout", dest)
    assert res["kept"] == ["comfyui"] and (dest / "custom_nodes/weights/w.gguf").read_text() == "w\n"


def test_a_resume_with_other_excludes_refuses_a_user_file(world, zpatch, tmp_path):
    ref = tmp_path / "ref"
    zpatch("checkout", ref)
    want = snapshot(ref)
    dest = tmp_path / "D"
    n = 0
    while True:        # ComfyUI complete, ComfyUI-GGUF's clone begun: a resume would keep ComfyUI
        n += 1
        r = cli(world.overlay, "checkout", dest, "--exclude", "nodes.py", kill_at=n)
        assert r.returncode == -signal.SIGKILL
        if (dest / "custom_nodes/ComfyUI-GGUF/.git").exists():
            break
        shutil.rmtree(dest)
    (dest / "custom_nodes/extra").mkdir()
    (dest / "custom_nodes/extra/mine.py").write_text("m\n")
    before = tree_snapshot_with_git(dest)
    r = zpatch("checkout", dest, expect=4)          # other excludes than the interrupted run's
    assert "custom_nodes/extra" in error_line(r), r.output
    assert "mv " in r.output
    assert tree_snapshot_with_git(dest) == before
    shutil.rmtree(dest / "custom_nodes/extra")
    zpatch("checkout", dest)
    assert snapshot(dest) == want


def test_the_resume_hint_says_what_a_resume_does(world, tmp_path):
    dest = tmp_path / "D"
    _killed_in_root_clone(world, dest)
    r = cli(world.overlay, "status", dest)
    assert r.returncode == 4
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    assert "keeping what is done" not in hint
    assert "completed" in hint and "clones" in hint, hint


def tree_snapshot_with_git(root: Path) -> dict:
    """Every path under ROOT, .git included, with its bytes (for 'nothing changed')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "-> " + os.readlink(p) if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


@pytest.mark.parametrize("threshold", [1, 100000], ids=["parallel-checkout", "one-process"])
def test_a_blob_the_source_lacks_is_named_whichever_way_git_checks_out(world, zpatch, tmp_path, threshold):
    """DESIGN section 7: a partial mirror lacks a blob. checkout names the file and --exclude leaves it
    out, whether git writes the tree in one process or with parallel workers (their messages differ)."""
    gitconfig = Path(world.env["GIT_CONFIG_GLOBAL"])
    gitconfig.write_text(gitconfig.read_text() + f"[checkout]\n\tthresholdForParallelism = {threshold}\n")
    blob = git("rev-parse", f"{world.comfy_pin}:nodes.py", cwd=world.comfy_up)
    (world.comfy_up / ".git/objects" / blob[:2] / blob[2:]).unlink()
    dest = tmp_path / "ComfyUI"
    res = zpatch.json("checkout", dest)
    assert res["missing_objects"] == ["nodes.py"]
    assert not (dest / "nodes.py").exists() and (dest / "comfy/sd.py").is_file()
    shutil.rmtree(dest)
    res = zpatch.json("checkout", dest, "--exclude", "nodes.py")
    assert res["missing_objects"] == [] and (dest / "comfy/sd.py").is_file()
