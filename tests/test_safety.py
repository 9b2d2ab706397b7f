"""The README's safety promises, each attacked: hostile modes and symlinks, partial applies, data
loss, tampered records, tracebacks, terminal injection, an inherited GIT_DIR, and `lock`."""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from testing.fixtures import LOADER_PY, SD_PY, error_line, git, replace_line, tree_snapshot, write


def add_patch(world, upstream: str, name: str, text: str) -> None:
    d = world.overlay / "patches" / upstream
    (d / name).write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    (d / "series").write_text((d / "series").read_text() + name + "\n")
    world.relock()


def mailbox(body: str, subject: str = "hostile") -> str:
    return (f"From: x\nSubject: [PATCH] {subject}\n\nOrigin: vendor\nForwarded: no\nLast-Update: 2026-11-26\n"
            f"Upstream-License: test\n---\n{body}")


# ---------------------------------------------------------------- 1. modes as git reads them

SYMLINK_NODE = ("diff --git a/custom_nodes/ComfyUI-ZImage-Fix b/custom_nodes/ComfyUI-ZImage-Fix\n"
                "new file mode {mode}\n--- /dev/null\n+++ b/custom_nodes/ComfyUI-ZImage-Fix\n"
                "@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n")
LINK_IN_TREE = ("diff --git a/link b/link\nnew file mode {mode}\n--- /dev/null\n+++ b/link\n"
                "@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n")


@pytest.mark.parametrize("mode", ["0120000", "120000 ", " 120000", "00120000", "160000", "0160000", "104755",
                                  "40000"])
def test_special_modes_are_refused_however_spelled(zpatch, world, checkout, tmp_path, mode):
    add_patch(world, "comfyui", "0002-hostile.patch", mailbox(LINK_IN_TREE.format(mode=mode)))
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    assert "0002-hostile.patch" in error_line(r)
    assert tree_snapshot(checkout) == before and not os.path.lexists(checkout / "link")
    assert any("0002-hostile.patch" in p["message"] for p in zpatch.json("check", "--no-apply", expect=1)["problems"])


