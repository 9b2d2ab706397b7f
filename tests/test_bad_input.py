"""Every bad input: a one-line error naming the culprit, a documented exit code, nothing changed."""
from __future__ import annotations

import subprocess

import time

import pytest

from testing import run
from testing.fixtures import LOADER_PY, SD_PY, error_line, git, replace_line, tree_snapshot, write


def test_missing_checkout(zpatch, tmp_path):
    r = zpatch("apply", tmp_path / "nope", expect=4)
    assert "nope: no such directory" in error_line(r)
    assert "zpatch checkout" in r.stderr


def hinted_command(r) -> str:
    """The one command in backticks on the error's hint line."""
    return next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1]


def test_a_folder_that_is_no_checkout_gets_a_hint_that_makes_one(zpatch, world, tmp_path):
    """An empty folder: the hint makes the checkout there; a folder with files of the user's: in a new
    folder inside it, the user's files untouched; a folder that holds a checkout: the hint names it."""
    for name, mine in (("empty", {}), ("busy", {"notes.txt": "mine\n"})):
        folder = tmp_path / name
        write(folder, mine) if mine else folder.mkdir()
        r = zpatch("apply", folder, expect=4)
        assert "not inside a ComfyUI checkout" in error_line(r)
        follow = run.follow(hinted_command(r), tmp_path, world.env)
        assert follow.returncode == 0, follow.stdout + follow.stderr
        made = folder if not mine else folder / "ComfyUI"
        assert zpatch.json("status", made)["clean"]
        assert all((folder / f).read_text() == text for f, text in mine.items())
    r = zpatch("status", tmp_path / "busy", expect=4)
    assert f"pass the checkout itself, {tmp_path / 'busy' / 'ComfyUI'}, not the folder around it" in r.stderr


def test_a_subfolder_of_a_checkout_names_the_checkout_as_git_would(zpatch, checkout):
    """`zpatch status .` inside ComfyUI/comfy or inside the nested ComfyUI-GGUF acts on the checkout,
    as the same command without a path does (and as git does), never on the subfolder as a ComfyUI."""
    zpatch("apply", checkout)
    for sub in ("comfy", "custom_nodes/ComfyUI-GGUF"):
        assert zpatch.json("status", checkout / sub)["checkout"] == str(checkout)


def test_a_git_repository_that_is_not_comfyui_is_refused_without_a_clone_into_it(zpatch, world, tmp_path):
    repo = tmp_path / "dotfiles"
    write(repo, {"bashrc": "x\n"})
    git("init", "-q", cwd=repo)
    before = tree_snapshot(repo)
    r = zpatch("apply", repo, expect=4)
    assert "not a ComfyUI checkout" in error_line(r) and "git clone" not in r.stderr
    assert hinted_command(r).startswith("zpatch checkout") and str(repo / "ComfyUI") in hinted_command(r)
    assert tree_snapshot(repo) == before


def test_nested_node_missing(zpatch, checkout):
    import shutil
    shutil.rmtree(checkout / "custom_nodes/ComfyUI-GGUF")
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=4)
    assert "ComfyUI-GGUF: comfyui-gguf is missing" in error_line(r)
    assert tree_snapshot(checkout) == before


def test_nested_node_not_its_own_repository(zpatch, world, tmp_path):
    """A copied-in custom node without .git: git would silently act on ComfyUI itself."""
    dest = tmp_path / "ComfyUI"
    git("clone", "-q", str(world.comfy_up), str(dest))
    write(dest / "custom_nodes/ComfyUI-GGUF", {"loader.py": LOADER_PY})
    before = tree_snapshot(dest)
    r = zpatch("apply", dest, expect=4)
    assert "not its own git repository (git would act on" in error_line(r)
    assert tree_snapshot(dest) == before


def test_upstream_off_its_pin(zpatch, world, checkout):
    from testing.fixtures import commit
    moved = commit(world.gguf_up, {"other.py": "x\n"}, "upstream moved")
    git("fetch", "-q", "origin", cwd=checkout / "custom_nodes/ComfyUI-GGUF")
    git("checkout", "-q", "--detach", moved, cwd=checkout / "custom_nodes/ComfyUI-GGUF")
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=4)
    assert f"pinned at {world.gguf_pin[:12]}" in error_line(r)
    assert "--3way" in r.stderr
    assert tree_snapshot(checkout) == before


