"""Exit codes that tell the truth: each produced by a real fault (a full or size-limited file system, a
folder this process may not write, a read-only mount, a lock another git holds, a ref git refuses, a
missing or broken git, SIGTERM), never by mocking zpatch. Each failure is one line naming the cause and
the path, a hint naming the fix, nothing left half-written, and following the hint makes the rerun work."""
from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testing.fixtures import commit, error_line, git, tree_snapshot
from testing.pause import Held, zpatch_cmd

from zimage_patcher import git as gitmod
from zimage_patcher.errors import EXIT_HELP, Exit, GitError, ZpatchError, from_oserror

NODE = "custom_nodes/ComfyUI-ZImage-Fix"
BIG = "".join(f"WEIGHT_{i} = {i}\n" for i in range(60000)).encode()      # about 1 MiB


def cli(overlay: Path, *args, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(zpatch_cmd(overlay, *args), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **popen)


def hint_line(r) -> str:
    return next(line for line in r.stderr.splitlines() if line.startswith("hint: "))


def litter(root: Path) -> list[Path]:
    """zpatch's temporary files anywhere under ROOT (in the work tree and in .git/zpatch)."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or "zpatch-tmp" in p.name]


# ---------------------------------------------------------------- the two ways to fill a disk

def file_size_limit(limit: int):
    """preexec_fn: writes past LIMIT bytes fail with EFBIG (SIGXFSZ ignored, so zpatch sees the error;
    the git it starts gets the default action back, as from any shell, and is stopped by SIGXFSZ)."""
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.fixture
def small_fs(tmp_path):
    """make(size): a real, separate file system of SIZE (a tmpfs) to fill; skips where mounting is not
    permitted (an unprivileged container). Unmounted afterwards."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) here")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "zpatch-test", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs: Path, leave: int) -> Path:
    """Fill the file system FS up to LEAVE free bytes; returns the filler file (delete it to free the space)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    chunk = b"\xa5" * (1 << 16)
    size = 0
    try:
        while True:
            size += os.write(fd, chunk)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    os.ftruncate(fd, max(0, size - leave))
    os.close(fd)
    return filler


def add_big_node_file(world) -> None:
    """The overlay's node gains a 1 MiB file: zpatch writes it itself (no git), after its journal."""
    (world.overlay / "node/ComfyUI-ZImage-Fix/weights.py").write_bytes(BIG)
    world.relock()


def clean_apply(world, base: Path, tmp_path: Path) -> dict:
    ref = tmp_path / "ref"
    shutil.copytree(base, ref, symlinks=True)
    r = cli(world.overlay, "apply", ref)
    assert r.returncode == 0, r.stderr
    return tree_snapshot(ref)


# ---------------------------------------------------------------- 12: the file system refused

def test_checkout_past_the_file_size_limit_is_a_file_system_error(world, tmp_path):
    assert cli(world.overlay, "checkout", tmp_path / "warm").returncode == 0     # the cache is warm
    dest = tmp_path / "C"
    r = cli(world.overlay, "checkout", dest, preexec_fn=file_size_limit(4096))
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    line = error_line(r)
    assert "file size limit" in line and str(dest) in line and "Traceback" not in r.stderr
    assert "ulimit -f" in hint_line(r)
    assert not dest.exists()                      # the half-made checkout is gone
    assert cli(world.overlay, "checkout", dest).returncode == 0      # the limit lifted: it works


def test_checkout_onto_a_full_disk_is_a_file_system_error(world, tmp_path, small_fs):
    assert cli(world.overlay, "checkout", tmp_path / "warm").returncode == 0
    fs = small_fs("64k")
    r = cli(world.overlay, "checkout", fs / "C")
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    line = error_line(r)
    assert "No space left on device" in line and str(fs / "C") in line
    assert hint_line(r) == ("hint: free some space on that file system, then rerun: the interrupted run is "
                            "rolled back by the next command")
    assert list(fs.iterdir()) == []