def test_symlinked_node_folder_by_patch_is_refused(zpatch, world, checkout, tmp_path):
    """The field attack: a ComfyUI patch makes the node's folder a link, then apply copies through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    add_patch(world, "comfyui", "0002-hostile.patch",
              mailbox(SYMLINK_NODE.format(mode="0120000", target=elsewhere)))
    r = zpatch("apply", checkout, expect=3)
    assert "0002-hostile.patch" in error_line(r)
    assert list(elsewhere.iterdir()) == []
    assert not os.path.lexists(checkout / "custom_nodes/ComfyUI-ZImage-Fix")


def test_exec_bit_added_by_a_patch_is_refused_after_git_reads_it(zpatch, world, checkout):
    body = ("diff --git a/nodes.py b/nodes.py\nold mode 100644\nnew mode 100755\n")
    sd = "diff --git a/comfy/sd.py b/comfy/sd.py\n--- a/comfy/sd.py\n+++ b/comfy/sd.py\n" \
         "@@ -1,4 +1,4 @@\n-# line 1 of sd.py\n+# line 1 X\n # line 2 of sd.py\n # line 3 of sd.py\n # line 4 of sd.py\n"
    add_patch(world, "comfyui", "0002-chmod.patch", mailbox(body + sd))
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    assert "would make nodes.py mode 100755" in error_line(r)
    assert tree_snapshot(checkout) == before
    res = zpatch.json("check", expect=1)
    assert any("would make nodes.py mode 100755" in p["message"] for p in res["problems"])


def test_a_series_may_not_write_into_a_nested_repository(zpatch, world, checkout):
    body = ("diff --git a/custom_nodes/ComfyUI-GGUF/evil.py b/custom_nodes/ComfyUI-GGUF/evil.py\n"
            "new file mode 100644\n--- /dev/null\n+++ b/custom_nodes/ComfyUI-GGUF/evil.py\n@@ -0,0 +1 @@\n+x\n")
    add_patch(world, "comfyui", "0002-nested.patch", mailbox(body))
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    assert "inside custom_nodes/ComfyUI-GGUF" in error_line(r)
    assert tree_snapshot(checkout) == before


def test_quoted_path_escapes_are_decoded_before_judging(zpatch, world, checkout):
    body = ('diff --git "a/..\\057outside" "b/..\\057outside"\nnew file mode 100644\n--- /dev/null\n'
            '+++ "b/..\\057outside"\n@@ -0,0 +1 @@\n+x\n')
    add_patch(world, "comfyui", "0002-quoted.patch", mailbox(body))
    r = zpatch("apply", checkout, expect=3)
    assert "leaves the tree ('..')" in error_line(r)


# ---------------------------------------------------------------- 2. all or nothing within an upstream

def test_third_patch_failing_on_the_pin_leaves_nothing_and_tools_still_work(zpatch, world, checkout):
    p = world.overlay / "patches/comfyui-gguf/0003-loader-external-tokenizer.patch"
    p.write_text(p.read_text().replace(" loader line 34\n", " loader line 34 (stale)\n"))
    world.relock()
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=5)
    assert "0003-loader-external-tokenizer.patch" in error_line(r) and "nothing was changed" in r.stderr
    assert tree_snapshot(checkout) == before
    assert "Nothing applied" in zpatch("unapply", checkout).stdout
    world.build_overlay()
    zpatch("apply", checkout)
    assert zpatch.json("status", checkout)["clean"]


# ---------------------------------------------------------------- 3. never lose a user's bytes

def test_edited_node_file_is_not_overwritten_by_a_reapply(zpatch, world, checkout):
    zpatch("apply", checkout)
    mine = checkout / "custom_nodes/ComfyUI-ZImage-Fix/nodes.py"
    mine.write_text("X = 'my fix'\n")
    write(world.overlay / "node/ComfyUI-ZImage-Fix", {"nodes.py": "X = 2\n"})
    world.relock()
    r = zpatch("apply", checkout, expect=4)
    assert "nodes.py: modified since zpatch installed it" in error_line(r)
    assert mine.read_text() == "X = 'my fix'\n"


def test_users_file_where_the_overlay_now_adds_one_is_kept(zpatch, world, checkout):
    zpatch("apply", checkout)
    theirs = checkout / "custom_nodes/ComfyUI-ZImage-Fix/extra.py"
    theirs.write_text("mine\n")
    write(world.overlay / "node/ComfyUI-ZImage-Fix", {"extra.py": "overlay's\n"})
    world.relock()
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=4)
    assert "extra.py: exists and was not installed by zpatch" in error_line(r)
    assert tree_snapshot(checkout) == before


def test_untracked_file_where_a_patch_creates_one_is_kept_with_and_without_3way(zpatch, world, checkout):
    mine = checkout / "custom_nodes/ComfyUI-GGUF/tokenizer_util.py"
    mine.write_text("my own\n")
    before = tree_snapshot(checkout)
    for extra in ([], ["--3way"]):
        r = zpatch("apply", checkout, *extra, expect=4)
        assert "tokenizer_util.py: exists, but is neither upstream's nor zpatch's" in error_line(r)
        assert tree_snapshot(checkout) == before


def test_3way_conflict_deletes_nothing_it_did_not_write(zpatch, world, checkout):
    """The old rollback deleted every file the series would create; now nothing is written until all merged."""
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    (gguf / "loader.py").write_text(replace_line(LOADER_PY, "loader line 35\n", "loader line 35 upstream\n"))
    git("commit", "-q", "-am", "upstream moved under hunk 3", cwd=gguf)
    (gguf / ".git/info/exclude").write_text("ignored.txt\n")
    (gguf / "ignored.txt").write_text("keep\n")
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, "--3way", expect=5)
    assert "3-way merge left conflicts in loader.py" in error_line(r)
    assert tree_snapshot(checkout) == before


def test_symlinked_node_folder_is_never_followed_by_unapply_or_apply(zpatch, world, checkout, tmp_path):
    zpatch("apply", checkout)
    node = checkout / "custom_nodes/ComfyUI-ZImage-Fix"
    outside = tmp_path / "outside-node"
    shutil.copytree(node, outside)
    (outside / "__pycache__").mkdir()
    (outside / "__pycache__/nodes.cpython-311.pyc").write_bytes(b"pyc")
    (outside / "unrelated.txt").write_text("mine\n")
    shutil.rmtree(node)
    node.symlink_to(outside)
    snap = tree_snapshot(outside)
    r = zpatch("unapply", checkout, expect=4)
    assert "ComfyUI-ZImage-Fix: is a symlink" in error_line(r)
    r = zpatch("apply", checkout, expect=4)
    assert tree_snapshot(outside) == snap


def test_unapply_removes_only_what_it_installed_and_its_own_bytecode(zpatch, checkout):
    zpatch("apply", checkout)
    node = checkout / "custom_nodes/ComfyUI-ZImage-Fix"
    (node / "__pycache__").mkdir()
    (node / "__pycache__/nodes.cpython-311.pyc").write_bytes(b"pyc")
    (node / "my_notes.txt").write_text("mine\n")
    zpatch("unapply", checkout)
    assert sorted(p.name for p in node.rglob("*")) == ["my_notes.txt"]
    zpatch("apply", checkout, expect=4)      # a folder holding someone's file: refuse rather than mix
    (node / "my_notes.txt").unlink()
    zpatch("apply", checkout)                # an empty one is fine


# ---------------------------------------------------------------- 5. the checkout lock

def test_a_second_zpatch_on_a_locked_checkout_exits_busy_and_changes_nothing(zpatch, checkout):
    zdir = checkout / ".git/zpatch"
    zdir.mkdir(parents=True)
    fd = os.open(zdir / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"4242\n", 0)
    try:
        before = tree_snapshot(checkout)
        r = zpatch("apply", checkout, expect=10)
        assert "another zpatch (pid 4242) is working on this checkout" in error_line(r)
        assert tree_snapshot(checkout) == before
        assert zpatch.json("unapply", checkout, expect=10)["exit_code"] == 10
        os.ftruncate(fd, 0)                   # held, its pid not written yet: no "(pid ?)"
        assert error_line(zpatch("apply", checkout, expect=10)).endswith(
            f"{checkout}: another zpatch is working on this checkout")
    finally:
        os.close(fd)
    zpatch("apply", checkout)


# ---------------------------------------------------------------- 6. status sees inside nested repositories

def test_status_sees_edits_and_untracked_files_inside_the_nested_repository(zpatch, checkout):
    zpatch("apply", checkout)
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    (gguf / "nodes.py").write_text("GGUF = 2\n")
    (gguf / "new_file.py").write_text("x\n")
    st = zpatch.json("status", checkout, expect=1)
    assert st["upstreams"][1]["foreign_changes"] == [{"path": "new_file.py", "git_status": "??", "in_patched_file": False},
                                                     {"path": "nodes.py", "git_status": " M", "in_patched_file": False}]
    assert st["upstreams"][0]["foreign_changes"] == []
    assert "foreign    M nodes.py" in zpatch("status", checkout, expect=1).stdout


# ---------------------------------------------------------------- 7. the record is checked, not trusted

def _record(checkout):
    return checkout / ".git/zpatch/record.json"


def test_tampered_patch_copy_is_never_used_to_write(zpatch, checkout):
    zpatch("apply", checkout)
    rec = json.loads(_record(checkout).read_text())
    sha = rec["upstreams"]["comfyui"]["patches"][0]["sha256"]
    copy = checkout / ".git/zpatch/patches" / sha
    evil = ("diff --git a/nodes.py b/nodes.py\ndeleted file mode 100644\n--- a/nodes.py\n+++ /dev/null\n"
            "@@ -1 +0,0 @@\n-NODES = 1\n")
    copy.write_text(copy.read_text() + evil)
    # HEAD moved since apply: unapply must reverse zpatch's copies, and checks them first
    (checkout / "notes.txt").write_text("x\n")
    git("add", "notes.txt", cwd=checkout)
    git("commit", "-q", "-m", "a local commit", cwd=checkout)
    before = tree_snapshot(checkout)
    r = zpatch("unapply", checkout, expect=4)
    assert "does not match its sha256 (tampered)" in error_line(r)
    assert tree_snapshot(checkout) == before
    # on the HEAD it was applied to, unapply needs no copy at all: upstream's own files come back
    git("reset", "-q", "--soft", "HEAD~1", cwd=checkout)
    git("rm", "-q", "--cached", "notes.txt", cwd=checkout)
    zpatch("unapply", checkout)
    assert (checkout / "nodes.py").read_text() == "NODES = 1\n" and (checkout / "comfy/sd.py").read_text() == SD_PY


@pytest.mark.parametrize("damage", ["absolute", "dotdot", "list", "garbage", "version", "nul"])
def test_damaged_record_is_an_error_never_a_write_elsewhere(zpatch, checkout, tmp_path, damage):
    zpatch("apply", checkout)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep\n")
    rec = json.loads(_record(checkout).read_text())
    if damage == "absolute":
        rec["node"]["path"] = str(victim)
    elif damage == "dotdot":
        rec["upstreams"]["comfyui"]["files"] = {"../victim/keep.txt": None}
    elif damage == "list":
        rec = [rec]
    elif damage == "version":
        rec["version"] = True
    elif damage == "nul":
        rec["upstreams"]["comfyui"]["files"] = {"comfy/s\u0000d.py": None}
    _record(checkout).write_text("{{{" if damage == "garbage" else json.dumps(rec))
    before = tree_snapshot(checkout)
    for cmd in ("unapply", "apply", "status"):
        r = zpatch(cmd, checkout, expect=4)
        assert "record of this checkout is damaged" in error_line(r)
    assert (victim / "keep.txt").read_text() == "keep\n"
    assert tree_snapshot(checkout) == before


# ---------------------------------------------------------------- 8. no tracebacks

@pytest.mark.parametrize("case", ["series-not-utf8", "series-is-dir", "nul-in-lock-path", "deep-toml",
                                  "long-url", "version-true"])
def test_malformed_overlay_gives_one_line_and_exit_3(zpatch, world, checkout, case):
    lock = world.overlay / "upstream.lock"
    series = world.overlay / "patches/comfyui/series"
    if case == "series-not-utf8":
        series.write_bytes(b"\xff\xfe0001.patch\n")
    elif case == "series-is-dir":
        series.unlink()
        series.mkdir()
    elif case == "nul-in-lock-path":
        lock.write_text(lock.read_text().replace('patches = "patches/comfyui"', 'patches = "patches/com\\u0000fyui"'))
    elif case == "deep-toml":
        lock.write_text(lock.read_text() + "x = " + "[" * 5000 + "]" * 5000 + "\n")
    elif case == "long-url":
        lock.write_text(lock.read_text().replace("https://example.invalid/comfyanonymous/ComfyUI",
                                                 "https://example.invalid/" + "a" * 300))
    elif case == "version-true":
        lock.write_text(lock.read_text().replace("version = 1", "version = true"))
    before = tree_snapshot(checkout)
    if case == "long-url":
        r = zpatch("checkout", checkout.parent / "fresh", expect=6)     # a clean "cannot reach", no OSError
        assert "cannot reach https://example.invalid/aaaa" in error_line(r)
    else:
        r = zpatch("apply", checkout, expect=3)
        error_line(r)
        assert "Traceback" not in r.output
    assert tree_snapshot(checkout) == before


def test_non_utf8_head_and_checkout_under_a_file(zpatch, checkout, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = zpatch("checkout", tmp_path / "afile/sub", expect=4)
    assert "cannot create it" in error_line(r)
    (checkout / ".git/HEAD").write_bytes(b"ref: refs/heads/\xff\xfe\n")
    r = zpatch("apply", checkout, expect=4)
    assert "a HEAD that cannot be read" in error_line(r) and "Traceback" not in r.output


def test_unexpected_exception_exits_9_with_the_envelope(zpatch, checkout, monkeypatch):
    from zimage_patcher import apply

    def boom(*a, **k):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(apply, "apply", boom)
    r = zpatch("apply", checkout, expect=9)
    assert "internal error in zpatch apply: RuntimeError: simulated bug" in error_line(r)
    res = zpatch.json("apply", checkout, expect=9)
    assert res["ok"] is False and res["exit_code"] == 9 and "last-error.log" in res["hint"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(apply, "apply", interrupted)
    assert zpatch.json("apply", checkout, expect=130)["exit_code"] == 130


# ---------------------------------------------------------------- 9. terminal injection

def test_control_characters_from_a_patch_never_reach_the_terminal(zpatch, world, checkout):
    evil = mailbox("diff --git a/comfy/sd.py b/comfy/sd.py\n--- a/comfy/sd.py\n+++ b/comfy/sd.py\n"
                   "@@ -1,2 +1,2 @@\n\x1b]0;pwned\x07\x1b[2J garbage\n")
    add_patch(world, "comfyui", "0002-evil.patch", evil)
    for args, code in ((("apply", checkout), 3), (("status", checkout), 3), (("check", "--no-apply"), 1),
                       (("lock",), 3)):
        r = zpatch(*args, expect=code)
        assert "\x1b" not in r.output and "\x07" not in r.output, args
    assert "\\x1b" in zpatch("check", "--no-apply", expect=1).output


# ---------------------------------------------------------------- 10. the caller's GIT_DIR

def test_inherited_git_dir_and_work_tree_do_not_redirect_zpatch(zpatch, checkout, tmp_path, monkeypatch):
    other = tmp_path / "other"                  # a hook's repository: another one, with no commit yet
    git("init", "-q", str(other))
    (other / "comfy").mkdir()
    (other / "comfy/sd.py").write_text(SD_PY)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git/index"))
    zpatch("apply", checkout)
    assert "line 10 PATCHED" in (checkout / "comfy/sd.py").read_text()
    assert (other / "comfy/sd.py").read_text() == SD_PY
    assert zpatch.json("status", checkout)["clean"]


# ---------------------------------------------------------------- 11. lock

def test_lock_never_writes_a_lock_it_cannot_read(zpatch, world):
    d = world.overlay / "patches/comfyui"
    good = (d / "series").read_text()
    (d / "series").write_text(good + "0002-bad\x1bname.patch\n")
    shutil.copy(next(d.glob("0001-*.patch")), d / "0002-bad\x1bname.patch")
    before = (world.overlay / "upstream.lock").read_bytes()
    r = zpatch("lock", expect=3)
    assert "\\x1b" in error_line(r)
    assert (world.overlay / "upstream.lock").read_bytes() == before
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace("version = 1", "version = true"))
    zpatch("lock", expect=3)


def test_lock_refuses_the_overlay_bundled_in_an_installed_zpatch(zpatch, world, tmp_path):
    bundle = tmp_path / "lib/python3.11/site-packages/zimage_patcher/_bundle"
    shutil.copytree(world.overlay, bundle)
    r = zpatch("lock", "--overlay", bundle, expect=3)
    assert "bundled into an installed zpatch" in error_line(r) and "reinstall" in r.stderr


def test_a_symlinked_nested_repository_folder_is_refused_even_inside_the_checkout(zpatch, checkout):
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    gguf.rename(checkout / "gguf-real")
    gguf.symlink_to("../gguf-real")
    before = tree_snapshot(checkout / "gguf-real")
    r = zpatch("apply", checkout, expect=4)
    assert "custom_nodes/ComfyUI-GGUF: is a symlink" in error_line(r)
    assert tree_snapshot(checkout / "gguf-real") == before


# ---------------------------------------------------------------- found by the attack of 2026-11-26

@pytest.mark.parametrize("which", ["zpatch", "zpatch/patches"])
def test_symlinked_zpatch_folders_are_refused_and_nothing_outside_is_touched(zpatch, checkout, tmp_path, which):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious\n")
    link = checkout / ".git" / which
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    before = tree_snapshot(checkout)
    for cmd in ("apply", "unapply", "status"):
        r = zpatch(cmd, checkout, expect=4)
        assert "is a symlink or not a directory" in error_line(r)
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.txt"]
    assert tree_snapshot(checkout) == before


def test_folder_sweeps_never_pass_through_a_symlink(zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    out = tmp_path / "out"
    (out / "emptydir").mkdir(parents=True)
    (checkout / "evil").symlink_to(out)
    rec = json.loads(_record(checkout).read_text())
    rec["node"]["dirs"].append("evil/emptydir")
    _record(checkout).write_text(json.dumps(rec))
    zpatch("unapply", checkout)
    assert (out / "emptydir").is_dir()


def test_a_record_naming_another_node_folder_is_refused(zpatch, checkout):
    zpatch("apply", checkout)
    import hashlib
    rec = json.loads(_record(checkout).read_text())
    rec["node"] = {"path": "comfy", "files": {"sd.py": hashlib.sha256((checkout / "comfy/sd.py").read_bytes())
                                               .hexdigest()}, "dirs": []}
    _record(checkout).write_text(json.dumps(rec))
    r = zpatch("unapply", checkout, expect=4)
    assert "records the node in 'comfy'" in error_line(r)
    assert (checkout / "comfy/sd.py").exists()


@pytest.mark.parametrize("field, value", [("path", "a\u0000b"), ("before", 123), ("dirs", [5]), ("op", "rm"),
                                          ("root", "../x")])
def test_damaged_journal_is_exit_4_not_a_crash(zpatch, checkout, field, value):
    zdir = checkout / ".git/zpatch"
    zdir.mkdir(parents=True)
    change = {"root": ".", "store": ".", "path": "comfy/sd.py", "before": None, "after": None,
              "executable": False, "prune": True}
    journal = {"version": 1, "op": "apply", "pid": 1, "record_after": "0" * 64, "dirs": [], "sweep": [],
               "changes": [change]}
    (journal if field in ("dirs", "op") else change)[field] = value
    (zdir / "journal.json").write_text(json.dumps(journal))
    before = tree_snapshot(checkout)
    for cmd in ("apply", "unapply", "status"):
        r = zpatch(cmd, checkout, expect=4)
        assert "journal of an interrupted zpatch run is damaged" in error_line(r)
    assert tree_snapshot(checkout) == before


def test_status_writes_nothing_not_even_git_objects_or_the_index(zpatch, checkout):
    (checkout / "comfy/sd.py").write_text(SD_PY + "# edited by hand\n")   # status classifies it in git
    git_files = lambda: {p: p.read_bytes() for p in (checkout / ".git").rglob("*") if p.is_file()}
    before = git_files()
    zpatch("status", checkout, expect=1)
    assert git_files() == before


def test_copies_in_patches_are_refused_because_they_cannot_be_reversed(zpatch, world, checkout):
    body = ("diff --git a/nodes.py b/nodes3.py\nsimilarity index 100%\ncopy from nodes.py\ncopy to nodes3.py\n"
            "diff --git a/comfy/sd.py b/comfy/sd.py\n--- a/comfy/sd.py\n+++ b/comfy/sd.py\n"
            "@@ -1,4 +1,4 @@\n-# line 1 of sd.py\n+# line 1 X\n # line 2 of sd.py\n # line 3 of sd.py\n"
            " # line 4 of sd.py\n")
    add_patch(world, "comfyui", "0002-copy.patch", mailbox(body))
    r = zpatch("apply", checkout, expect=3)
    assert "copies cannot be reversed" in error_line(r)


def test_two_checkouts_into_one_folder_one_waits_its_turn(zpatch, tmp_path):
    dest = tmp_path / "D"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = zpatch("checkout", dest, expect=10)
        assert "another zpatch checkout is filling it" in error_line(r)
    finally:
        os.close(fd)
    assert list(dest.iterdir()) == []
    zpatch("checkout", dest)


def test_outside_any_checkout_the_hint_is_to_name_one(zpatch, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = zpatch("status", expect=4)
    assert "not inside a ComfyUI checkout" in error_line(r) and "git clone" not in r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1]
    assert hint.startswith(f"zpatch checkout --overlay {world.overlay} ")    # the overlay the user named
    from testing import run
    follow = run.follow(hint, tmp_path, world.env)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    made = shlex.split(hint)[4]                 # zpatch checkout --overlay OV DEST --apply
    assert zpatch.json("status", made)["clean"]


def test_lock_outside_an_overlay_does_not_relock_the_installed_one(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from zimage_patcher.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZPATCH_OVERLAY", raising=False)
    r = CliRunner().invoke(main, ["lock"])
    assert r.exit_code == 3 and "no overlay" in r.output


def test_a_writer_outside_the_overlay_names_the_source_tree_it_runs_from_and_that_works(tmp_path):
    """Run from a source tree (an editable install), `zpatch lock` elsewhere refuses to guess, and its
    hint repeats the command with `--overlay` naming that tree; followed literally, it works. A copy of
    the tree runs here, so the hint never points at this repository."""
    import subprocess
    import sys
    from testing import run
    root = Path(__file__).resolve().parent.parent
    tree = tmp_path / "src"
    shutil.copytree(root / "zimage_patcher", tree / "zimage_patcher", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "patches", tree / "patches")
    shutil.copy(root / "upstream.lock", tree / "upstream.lock")
    git("init", "-q", cwd=tree)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ZPATCH_OVERLAY"}
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "lock"], cwd=elsewhere, capture_output=True,
                       text=True, env={**env, "PYTHONPATH": str(tree)})
    assert r.returncode == 3 and "no overlay" in r.stderr, r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1]
    assert shlex.split(hint) == ["zpatch", "--overlay", str(tree), "lock"]
    lock = (tree / "upstream.lock").read_bytes()
    follow = run.follow(hint, elsewhere, {})
    assert follow.returncode == 0 and "up to date" in follow.stdout, follow.stdout + follow.stderr
    assert (tree / "upstream.lock").read_bytes() == lock


def test_advice_names_the_overlay_zpatch_found_beside_itself_so_writers_work_from_the_checkout(world, tmp_path):
    """Run from an editable install, outside its tree, `zpatch status CO` finds the overlay beside the
    package; its advice `zpatch refresh CO` then failed (a writer finds the overlay only from inside it).
    The advice names the overlay, and runs as printed. A copy of the tree holding the world's overlay
    stands in for the install."""
    import subprocess
    import sys
    from testing import run
    root = Path(__file__).resolve().parent.parent
    tree = tmp_path / "src"
    shutil.copytree(root / "zimage_patcher", tree / "zimage_patcher", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("upstream.lock", "patches", "node"):
        (shutil.copytree if (world.overlay / name).is_dir() else shutil.copy)(world.overlay / name, tree / name)
    git("init", "-q", cwd=tree)
    co = world.clone_checkout(tmp_path / "ComfyUI")
    env = {**{k: v for k, v in os.environ.items() if k != "ZPATCH_OVERLAY"}, **world.env, "PYTHONPATH": str(tree)}
    zp = [sys.executable, "-m", "zimage_patcher.cli"]
    assert subprocess.run([*zp, "apply", str(co)], cwd=tmp_path, env=env, capture_output=True).returncode == 0
    sd = co / "comfy/sd.py"
    assert "line 10 PATCHED" in sd.read_text()
    sd.write_text(sd.read_text().replace("line 10 PATCHED", "line 10 PATCHED MINE"))
    r = subprocess.run([*zp, "status", str(co)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    refresh = next(x for x in r.stdout.splitlines() if "edited after apply" in x).split("`")[1]
    assert refresh == f"zpatch refresh --overlay {tree} {co}"
    done = run.follow(refresh, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"line 10 PATCHED MINE" in b"".join(p.read_bytes() for p in (tree / "patches/comfyui").glob("*.patch"))


# ---------------------------------------------------------------- found by the second attack

@pytest.mark.parametrize("autocrlf", ["true", "input"])
def test_eol_conversion_never_blocks_unapply_or_reapply(zpatch, world, tmp_path, autocrlf):
    """ComfyUI-GGUF stores CRLF; a maintainer's core.autocrlf must not make its patches irreversible."""
    world.make_gguf_crlf()
    cfg = Path(os.environ["GIT_CONFIG_GLOBAL"])
    cfg.write_text(cfg.read_text() + f"[core]\n\tautocrlf = {autocrlf}\n")
    co = world.clone_checkout(tmp_path / "C")
    git("checkout", "-q", "--detach", world.gguf_pin, cwd=co / "custom_nodes/ComfyUI-GGUF")
    pristine = tree_snapshot(co)
    zpatch("apply", co)
    assert b"line 20 x\r\n" in (co / "custom_nodes/ComfyUI-GGUF/loader.py").read_bytes()
    assert zpatch.json("status", co)["clean"]
    zpatch("unapply", co)
    assert tree_snapshot(co) == pristine
    zpatch("apply", co)
    world.build_overlay(comfy_edits=[("sd: v2", {"comfy/sd.py": replace_line(SD_PY, "line 12 of sd.py\n",
                                                                            "line 12 V2\n")})])
    zpatch("apply", co)                      # a re-apply swaps the series under autocrlf too
    assert "V2" in (co / "comfy/sd.py").read_text()