def test_uncommitted_change_in_a_patched_file(zpatch, checkout):
    loader = checkout / "custom_nodes/ComfyUI-GGUF/loader.py"
    loader.write_text(LOADER_PY + "# my local fix\n")
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=4)
    assert "loader.py: has uncommitted changes and a patch touches it" in error_line(r)
    assert "stash" in r.stderr
    assert tree_snapshot(checkout) == before


def test_the_stash_hints_of_apply_status_and_edit_run_as_printed_and_keep_the_edit(zpatch, world, checkout, tmp_path):
    """A second trial: edit's hint `git stash` stashed zpatch's applied files with the user's edit, and
    the stash would not pop after the next apply. Each hint now stashes only the user's files, and its
    command, run literally, goes on; the stash then pops back onto the applied checkout."""
    g = checkout / "custom_nodes/ComfyUI-GGUF"
    (g / "loader.py").write_text(LOADER_PY + "# my local fix\n")
    text = zpatch("status", checkout, expect=1).output
    cmd = next(x for x in text.splitlines() if "keep them aside" in x).split("`")[1]
    assert cmd.endswith(f"stash push -- loader.py") and "&&" not in cmd
    r = zpatch("apply", checkout, expect=4)
    follow = run.follow(hinted_command(r), tmp_path, world.env)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert git("stash", "show", "-p", cwd=g).count("+# my local fix") == 1
    (checkout / "nodes.py").write_text("NODES = 'mine'\n")             # an edit of a file no patch changes
    r = zpatch("edit", checkout, expect=4)
    assert "has uncommitted changes" in error_line(r)
    follow = run.follow(hinted_command(r), tmp_path, world.env)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    zpatch("export", checkout)
    zpatch("unapply", checkout)
    zpatch("apply", checkout)
    git("stash", "pop", "-q", cwd=checkout)
    assert (checkout / "nodes.py").read_text() == "NODES = 'mine'\n"


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t + "\n[[[", "not valid TOML"),
    (lambda t: t.replace('commit = "', 'commit = "abc', 1).replace('"abc', '"abc1234"#', 1), "not a full 40-hex commit"),
    (lambda t: t.replace("version = 1", "version = 1\ncolour = \"blue\""), "unknown key(s) colour"),
    (lambda t: t.replace('path = "custom_nodes/ComfyUI-GGUF"', 'path = "../elsewhere"'), "leaves the tree ('..')"),
    (lambda t: t.replace('path = "custom_nodes/ComfyUI-GGUF"', 'path = "/etc"'), "is an absolute path"),
    (lambda t: t.replace('branch = "main"', 'branch = "main"\nmirror = "x"', 1), "unknown key(s) mirror"),
])
def test_malformed_lock(zpatch, world, checkout, mutate, message):
    lock = world.overlay / "upstream.lock"
    lock.write_text(mutate(lock.read_text()))
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    line = error_line(r)
    assert "upstream.lock" in line and message in line
    assert tree_snapshot(checkout) == before


def test_series_names_a_missing_patch(zpatch, world, checkout):
    series = world.overlay / "patches/comfyui/series"
    series.write_text(series.read_text() + "0009-ghost.patch\n")
    r = zpatch("apply", checkout, expect=3)
    assert "names 0009-ghost.patch, which does not exist" in error_line(r)


def test_patch_not_in_series(zpatch, world, checkout):
    (world.overlay / "patches/comfyui/0002-stray.patch").write_text("x")
    r = zpatch("apply", checkout, expect=3)
    assert "0002-stray.patch: patch file is not listed in the series" in error_line(r)


def test_tampered_patch(zpatch, world, checkout):
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    p.write_text(p.read_text().replace("line 10 PATCHED", "line 10 EVIL"))
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    assert "0001-sd-accept-4-D-latents.patch: sha256" in error_line(r)
    assert "zpatch lock" in r.stderr
    assert tree_snapshot(checkout) == before


