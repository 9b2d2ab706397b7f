"""Authoring the patches as commits: edit, plain git, export; byte-stable round trips; every refusal."""
from __future__ import annotations

import os

from testing.fixtures import LOADER_PY, SD_PY, error_line, git, overlay_snapshot, tree_snapshot


def gguf(co):
    return co / "custom_nodes/ComfyUI-GGUF"


def test_edit_then_export_with_no_change_rewrites_nothing(zpatch, world, checkout):
    zpatch("apply", checkout)
    before = overlay_snapshot(world)
    mtimes = {p: p.stat().st_mtime_ns for p in world.overlay.rglob("*") if p.is_file() and ".zpatch" not in p.parts}
    res = zpatch.json("edit", checkout)
    assert [len(u["commits"]) for u in res["upstreams"]] == [1, 3]
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=gguf(checkout)) == "zpatch/edit"
    assert "loader line 35 external" in (gguf(checkout) / "loader.py").read_text()
    assert not (checkout / "custom_nodes/ComfyUI-ZImage-Fix").exists()      # apply was undone first
    assert zpatch.json("export", checkout, "--check")["changed"] is False
    assert zpatch.json("export", checkout)["changed"] is False
    assert overlay_snapshot(world) == before
    assert {p: p.stat().st_mtime_ns for p in world.overlay.rglob("*") if p.is_file() and ".zpatch" not in p.parts} == mtimes
    st = zpatch.json("status", checkout)
    assert st["clean"] and [u["edit"]["exported"] for u in st["upstreams"]] == [True, True]


def test_amend_new_drop_and_reorder_are_exported(zpatch, world, checkout):
    zpatch("edit", checkout)
    g = gguf(checkout)
    d = world.overlay / "patches/comfyui-gguf"
    old1 = (d / "0001-loader-gemma3.patch").read_bytes()
    # amend patch 3 (the tip), add a new commit, then drop patch 2 and move the new one first
    (g / "loader.py").write_text((g / "loader.py").read_text().replace("loader line 36\n", "loader line 36 amended\n"))
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    (g / "nodes.py").write_text("GGUF = 2\n")
    git("commit", "-q", "-a", "-m", "nodes: bump\n\nOrigin: vendor\nForwarded: no\nLast-Update: 2026-11-26\n"
        "Upstream-License: test", cwd=g)
    base = git("rev-parse", "refs/zpatch/base", cwd=g)
    c1, c2, c3, c4 = git("rev-list", "--reverse", f"{base}..HEAD", cwd=g).split()
    # git rebase -i as a maintainer would use it: the notes follow the commits (notes.rewriteRef)
    todo = g.parent / "todo.sh"
    todo.write_text(f"#!/bin/sh\nprintf 'pick {c4}\\npick {c1}\\npick {c3}\\n' > \"$1\"\n")
    todo.chmod(0o755)
    env = {**os.environ, "GIT_SEQUENCE_EDITOR": str(todo)}
    import subprocess
    subprocess.run(["git", "rebase", "-q", "-i", base], cwd=g, env=env, check=True, capture_output=True)
    check = zpatch("export", checkout, "--check", expect=1)
    assert "The patch files differ" in check.stdout
    res = zpatch.json("export", checkout)
    u = res["upstreams"][1]
    assert [(p["name"], p["state"]) for p in u["patches"]] == [
        ("0001-nodes-bump.patch", "new"), ("0001-loader-gemma3.patch", "unchanged"),
        ("0003-loader-external-tokenizer.patch", "changed")]
    assert u["removed"] == ["0002-loader-tokenizer.patch"] and not u["reordered"]   # the kept ones keep their order
    assert (d / "series").read_text().split() == ["0001-nodes-bump.patch", "0001-loader-gemma3.patch",
                                                  "0003-loader-external-tokenizer.patch"]
    assert not (d / "0002-loader-tokenizer.patch").exists()
    assert (d / "0001-loader-gemma3.patch").read_bytes() == old1
    assert b"loader line 36 amended" in (d / "0003-loader-external-tokenizer.patch").read_bytes()
    assert zpatch.json("check")["clean"]                      # the lock followed; the new series applies
    assert zpatch.json("export", checkout, "--check")["changed"] is False
    # leaving edit mode, then applying the exported overlay, gives exactly the edited files
    edited = (g / "loader.py").read_bytes()
    zpatch("unapply", checkout)
    assert git("rev-parse", "HEAD", cwd=g) == world.gguf_pin and (g / "loader.py").read_text() == LOADER_PY
    assert git("rev-parse", "-q", "--verify", "refs/zpatch/base", cwd=g, check=False) == ""
    zpatch("apply", checkout)
    assert (g / "loader.py").read_bytes() == edited