def test_an_upstream_the_overlay_no_longer_has_is_not_forgotten(zpatch, world, checkout):
    zpatch("apply", checkout)
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace("[upstream.comfyui-gguf", "[upstream.gguf"))
    before = tree_snapshot(checkout)
    for cmd in ("unapply", "apply"):
        r = zpatch(cmd, checkout, expect=4)
        assert "records patches of upstream 'comfyui-gguf', which this overlay does not have" in error_line(r)
    assert tree_snapshot(checkout) == before


def test_one_file_put_back_by_hand_is_fine_for_unapply_and_apply(zpatch, world, checkout):
    zpatch("apply", checkout)
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    git("checkout", "--", "loader.py", cwd=gguf)          # tokenizer_util.py (created) stays patched
    zpatch("apply", checkout)
    assert "loader line 35 external" in (gguf / "loader.py").read_text()
    git("checkout", "--", "loader.py", cwd=gguf)
    zpatch("unapply", checkout)
    assert (gguf / "loader.py").read_text() == LOADER_PY and not (gguf / "tokenizer_util.py").exists()


def test_hunkless_git_patches_rename_empty_file_and_binary_apply_and_reverse(zpatch, world, tmp_path):
    from testing.fixtures import FORMAT_PATCH_OPTIONS, HEADERS
    work = tmp_path / "work"
    git("clone", "-q", str(world.comfy_up), str(work))
    git("mv", "nodes.py", "nodes_renamed.py", cwd=work)
    (work / "empty.txt").write_text("")
    (work / "blob.bin").write_bytes(bytes(range(256)))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "rename, empty file, binary" + HEADERS, cwd=work)
    out = git("format-patch", *FORMAT_PATCH_OPTIONS, "--binary", "-o", str(tmp_path / "p"), "HEAD~1..HEAD", cwd=work)
    d = world.overlay / "patches/comfyui"
    name = "0002-rename-empty-file-binary.patch"
    (d / name).write_bytes(Path(out).read_bytes())
    (d / "series").write_text((d / "series").read_text() + name + "\n")
    world.relock()
    assert zpatch.json("check")["clean"]
    co = world.clone_checkout(tmp_path / "C")
    pristine = tree_snapshot(co)
    zpatch("apply", co)
    assert (co / "nodes_renamed.py").exists() and not (co / "nodes.py").exists()
    assert (co / "blob.bin").read_bytes() == bytes(range(256)) and (co / "empty.txt").read_bytes() == b""
    zpatch("unapply", co)
    assert tree_snapshot(co) == pristine
    assert zpatch.json("export", "--check")["changed"] is False