HOSTILE = {
    "absolute": ("diff --git a//etc/passwd b//etc/passwd\n--- a//etc/passwd\n+++ b//etc/passwd\n"
                 "@@ -1 +1 @@\n-root\n+evil\n", "absolute path"),
    "dotdot": ("diff --git a/../outside.py b/../outside.py\n--- a/../outside.py\n+++ b/../outside.py\n"
               "@@ -1 +1 @@\n-a\n+b\n", "leaves the tree ('..')"),
    "dotgit": ("diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout\nnew file mode 100755\n"
               "--- /dev/null\n+++ b/.git/hooks/post-checkout\n@@ -0,0 +1 @@\n+rm -rf ~\n", "points into .git"),
    "symlink": ("diff --git a/link b/link\nnew file mode 120000\n--- /dev/null\n+++ b/link\n"
                "@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n", "symlinks are not allowed"),
    "ed": ("10c10\n< line 10 of sd.py\n---\n> line 10 evil\n", "not a unified diff"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_patches_are_refused(zpatch, world, checkout, kind):
    body, message = HOSTILE[kind]
    d = world.overlay / "patches/comfyui"
    (d / "0002-hostile.patch").write_text("From: x\nSubject: [PATCH] hostile\n\n---\n" + body)
    (d / "series").write_text((d / "series").read_text() + "0002-hostile.patch\n")
    world.relock()
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    line = error_line(r)
    assert "0002-hostile.patch" in line and message in line
    assert tree_snapshot(checkout) == before
    # check reports it too, without touching anything
    res = zpatch.json("check", "--no-apply", expect=1)
    assert any(message in p["message"] for p in res["problems"])


def test_failing_third_patch_leaves_nothing_applied(zpatch, world, checkout):
    # upstream content moved under patch 3's hunk: patches 1 and 2 apply, 3 does not
    loader = checkout / "custom_nodes/ComfyUI-GGUF/loader.py"
    edited = replace_line(LOADER_PY, "loader line 34\n", "loader line 34 (upstream edit)\n")
    loader.write_text(edited)
    git("commit", "-q", "-am", "upstream edit near hunk 3", cwd=loader.parent)
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, "--3way", expect=5)
    line = error_line(r)
    assert "0003-loader-external-tokenizer.patch" in line and "loader.py" in line
    assert tree_snapshot(checkout) == before
    assert (checkout / "comfy/sd.py").read_text() == SD_PY     # the other upstream was rolled back too


def test_conflict_names_patch_file_hunk_expected_and_found(zpatch, world, tmp_path):
    # the overlay's pin content differs from what the patch expects: edit the patch context and relock
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    p.write_text(p.read_text().replace(" line 9 of sd.py\n", " line 9 of sd.py (stale)\n"))
    world.relock()
    res = zpatch.json("check", expect=1)
    conflicts = [x for x in res["problems"] if x["kind"] == "conflict"]
    assert len(conflicts) == 1
    f = conflicts[0]["failure"]
    assert (f["patch"], f["file"], f["hunk"]) == ("0001-sd-accept-4-D-latents.patch", "comfy/sd.py", 1)
    assert f["expected"] == ["# line 9 of sd.py (stale)"] and f["found"] == ["# line 9 of sd.py"]
    dest = world.clone_checkout(tmp_path / "C")
    before = tree_snapshot(dest)
    r = zpatch("apply", dest, expect=5)
    assert "expected '# line 9 of sd.py (stale)', found '# line 9 of sd.py'" in error_line(r)
    assert tree_snapshot(dest) == before


def test_check_reports_every_failing_patch(zpatch, world):
    for rel, old in (("patches/comfyui/0001-sd-accept-4-D-latents.patch", " line 9 of sd.py\n"),
                     ("patches/comfyui-gguf/0001-loader-gemma3.patch", " loader line 4\n"),
                     ("patches/comfyui-gguf/0003-loader-external-tokenizer.patch", " loader line 34\n")):
        p = world.overlay / rel
        p.write_text(p.read_text().replace(old, old.rstrip("\n") + " X\n"))
    world.relock()
    res = zpatch.json("check", expect=1)
    failing = sorted(x["patch"] for x in res["problems"] if x["kind"] == "conflict")
    assert failing == ["0001-loader-gemma3.patch", "0001-sd-accept-4-D-latents.patch",
                       "0003-loader-external-tokenizer.patch"]
    assert [s["applies"] for s in res["series"]] == [False, False]


def test_check_passes_on_a_good_overlay_and_flags_missing_headers(zpatch, world):
    res = zpatch.json("check")
    assert res["clean"] and [s["applies"] for s in res["series"]] == [True, True]
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    p.write_text(p.read_text().replace("Forwarded: no\n", ""))
    world.relock()
    res = zpatch.json("check", expect=1)
    assert [x["kind"] for x in res["problems"]] == ["headers"]
    assert "missing header(s) Forwarded" in res["problems"][0]["message"]


def test_unreachable_upstream_fails_fast_naming_url_and_remedy(zpatch, world, tmp_path, monkeypatch):
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace("https://example.invalid/comfyanonymous/ComfyUI",
                                             "https://127.0.0.1:9/nobody/ComfyUI"))
    t0 = time.monotonic()
    r = zpatch("checkout", tmp_path / "X", expect=6)
    assert time.monotonic() - t0 < 30
    line = error_line(r)
    assert "cannot reach https://127.0.0.1:9/nobody/ComfyUI" in line
    assert "insteadOf" in r.stderr and "--offline" in r.stderr
    assert not (tmp_path / "X").exists()
    r = zpatch("checkout", tmp_path / "Y", "--offline", expect=6)
    assert "is not in the cache" in error_line(r)