@pytest.mark.parametrize("how", ["file-size-limit", "full-disk"])
def test_apply_that_runs_out_of_space_names_the_file_and_the_next_command_rolls_it_back(
        world, tmp_path, small_fs, how):
    add_big_node_file(world)
    if how == "full-disk":
        fs = small_fs("8m")
        base = world.clone_checkout(fs / "co")
        filler = fill(fs, leave=256 << 10)
        limit = {}
    else:
        base = world.clone_checkout(tmp_path / "co")
        limit = {"preexec_fn": file_size_limit(256 << 10)}
    before = tree_snapshot(base)
    after = clean_apply(world, base, tmp_path)
    r = cli(world.overlay, "apply", base, **limit)
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    line = error_line(r)
    assert f"{base / NODE / 'weights.py'}: no space left" in line, line
    assert ("ulimit -f" if how == "file-size-limit" else "free some space on that file system") in hint_line(r)
    assert not litter(base)
    if how == "full-disk":
        filler.unlink()                           # the user frees some space
    # the next command rolls the interrupted apply back: exactly the files from before
    r = cli(world.overlay, "unapply", base)
    assert r.returncode == 0 and "Rolled back an interrupted `zpatch apply`" in r.stdout + r.stderr, r.stderr
    assert tree_snapshot(base) == before and not litter(base)
    assert cli(world.overlay, "apply", base).returncode == 0
    assert tree_snapshot(base) == after