def test_a_users_file_named_like_a_temp_file_is_kept(zpatch, checkout):
    mine = checkout / "comfy/sd.py.zpatch-tmp"
    mine.write_text("precious\n")
    (checkout / "custom_nodes/ComfyUI-GGUF/loader.py.zpatch-tmp").mkdir()
    zpatch("apply", checkout)
    zpatch("unapply", checkout)
    assert mine.read_text() == "precious\n"
    assert (checkout / "custom_nodes/ComfyUI-GGUF/loader.py.zpatch-tmp").is_dir()


def test_odd_things_in_zpatch_folders_and_paths_are_errors_not_crashes(zpatch, checkout, tmp_path, monkeypatch):
    zpatch("apply", checkout)
    (checkout / ".git/zpatch/patches/junkdir").mkdir()
    zpatch("unapply", checkout)                                    # garbage collection leaves it alone
    (checkout / ".git/zpatch/record.json.tmp").mkdir()
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=4)
    assert "is in the way of zpatch's temporary file" in error_line(r)
    assert tree_snapshot(checkout) == before                       # found before the first write
    (checkout / ".git/zpatch/record.json.tmp").rmdir()
    zpatch("apply", checkout)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    r = zpatch("status", expect=4)
    assert "the current directory no longer exists" in error_line(r)
    monkeypatch.chdir(tmp_path)
    r = zpatch("apply", "x" * 300, expect=4)
    assert "Traceback" not in r.output