def test_checkout_into_non_empty_directory_is_refused_and_its_hint_works(zpatch, world, tmp_path):
    """A folder of the user's: the hint makes the checkout in a new folder inside it (it said `zpatch
    apply` there, which then refused); the checkout made: the hint applies to it. Both run literally."""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine")
    r = zpatch("checkout", tmp_path / "busy", expect=4)
    assert "already exists and is not empty" in error_line(r)
    follow = run.follow(hinted_command(r), tmp_path, world.env)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert (tmp_path / "busy" / "file").read_text() == "mine"
    made = tmp_path / "busy" / "ComfyUI"
    assert zpatch.json("status", made)["clean"]
    zpatch("unapply", made)
    for where in (made, made / "comfy", tmp_path / "busy"):     # the checkout, a folder in it, around it
        r = zpatch("checkout", where, expect=4)
        assert hinted_command(r) == f"zpatch apply --overlay {world.overlay} {made}", where
        follow = run.follow(hinted_command(r), tmp_path, world.env)
        assert follow.returncode == 0 and zpatch.json("status", made)["clean"], follow.stdout + follow.stderr
        zpatch("unapply", made)


def test_a_file_of_the_users_left_in_the_node_folder_moves_home_and_the_node_installs_again(zpatch, world, checkout,
                                                                                              tmp_path):
    """A newcomer put a note in the node's folder; unapply left the folder (the note is theirs), and apply
    then refused the folder and hinted to move it to a .disabled name, taking the note where ComfyUI
    never looks. Now the hint, run literally, keeps the note in ~ and installs the node where it was."""
    zpatch("apply", checkout)
    node = checkout / "custom_nodes/ComfyUI-ZImage-Fix"
    (node / "my note.txt").write_text("mine\n")
    zpatch("unapply", checkout)
    assert sorted(p.name for p in node.iterdir()) == ["my note.txt"]
    r = zpatch("apply", checkout, expect=4)
    assert "exists and was not installed by zpatch" in error_line(r)
    home = tmp_path / "home"
    home.mkdir()
    follow = run.follow(hinted_command(r), home, world.env)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert zpatch.json("status", checkout)["clean"]
    [saved] = home.glob("zpatch-saved-ComfyUI-ZImage-Fix-*/my note.txt")
    assert saved.read_text() == "mine\n"


def test_existing_foreign_node_folder_is_not_overwritten(zpatch, checkout):
    write(checkout / "custom_nodes/ComfyUI-ZImage-Fix", {"__init__.py": "# someone else's\n"})
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=4)
    assert "exists and was not installed by zpatch" in error_line(r)
    assert tree_snapshot(checkout) == before
    # the hint, followed literally: the folder moves to a name ComfyUI skips (no second LatentUnsqueeze)
    hint = next(line for line in r.output.splitlines() if line.startswith("hint: "))
    mv = hint.split("(", 1)[1].rsplit(")", 1)[0]
    subprocess.run(mv, shell=True, check=True)
    kept = checkout / "custom_nodes/ComfyUI-ZImage-Fix.disabled" / "__init__.py"
    assert kept.read_text() == "# someone else's\n"
    zpatch("apply", checkout)


def test_lock_rewrites_hashes_after_an_intended_edit(zpatch, world, checkout):
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    p.write_text(p.read_text().replace("Last-Update: 2026-11-26", "Last-Update: 2026-11-27"))
    zpatch("apply", checkout, expect=3)
    res = zpatch.json("lock")
    assert res["changed"] == ["patches/comfyui/0001-sd-accept-4-D-latents.patch"]
    assert zpatch.json("lock")["changed"] == []
    zpatch("apply", checkout)