def test_unknown_mail_headers_survive_a_content_change(zpatch, world, checkout):
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    p.write_bytes(p.read_bytes().replace(b"\nSubject:", b"\nX-Zpatch-Review: alice\nSubject:", 1))
    world.relock()
    zpatch("edit", checkout)
    assert zpatch.json("export", checkout, "--check")["changed"] is False
    (checkout / "comfy/sd.py").write_text((checkout / "comfy/sd.py").read_text() + "# more\n")
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=checkout)
    zpatch("export", checkout)
    data = p.read_bytes()
    assert b"\nX-Zpatch-Review: alice\n" in data and b"+# more" in data


def test_export_check_without_a_checkout_is_the_canonical_form_gate(zpatch, world):
    assert zpatch.json("export", "--check")["changed"] is False
    p = world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"
    # a hand edit that still applies: an abbreviated index line, as a plain `git diff` writes
    text = p.read_text()
    import re
    p.write_text(re.sub(r"^index ([0-9a-f]{7})[0-9a-f]{33}\.\.([0-9a-f]{7})[0-9a-f]{33}", r"index \1..\2", text,
                        flags=re.M))
    world.relock()
    res = zpatch.json("export", "--check", expect=1)
    assert [p["state"] for p in res["upstreams"][0]["patches"]] == ["changed"]


def test_export_refuses_dirty_merges_nested_paths_name_clashes_and_no_edit_mode(zpatch, world, checkout):
    r = zpatch("export", checkout, expect=4)
    assert "not in edit mode" in error_line(r) and "zpatch edit" in r.stderr
    zpatch("edit", checkout)
    before = overlay_snapshot(world)
    (checkout / "comfy/sd.py").write_text("dirty\n")
    assert "has uncommitted changes; export writes commits only" in error_line(zpatch("export", checkout, expect=4))
    git("checkout", "-q", "--", "comfy/sd.py", cwd=checkout)
    # a merge commit
    base = git("rev-parse", "refs/zpatch/base", cwd=checkout)
    git("checkout", "-q", "-b", "side", base, cwd=checkout)
    (checkout / "side.txt").write_text("x\n")
    git("add", "side.txt", cwd=checkout)
    git("commit", "-q", "-m", "side", cwd=checkout)
    git("checkout", "-q", "zpatch/edit", cwd=checkout)
    git("merge", "-q", "--no-edit", "side", cwd=checkout)
    assert "is a merge" in error_line(zpatch("export", checkout, expect=4))
    git("reset", "-q", "--hard", "HEAD~1", cwd=checkout)
    # the parent commits into the node's folder (git itself refuses paths in the nested repository)
    node = checkout / "custom_nodes/ComfyUI-ZImage-Fix"
    node.mkdir(parents=True)
    (node / "sneaky.py").write_text("x\n")
    git("add", "-f", "custom_nodes/ComfyUI-ZImage-Fix/sneaky.py", cwd=checkout)
    git("commit", "-q", "-m", "sneaky", cwd=checkout)
    assert "inside custom_nodes/ComfyUI-ZImage-Fix" in error_line(zpatch("export", checkout, expect=4))
    git("reset", "-q", "--hard", "HEAD~1", cwd=checkout)
    # a new commit whose subject gives the name the first patch still has, moved first
    (checkout / "nodes.py").write_text("NODES = 2\n")
    git("commit", "-q", "-a", "-m", "sd: accept 4-D latents", cwd=checkout)
    new, orig = git("rev-parse", "HEAD", cwd=checkout), git("rev-parse", "HEAD~1", cwd=checkout)
    todo = checkout.parent / "todo.sh"
    todo.write_text(f"#!/bin/sh\nprintf 'pick {new}\\npick {orig}\\n' > \"$1\"\n")
    todo.chmod(0o755)
    import subprocess
    subprocess.run(["git", "rebase", "-q", "-i", base], cwd=checkout, check=True, capture_output=True,
                   env={**os.environ, "GIT_SEQUENCE_EDITOR": str(todo)})
    assert "a name another patch has" in error_line(zpatch("export", checkout, expect=4))
    assert overlay_snapshot(world) == before