def without_root_override():
    """preexec_fn: this process honours file modes even as root (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped from the bounding set, so the exec'd zpatch and its git lack them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP = 24

    def pre():
        for cap in (1, 2):        # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                os._exit(97)
    return pre


def unprivileged(world) -> dict:
    if os.geteuid() != 0:
        return {}                 # modes are honoured already
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=without_root_override())
    if probe.returncode == 97:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    return {"preexec_fn": without_root_override()}


def test_apply_in_a_checkout_this_user_may_not_write(world, checkout):
    how = unprivileged(world)
    before = tree_snapshot(checkout)
    (checkout / ".git").chmod(0o555)
    try:
        r = cli(world.overlay, "apply", checkout, **how)
    finally:
        (checkout / ".git").chmod(0o755)
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    assert error_line(r) == f"error: {checkout / '.git/zpatch'}: cannot write there (permission denied)"
    assert f"give this user access to {checkout / '.git'}" in hint_line(r)
    assert tree_snapshot(checkout) == before
    assert cli(world.overlay, "apply", checkout, **how).returncode == 0      # the hint followed


def test_apply_stopped_by_a_folder_it_may_not_write_is_rolled_back_after_the_fix(world, checkout, tmp_path):
    how = unprivileged(world)
    before = tree_snapshot(checkout)
    after = clean_apply(world, checkout, tmp_path)
    folder = checkout / "custom_nodes/ComfyUI-GGUF"
    folder.chmod(0o555)
    try:
        r = cli(world.overlay, "apply", checkout, **how)
    finally:
        folder.chmod(0o755)
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    line = error_line(r)
    assert line.startswith(f"error: {folder}/") and line.endswith(": permission denied"), line
    assert f"give this user access to {folder} " in hint_line(r)
    assert not litter(checkout)
    r = cli(world.overlay, "unapply", checkout, **how)      # the next command rolls it back
    assert r.returncode == 0, r.stderr
    assert tree_snapshot(checkout) == before
    assert cli(world.overlay, "apply", checkout, **how).returncode == 0
    assert tree_snapshot(checkout) == after


def test_apply_on_a_read_only_mount(world, checkout):
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here")
    before = tree_snapshot(checkout)
    r = subprocess.run(["mount", "--bind", str(checkout), str(checkout)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot bind-mount here: {r.stderr.strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(checkout)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")
        r = cli(world.overlay, "apply", checkout)
        st = cli(world.overlay, "status", checkout)
    finally:
        subprocess.run(["umount", str(checkout)], capture_output=True)
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    assert error_line(r) == f"error: {checkout / '.git/zpatch'}: cannot write there (read-only file system)"
    assert "read-only file system: remount it read-write" in hint_line(r)
    assert st.returncode == 1 and "missing" in st.stdout        # `status` works read-only, as the hint says
    assert tree_snapshot(checkout) == before
    assert cli(world.overlay, "apply", checkout).returncode == 0


# ---------------------------------------------------------------- 10, 13, 8: git busy, refusing, broken

def test_a_ref_lock_another_git_holds_is_busy_and_the_hint_names_it(world, checkout):
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    lock = gguf / ".git/refs/zpatch/base.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    r = cli(world.overlay, "edit", checkout)
    assert r.returncode == Exit.BUSY, r.stderr
    assert error_line(r).startswith(f"error: {lock}: held by another git process")
    assert hint_line(r) == f"hint: another git process is running in {gguf}; if none is, remove {lock}"
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=gguf) == "HEAD"         # edit mode was not begun
    lock.unlink()                                                               # the hint followed
    r = cli(world.overlay, "edit", checkout)
    assert r.returncode == 0, r.stderr
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=gguf) == "zpatch/edit"


def test_a_held_index_lock_is_busy_and_names_the_lock_file(checkout):
    (checkout / "nodes.py").write_text("NODES = 2\n")          # something for git to put in the index
    lock = checkout / ".git/index.lock"
    lock.write_text("")
    with pytest.raises(GitError) as ei:
        gitmod.run(["add", "nodes.py"], cwd=checkout)
    assert ei.value.exit_code == Exit.BUSY
    assert ei.value.message.startswith(f"{lock}: held by another git process")
    assert ei.value.hint == f"another git process is running in {checkout}; if none is, remove {lock}"
    lock.unlink()
    gitmod.run(["add", "nodes.py"], cwd=checkout)


def test_a_held_index_lock_makes_edit_busy_and_the_hint_names_it(world, checkout):
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    lock = gguf / ".git/index.lock"
    lock.write_text("")
    r = cli(world.overlay, "edit", checkout)
    assert r.returncode == Exit.BUSY, r.stderr
    assert hint_line(r) == f"hint: another git process is running in {gguf}; if none is, remove {lock}"
    lock.unlink()
    assert cli(world.overlay, "edit", checkout).returncode == 0


def test_checkout_whose_work_tree_passes_the_file_size_limit_is_a_file_system_error(world, tmp_path):
    world.comfy_pin = commit(world.comfy_up, {"models/big.bin": BIG.decode()}, "a big file")
    world.build_overlay()
    assert cli(world.overlay, "checkout", tmp_path / "warm").returncode == 0     # the cache is warm
    r = cli(world.overlay, "checkout", tmp_path / "C", preexec_fn=file_size_limit(64 << 10))
    assert r.returncode == Exit.FILESYSTEM, r.stderr
    assert "file size limit" in error_line(r)


def test_a_ref_git_refuses_to_create_is_git_refused_with_its_message(world, checkout):
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    git("update-ref", "refs/zpatch", "HEAD", cwd=gguf)        # a ref where zpatch needs a folder of refs
    r = cli(world.overlay, "edit", checkout)
    assert r.returncode == Exit.GIT_REFUSED, r.stderr
    line = error_line(r)
    assert f"git update-ref --stdin failed in {gguf}: fatal:" in line
    assert "'refs/zpatch' exists; cannot create 'refs/zpatch/base'" in line
    git("update-ref", "-d", "refs/zpatch", cwd=gguf)
    assert cli(world.overlay, "edit", checkout).returncode == 0


def test_a_git_that_refuses_one_command_is_git_refused(world, checkout, tmp_path):
    """A wrapper first on PATH runs the real git but refuses `update-ref`, as a site policy might."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\nfor a; do [ "$a" = update-ref ] && '
                                 f'{{ echo "fatal: update-ref is disabled by site policy" >&2; exit 1; }}; done\n'
                                 f'exec {shutil.which("git")} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    r = cli(world.overlay, "edit", checkout, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == Exit.GIT_REFUSED, r.stderr
    assert error_line(r).endswith("fatal: update-ref is disabled by site policy")