def test_symlink_in_the_checkout_leading_out_of_the_tree(zpatch, checkout, tmp_path):
    import shutil
    outside = tmp_path / "outside"
    shutil.copytree(checkout / "comfy", outside)
    shutil.rmtree(checkout / "comfy")
    (checkout / "comfy").symlink_to(outside)
    before = (outside / "sd.py").read_bytes()
    r = zpatch("apply", checkout, expect=4)
    assert "comfy: is a symlink" in error_line(r)
    assert (outside / "sd.py").read_bytes() == before


def test_conflict_in_a_crlf_file_points_at_the_line_that_differs(zpatch, world, tmp_path):
    """ComfyUI-GGUF is CRLF: the report must compare exact bytes, not stumble on the CR."""
    world.make_gguf_crlf()
    assert zpatch.json("check")["clean"]
    p = next((world.overlay / "patches/comfyui-gguf").glob("0001-*.patch"))
    p.write_bytes(p.read_bytes().replace(b" # loader line 19\r\n", b" # loader line 19 (stale)\r\n"))
    world.relock()
    f = [x for x in zpatch.json("check", expect=1)["problems"] if x["kind"] == "conflict"][0]["failure"]
    assert f["file"] == "loader.py" and f["hunk"] == 1
    assert f["expected"] == ["# loader line 19 (stale)\r"] and f["found"] == ["# loader line 19\r"]


@pytest.mark.parametrize("patches", ["patches/comfyui", "patches/comfyui/", "patches//comfyui",
                                     "patches/comfyui/gguf", "patches"])
def test_two_upstreams_sharing_one_patches_folder_are_refused(zpatch, world, checkout, patches):
    """One folder (or one inside the other) for two series: each would see the other's patches as its own
    strays, and export would write one upstream's patches among the other's."""
    import shutil
    if patches in ("patches/comfyui/gguf", "patches"):    # a nested folder that holds its series: else accepted
        old = world.overlay / "patches/comfyui-gguf"
        new = world.overlay / patches
        new.mkdir(exist_ok=True)
        for f in old.iterdir():
            shutil.move(str(f), str(new / f.name))
        old.rmdir()
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace('patches = "patches/comfyui-gguf"', f'patches = "{patches}"'))
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    line = error_line(r)
    assert "upstream.lock" in line and "share" in line and "comfyui" in line and "comfyui-gguf" in line, line
    assert tree_snapshot(checkout) == before
    res = zpatch.json("check", "--no-apply", expect=1)
    assert [p["kind"] for p in res["problems"]] == ["lock"] and "comfyui-gguf" in json_problem(res)


def test_two_upstreams_at_one_path_name_both(zpatch, world, checkout):
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace('path = "custom_nodes/ComfyUI-GGUF"', 'path = "."'))
    line = error_line(zpatch("apply", checkout, expect=3))
    assert "two upstreams share one path" in line and "comfyui and comfyui-gguf" in line, line


def json_problem(res: dict) -> str:
    return " ".join(p["message"] for p in res.get("problems", [])) or res.get("error", {}).get("message", str(res))


@pytest.mark.parametrize("link", ["node/ComfyUI-ZImage-Fix", "node"])
def test_a_symlinked_node_source_folder_is_refused(zpatch, world, checkout, tmp_path, link):
    """The node's files are refused as links; so is its folder or a folder above it, which would hash
    and install whatever the link points at."""
    import shutil
    real = tmp_path / "elsewhere"
    shutil.move(str(world.overlay / link), str(real))
    (world.overlay / link).symlink_to(real)
    before = tree_snapshot(checkout)
    r = zpatch("apply", checkout, expect=3)
    assert f"{world.overlay / link}: is a symlink" in error_line(r), r.output
    assert "replace the link" in r.stderr
    assert tree_snapshot(checkout) == before
    res = zpatch.json("check", "--no-apply", expect=1)
    assert [p["kind"] for p in res["problems"]] == ["overlay"], res["problems"]


@pytest.mark.parametrize("entry", ["../x.patch", "sub/x.patch", ".hidden.patch"])
def test_a_series_entry_outside_its_folder_has_a_hint(zpatch, world, checkout, entry):
    series = world.overlay / "patches/comfyui/series"
    series.write_text(series.read_text() + entry + "\n")
    r = zpatch("apply", checkout, expect=3)
    assert "must be a file name inside" in error_line(r)
    assert "hint: a series names files in its own folder: remove the line or fix the name" in r.stderr