def test_edit_mode_blocks_apply_and_unapply_keeps_unexported_work(zpatch, world, checkout):
    zpatch("edit", checkout)
    r = zpatch("apply", checkout, expect=4)
    assert "is in edit mode" in error_line(r) and "zpatch export" in r.stderr
    (checkout / "nodes.py").write_text("NODES = 7\n")
    git("commit", "-q", "-a", "-m", "nodes: seven", cwd=checkout)
    r = zpatch("unapply", checkout, expect=4)
    assert "not exported" in error_line(r) and "--discard" in r.stderr
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=checkout) == "zpatch/edit"
    st = zpatch.json("status", checkout, expect=1)
    assert st["upstreams"][0]["edit"]["exported"] is False
    assert [p["state"] for p in st["upstreams"][0]["patches"]] == ["committed", "new"]
    zpatch("unapply", checkout, "--discard")
    assert git("rev-parse", "HEAD", cwd=checkout) == world.comfy_pin
    assert (checkout / "comfy/sd.py").read_text() == SD_PY


def test_edit_refuses_off_pin_dirty_and_twice_changing_nothing(zpatch, world, checkout):
    (checkout / "nodes.py").write_text("mine\n")
    before = tree_snapshot(checkout)
    assert "has uncommitted changes" in error_line(zpatch("edit", checkout, expect=4))
    assert tree_snapshot(checkout) == before
    git("checkout", "-q", "--", "nodes.py", cwd=checkout)
    zpatch("edit", checkout)
    assert "already in edit mode" in error_line(zpatch("edit", checkout, expect=4))