def test_a_newline_in_a_file_name_cannot_forge_a_status_line(zpatch, checkout):
    zpatch("apply", checkout)
    (checkout / "evil\n  applied   0009-fake.patch").write_text("x")
    out = zpatch("status", checkout, expect=1).stdout
    assert "\n  applied   0009-fake.patch" not in out and "\\n  applied   0009-fake.patch" in out


def test_lock_never_writes_through_a_symlink(zpatch, world, tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    (world.overlay / "upstream.lock.tmp").symlink_to(target)
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    p.write_text(p.read_text().replace("Last-Update: 2026-11-26", "Last-Update: 2026-11-27"))
    r = zpatch("lock", expect=4)
    assert "is in the way" in error_line(r)
    assert target.read_text() == "keep\n" and not (world.overlay / "upstream.lock").is_symlink()


def test_json_ok_is_false_whenever_the_exit_code_is_two_or_more(zpatch, world, tmp_path, monkeypatch):
    monkeypatch.setenv("ZPATCH_CACHE", str(tmp_path / "cold"))
    res = zpatch.json("check", "--offline", expect=6)
    assert res["ok"] is False
    from click.testing import CliRunner
    from zimage_patcher.cli import main
    r = CliRunner().invoke(main, ["apply", "--json=1", "x"])
    assert r.exit_code == 2 and json.loads(r.stdout)["ok"] is False


def test_the_hint_for_an_edited_file_a_patch_created_is_a_command_that_works(zpatch, world, checkout):
    """Found by an attack: the hint said `git diff` and `git checkout`, which know nothing of a file
    a patch created (untracked)."""
    import shlex
    zpatch("apply", checkout)
    mine = checkout / "custom_nodes/ComfyUI-GGUF/tokenizer_util.py"
    assert mine.exists()
    mine.write_text("MINE = 1\n")
    world.build_overlay(comfy_edits=[("sd: v2", {"comfy/sd.py": replace_line(SD_PY, "line 12 of sd.py\n",
                                                                              "line 12 V2\n")})])
    r = zpatch("apply", checkout, expect=4)
    assert "tokenizer_util.py: modified since zpatch applied it" in error_line(r)
    hint = next(l for l in r.stderr.splitlines() if l.startswith("hint:"))
    assert f"rm -f -- {shlex.quote(str(mine))}" in hint and "git checkout" not in hint and mine.read_text() == "MINE = 1\n"
    mine.unlink()                        # the user follows it (after saving the edit)
    zpatch("apply", checkout)
    assert zpatch.json("status", checkout)["clean"]


def test_following_the_save_hints_for_edits_in_both_upstreams_loses_nothing(world, zpatch, checkout, tmp_path):
    """A newcomer lost work: the hint saved every edit to one `my.patch`, so following it for the second
    repository overwrote the first. Each hint now names its own file; run literally, they keep both."""
    from testing import run
    home = tmp_path / "home"
    home.mkdir()
    zpatch("apply", checkout)
    sd, loader = checkout / "comfy/sd.py", checkout / "custom_nodes/ComfyUI-GGUF/loader.py"
    sd.write_text(sd.read_text().replace("line 11 of sd.py", "line 11 MINE-A"))
    loader.write_text(loader.read_text().replace("loader line 30", "loader line 30 MINE-B"))
    def follow_hints(err: str) -> None:
        """Run each hint's way on literally, and the next one its last step prints, until one succeeds."""
        for _ in range(3):
            hint = next(line for line in err.splitlines() if line.startswith("hint: "))
            assert "zpatch refresh" in hint
            done = run.follow(hint.split("`")[3], home, world.env)
            if done.returncode == 0:
                return
            assert done.returncode == 4, done.stdout + done.stderr
            err = done.stderr
        raise AssertionError("the hints went round in circles")

    r = zpatch("apply", checkout, expect=4)
    assert "(and 1 more file(s))" in error_line(r)                # one hint keeps both edits, ends in apply
    follow_hints(r.stderr)
    assert zpatch.json("status", checkout)["clean"]
    saved = sorted(home.glob("zpatch-saved-*"))
    assert len(saved) == 2
    texts = sorted(p.read_text() for p in saved)
    assert ["MINE-A" in t for t in texts].count(True) == 1 and ["MINE-B" in t for t in texts].count(True) == 1
    sd.write_text(sd.read_text().replace("line 11 of sd.py", "line 11 MINE-C"))     # unapply's hint too
    follow_hints(zpatch("unapply", checkout, expect=4).stderr)
    assert zpatch.json("status", checkout, expect=1)["upstreams"][0]["patches"][0]["state"] == "missing"
    assert any("MINE-C" in p.read_text() for p in home.glob("zpatch-saved-*"))
    # edit unapplies first: its refusal's way on ends in edit itself, for both upstreams' edits at once
    zpatch("apply", checkout)
    sd.write_text(sd.read_text().replace("line 11 of sd.py", "line 11 MINE-D"))
    loader.write_text(loader.read_text().replace("loader line 30", "loader line 30 MINE-E"))
    r = zpatch("edit", checkout, expect=4)
    assert "(and 1 more file(s))" in error_line(r)
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    assert hint.split("`")[3].endswith(f"zpatch edit --overlay {world.overlay} {checkout}"), hint
    follow_hints(r.stderr)
    assert zpatch.json("status", checkout)["upstreams"][0]["edit"]["branch"] == "zpatch/edit"
    kept = " ".join(p.read_text() for p in home.glob("zpatch-saved-*"))
    assert "MINE-D" in kept and "MINE-E" in kept