@pytest.mark.parametrize("broken", ["missing", "not-a-program"])
def test_a_missing_or_broken_git_stays_an_environment_error(world, checkout, tmp_path, broken):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if broken == "not-a-program":
        (bin_dir / "git").write_bytes(b"\x7fELF garbage, not a program\n")
        (bin_dir / "git").chmod(0o755)
    r = cli(world.overlay, "status", checkout, env={"PATH": str(bin_dir)})
    assert r.returncode == Exit.ENVIRONMENT, r.stderr
    line = error_line(r)
    assert ("git is not installed" in line if broken == "missing"
            else f"{bin_dir / 'git'}: git cannot be run (Exec format error)" in line), line


# ---------------------------------------------------------------- 143: SIGTERM

def test_sigterm_in_the_middle_of_an_apply_exits_143_and_the_next_command_rolls_it_back(world, checkout, tmp_path):
    before = tree_snapshot(checkout)
    after = clean_apply(world, checkout, tmp_path)
    held = Held(zpatch_cmd(world.overlay, "apply", checkout), "journal-written")
    held.proc.send_signal(signal.SIGTERM)
    r = held.release()
    assert r.returncode == Exit.TERMINATED, (r.returncode, r.stderr)
    assert error_line(r) == "error: terminated (SIGTERM)"
    assert not litter(checkout)
    assert (checkout / ".git/zpatch/journal.json").exists()         # stopped in the middle: the journal says so
    st = cli(world.overlay, "status", checkout)
    assert st.returncode in (0, 1) and "Traceback" not in st.stderr
    assert "rolls the interrupted change back" in st.stdout and "edited after apply" not in st.stdout
    r = cli(world.overlay, "unapply", checkout)
    assert r.returncode == 0 and "Rolled back an interrupted `zpatch apply`" in r.stdout + r.stderr, r.stderr
    assert tree_snapshot(checkout) == before
    assert cli(world.overlay, "apply", checkout).returncode == 0
    assert tree_snapshot(checkout) == after


def test_sigterm_with_json_gives_the_envelope(world, checkout):
    held = Held(zpatch_cmd(world.overlay, "apply", checkout, "--json"), "journal-written")
    held.proc.send_signal(signal.SIGTERM)
    r = held.release()
    assert r.returncode == 143
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["exit_code"] == 143 and out["error"] == "terminated (SIGTERM)"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_checkout_apply_interrupted_in_its_apply_says_to_apply_and_that_works(world, tmp_path, sig):
    """A second trial: `checkout --apply` interrupted after its checkout said "rerun the same zpatch
    checkout", which then refused the folder (not empty). The hint names the apply, and runs."""
    from testing import run
    dest = tmp_path / "ComfyUI"
    held = Held(zpatch_cmd(world.overlay, "checkout", dest, "--apply"), "journal-written")
    held.proc.send_signal(sig)
    r = held.release()
    assert r.returncode == (Exit.INTERRUPTED if sig == signal.SIGINT else Exit.TERMINATED), r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: "))
    assert hint.startswith("hint: the checkout is complete;")
    done = run.follow(hint.split("`")[1], tmp_path, world.env)
    assert done.returncode == 0 and "Rolled back an interrupted" in done.stdout, done.stdout + done.stderr
    assert cli(world.overlay, "status", dest).returncode == 0