def test_edits_dirty_hint_keeps_both_upstreams_edits_aside_in_one_go(zpatch, world, checkout, tmp_path):
    """A trial: with edits in both upstreams, edit's hint named one at a time (follow, refused again).
    One hint now stashes both; followed literally, edit mode begins, and the pops bring both back."""
    import re
    from testing import run
    (checkout / "nodes.py").write_text("mine\n")
    (gguf(checkout) / "nodes.py").write_text("GGUF = mine\n")
    r = zpatch("edit", checkout, expect=4)
    assert "(and 1 more file(s))" in error_line(r)
    hint = next(x for x in r.output.splitlines() if x.startswith("hint: "))
    go, back = re.findall(r"`([^`]+)`", hint)[:2]
    done = run.follow(go, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert zpatch.json("status", checkout)["upstreams"][0]["edit"]["branch"] == "zpatch/edit"
    done = run.follow(back, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (checkout / "nodes.py").read_text() == "mine\n" and (gguf(checkout) / "nodes.py").read_text() == "GGUF = mine\n"


def test_crlf_series_round_trips_byte_for_byte(zpatch, world, checkout, tmp_path):
    world.make_gguf_crlf()
    co = world.clone_checkout(tmp_path / "C2")
    git("checkout", "-q", "--detach", world.gguf_pin, cwd=gguf(co))
    before = overlay_snapshot(world)
    zpatch("edit", co)
    assert b"line 20 x\r\n" in (gguf(co) / "loader.py").read_bytes()
    assert zpatch.json("export", co)["changed"] is False
    assert zpatch.json("export", "--check")["changed"] is False
    assert overlay_snapshot(world) == before


def test_pre_commit_hooks_run_the_two_gates():
    """The hooks file declares both gates, and each entry is a command zpatch accepts."""
    import re
    import shlex
    from click.testing import CliRunner
    from zimage_patcher.cli import main
    from testing.upstream import ROOT
    entries = re.findall(r"^  entry: (.+)$", (ROOT / ".pre-commit-hooks.yaml").read_text(), re.M)
    assert entries == ["zpatch check --no-apply", "zpatch export --check"]
    for e in entries:
        r = CliRunner().invoke(main, [*shlex.split(e)[1:], "--help"])
        assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- found by the attack on edit/export/rebase

def test_edit_with_a_file_in_the_way_changes_nothing_and_export_needs_the_edit_branch(zpatch, world, checkout):
    from testing.fixtures import tree_snapshot
    (gguf(checkout) / "tokenizer_util.py").write_text("mine\n")      # a patch creates this file
    before = tree_snapshot(checkout)
    r = zpatch("edit", checkout, expect=4)
    assert "tokenizer_util.py: exists, and a patch creates it" in error_line(r)
    assert tree_snapshot(checkout) == before
    assert git("for-each-ref", "refs/zpatch", "refs/notes", cwd=gguf(checkout)) == ""
    (gguf(checkout) / "tokenizer_util.py").unlink()
    zpatch("edit", checkout)
    git("checkout", "-q", "--detach", "refs/zpatch/base", cwd=gguf(checkout))
    before = overlay_snapshot(world)
    r = zpatch("export", checkout, expect=4)
    assert "HEAD is not on zpatch/edit" in error_line(r)
    assert overlay_snapshot(world) == before


def test_repository_config_cannot_change_exported_bytes(zpatch, world, checkout):
    zpatch("edit", checkout)
    for kv in ("format.attach=true", "diff.orderFile=/dev/null", "format.useAutoBase=true", "format.suffix=.txt",
               "diff.noprefix=true", "diff.context=7"):
        k, v = kv.split("=")
        git("config", k, v, cwd=gguf(checkout))
    assert zpatch.json("export", checkout, "--check")["changed"] is False


def test_a_symlinked_series_folder_is_refused_before_anything_is_written(zpatch, world, checkout, tmp_path):
    d = world.overlay / "patches/comfyui-gguf"
    outside = tmp_path / "outdir"
    d.rename(outside)
    d.symlink_to(outside)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    res = zpatch.json("check", "--no-apply", expect=1)
    assert any("is a symlink" in p["message"] for p in res["problems"])
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=3)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


def test_an_empty_commit_is_named_not_blamed_on_the_overlay(zpatch, world, checkout):
    zpatch("edit", checkout)
    git("commit", "-q", "--allow-empty", "-m", "nothing here", cwd=checkout)
    before = overlay_snapshot(world)
    r = zpatch("export", checkout, expect=4)
    assert "cannot become a patch" in error_line(r) and "rebase -i" in r.stderr
    assert overlay_snapshot(world) == before
    # the hint, followed as printed (the todo edited as a person would: the empty commit's line deleted)
    import re
    import subprocess
    hint = re.search(r"git -C \S+ rebase -i [0-9a-f]+", r.stderr).group(0)
    commits = git("rev-list", "HEAD", cwd=checkout).split()
    done = subprocess.run(hint, shell=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i '/nothing here/d'", "GIT_EDITOR": "true"})
    assert done.returncode == 0, done.stderr
    assert git("rev-list", "HEAD", cwd=checkout).split() == commits[1:]      # only the empty commit gone
    assert zpatch.json("export", checkout)["changed"] is False and overlay_snapshot(world) == before


def test_a_non_ascii_message_keeps_format_patch_mime_headers(zpatch, world, checkout):
    zpatch("edit", checkout)
    (checkout / "comfy/sd.py").write_text((checkout / "comfy/sd.py").read_text() + "# more\n")
    git("commit", "-q", "-a", "--amend", "-m", "sd: accept 4-D latents — café" +
        "\n\nOrigin: vendor\nForwarded: no\nLast-Update: 2026-11-26\nUpstream-License: test", cwd=checkout)
    zpatch("export", checkout)
    data = (world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch").read_bytes()
    assert b"Content-Type: text/plain; charset=UTF-8" in data
    assert zpatch.json("export", "--check")["changed"] is False     # what format-patch writes, exactly
    assert "Edit mode, everything exported" in zpatch("status", checkout).stdout


def test_stripspace_is_gits():
    """commit messages are cleaned in Python: byte for byte what `git stripspace` makes of them."""
    import random
    from zimage_patcher import git
    rng = random.Random(7)
    alphabet = [" ", "\t", "\r", "\n", "\n", "\n", "\v", "\f", "a", "b", "#", "é", "\x00", "\x1b"]
    cases = ["", "\n", "a", "a\n\n\nb  \n\n", "  \n\ta\r\n"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(400)]
    for case in cases:
        # bytes in, so git's answer comes back without Python's newline translation
        assert git.stripspace(case) == git.run(["stripspace"], input=case.encode()).stdout, repr(case)


def test_export_check_shows_what_differs(zpatch, world, checkout):
    """A newcomer: `export --check` said "stale" without showing what differs."""
    import re
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_bytes(re.sub(rb"^index ([0-9a-f]{7})[0-9a-f]+\.\.([0-9a-f]{7})[0-9a-f]+", rb"index \1..\2",
                         p.read_bytes(), flags=re.M))          # short blob ids: applies, but not canonical
    world.relock()
    r = zpatch("export", "--check", expect=1)
    assert "--- a/patches/comfyui-gguf/0002-loader-tokenizer.patch" in r.stdout
    res = zpatch.json("export", "--check", expect=1)
    diff = next(p["diff"] for u in res["upstreams"] for p in u["patches"] if p["name"] == "0002-loader-tokenizer.patch")
    assert re.search(r"^-index [0-9a-f]{7}\.\.[0-9a-f]{7} ", diff, re.M) and re.search(r"^\+index [0-9a-f]{40}\.\.", diff, re.M)
    assert all(p["diff"] == "" for u in res["upstreams"] for p in u["patches"] if p["name"] != "0002-loader-tokenizer.patch")


def test_an_exported_change_says_when_and_exports_once(zpatch, world, checkout):
    """A newcomer: export kept a stale Last-Update on a patch it rewrote."""
    import datetime
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    zpatch("edit", checkout)
    g = gguf(checkout)
    (g / "loader.py").write_text((g / "loader.py").read_text().replace("loader line 36\n", "loader line 36 x\n"))
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    zpatch("export", checkout)
    p = world.overlay / "patches/comfyui-gguf/0003-loader-external-tokenizer.patch"
    assert f"\nLast-Update: {today}\n" in p.read_text()
    untouched = (world.overlay / "patches/comfyui-gguf/0001-loader-gemma3.patch").read_text()
    assert f"Last-Update: {today}" not in untouched          # only what changed is stamped
    assert zpatch.json("export", checkout)["changed"] is False   # the stamp alone is no change
    assert zpatch.json("export", checkout, "--check")["changed"] is False
    assert zpatch.json("export", "--check")["changed"] is False


def test_export_check_inside_an_edit_mode_checkout_checks_its_commits(zpatch, checkout, monkeypatch):
    """`zpatch export --check` with no path, where the README's authoring steps leave the user (in the
    nested repository of an edit-mode checkout), checks that checkout's commits as `export` would write
    them; elsewhere it stays the CI gate over the overlay's own files."""
    zpatch("edit", checkout)
    g = checkout / "custom_nodes/ComfyUI-GGUF"
    (g / "loader.py").write_bytes((g / "loader.py").read_bytes() + b"# amended\r\n")
    git("commit", "-q", "-a", "--amend", "--no-edit", cwd=g)
    monkeypatch.chdir(g)
    assert "The patch files differ" in zpatch("export", "--check", expect=1).stdout
    zpatch("export")
    assert zpatch.json("export", "--check")["changed"] is False
    monkeypatch.chdir(checkout.parent)
    assert zpatch.json("export", "--check")["changed"] is False