@pytest.mark.parametrize("point", ["finished", "exiting"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("as_json", [True, False])
def test_a_signal_after_the_work_is_done_leaves_the_reported_success_standing(world, checkout, sig, as_json, point):
    """A newcomer's Ctrl-C landed just as apply finished: it printed its success (--json: ok, exit_code
    0), then exited 130. Once a command's work is over, its exit status is the one it reports: while
    it prints the result (finished) and while the program ends (exiting)."""
    held = Held(zpatch_cmd(world.overlay, "apply", checkout, *(["--json"] if as_json else [])), point)
    held.proc.send_signal(sig)
    r = held.release()
    assert r.returncode == 0, (r.returncode, r.stderr)
    if as_json:
        out = json.loads(r.stdout)
        assert out["ok"] is True and out["exit_code"] == 0
    else:
        assert r.stdout.startswith("Applied") and r.stderr == ""
    assert cli(world.overlay, "status", checkout).returncode == 0


# ---------------------------------------------------------------- the one mapping, and the table

@pytest.mark.parametrize("code,expect", [
    (errno.ENOSPC, Exit.FILESYSTEM), (errno.EDQUOT, Exit.FILESYSTEM), (errno.EFBIG, Exit.FILESYSTEM),
    (errno.EACCES, Exit.FILESYSTEM), (errno.EPERM, Exit.FILESYSTEM), (errno.EROFS, Exit.FILESYSTEM),
    (errno.ENOENT, Exit.BAD_CHECKOUT), (errno.ENAMETOOLONG, Exit.BAD_CHECKOUT), (errno.ENOTDIR, Exit.BAD_CHECKOUT)])
def test_from_oserror_is_the_one_errno_mapping(tmp_path, code, expect):
    e = OSError(code, os.strerror(code), str(tmp_path / "f"))
    err = from_oserror(e)
    assert isinstance(err, ZpatchError) and err.exit_code == expect
    assert err.message.startswith(f"{tmp_path / 'f'}: ")
    assert from_oserror(e, otherwise=ZpatchError("x", Exit.BAD_OVERLAY)).exit_code == (
        expect if expect == Exit.FILESYSTEM else Exit.BAD_OVERLAY)


def test_new_codes_keep_the_old_numbers():
    assert [(c.name, int(c)) for c in Exit] == [
        ("OK", 0), ("FINDINGS", 1), ("USAGE", 2), ("BAD_OVERLAY", 3), ("BAD_CHECKOUT", 4), ("CONFLICT", 5),
        ("UNREACHABLE", 6), ("SMOKE_FAILED", 7), ("ENVIRONMENT", 8), ("INTERNAL", 9), ("BUSY", 10),
        ("UPSTREAMED", 11), ("FILESYSTEM", 12), ("GIT_REFUSED", 13), ("INTERRUPTED", 130), ("TERMINATED", 143)]
    assert set(EXIT_HELP) == set(Exit)


def test_an_interrupted_rebase_names_continue_and_that_finishes_it(world, tmp_path):
    """A third trial: a rebase interrupted by Ctrl-C said "rerun it", and rerunning met "a rebase is in
    progress" (exit 10). The hint names --continue, which, run literally, finishes the rebase."""
    from testing import run
    from testing.fixtures import commit as commit_to
    moved = commit_to(world.gguf_up, {"README.md": "moved\n"}, "upstream moves on")
    held = Held(zpatch_cmd(world.overlay, "rebase", "comfyui-gguf", "--onto", moved), "journal-written")
    held.proc.send_signal(signal.SIGINT)
    r = held.release()
    assert r.returncode == Exit.INTERRUPTED, r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: "))
    done = run.follow(hint.split("`")[1], world.overlay, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert moved in (world.overlay / "upstream.lock").read_text()
    assert cli(world.overlay, "check").returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_checkout_names_the_whole_command_that_finishes_it(world, tmp_path, sig):
    """A third trial: the hint said "rerun the same `zpatch checkout --overlay OV`", a command without its
    DEST (exit 2 when pasted). It names the whole command, --exclude and --apply included, which runs."""
    from testing import run
    dest = tmp_path / "ComfyUI"
    held = Held(zpatch_cmd(world.overlay, "checkout", dest, "--exclude", "nodes.py", "--apply"), "root-cloned")
    held.proc.send_signal(sig)
    r = held.release()
    assert r.returncode in (Exit.INTERRUPTED, Exit.TERMINATED), r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1]
    assert hint == f"zpatch checkout --overlay {world.overlay} {dest} --exclude nodes.py --apply"
    done = run.follow(hint, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli(world.overlay, "status", dest).returncode == 0
