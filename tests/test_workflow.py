"""checkout -> apply -> status -> unapply on real repositories, through the CLI."""
from __future__ import annotations

import subprocess

from testing.fixtures import COMFY_URL, LOADER_PY, SD_PY, git, tree_snapshot, commit, replace_line


def test_checkout_clones_both_upstreams_at_their_pins(world, zpatch, tmp_path):
    dest = tmp_path / "ComfyUI"
    res = zpatch.json("checkout", dest)
    assert [u["name"] for u in res["upstreams"]] == ["comfyui", "comfyui-gguf"]
    assert git("rev-parse", "HEAD", cwd=dest) == world.comfy_pin
    nested = dest / "custom_nodes" / "ComfyUI-GGUF"
    assert git("rev-parse", "--show-toplevel", cwd=nested) == str(nested.resolve())
    assert git("rev-parse", "HEAD", cwd=nested) == world.gguf_pin
    # origin names the real upstream, not the cache
    assert git("config", "remote.origin.url", cwd=dest) == COMFY_URL
    assert git("status", "--porcelain", cwd=dest) == ""
    # a second checkout reuses the cache (works with --offline)
    zpatch("checkout", tmp_path / "second", "--offline")
    assert git("rev-parse", "HEAD", cwd=tmp_path / "second") == world.comfy_pin


def test_checkout_exclude_uses_sparse_checkout(world, zpatch, tmp_path):
    dest = tmp_path / "slim"
    zpatch("checkout", dest, "--exclude", "nodes.py")
    assert not (dest / "nodes.py").exists()
    assert (dest / "comfy" / "sd.py").exists()
    assert git("status", "--porcelain", cwd=dest) == ""


def test_apply_status_unapply_round_trip(world, zpatch, tmp_path):
    dest = tmp_path / "ComfyUI"
    zpatch("checkout", dest)
    before = tree_snapshot(dest)

    st = zpatch.json("status", dest, expect=1)
    assert [p["state"] for u in st["upstreams"] for p in u["patches"]] == ["missing"] * 4
    assert st["node"]["state"] == "missing"

    out = zpatch("apply", dest).stdout
    assert "Applied: comfyui 1 patch, comfyui-gguf 3 patches; installed custom_nodes/ComfyUI-ZImage-Fix." in out
    assert "Next: zpatch status" in out
    assert "line 10 PATCHED" in (dest / "comfy/sd.py").read_text()
    loader = (dest / "custom_nodes/ComfyUI-GGUF/loader.py").read_text()
    assert "gemma3" in loader and "tokenizer" in loader and "external" in loader
    assert (dest / "custom_nodes/ComfyUI-GGUF/tokenizer_util.py").exists()
    assert (dest / "custom_nodes/ComfyUI-ZImage-Fix/__init__.py").read_text() == "NODE_CLASS_MAPPINGS = {}\n"

    st = zpatch.json("status", dest)
    assert st["clean"] is True
    assert all(p["state"] == "applied" for u in st["upstreams"] for p in u["patches"])
    assert st["node"]["state"] == "installed"

    res = zpatch.json("unapply", dest)
    assert {u["name"]: u["reversed"] for u in res["upstreams"]} == {
        "comfyui": ["0001-sd-accept-4-D-latents.patch"],
        "comfyui-gguf": ["0001-loader-gemma3.patch", "0002-loader-tokenizer.patch",
                         "0003-loader-external-tokenizer.patch"]}
    assert tree_snapshot(dest) == before
    assert git("status", "--porcelain", "--ignored", cwd=dest) == "!! custom_nodes/"
    assert git("status", "--porcelain", "--ignored", cwd=dest / "custom_nodes/ComfyUI-GGUF") == ""
    assert "Nothing applied" in zpatch("unapply", dest).stdout


def test_second_apply_is_a_noop_that_touches_nothing(world, zpatch, tmp_path):
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    res = zpatch.json("apply", dest)
    assert res["changed"] is False
    assert "Already applied" in zpatch("apply", dest).stdout
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == stamp


def test_apply_on_an_existing_install_keeps_unrelated_user_changes(world, zpatch, tmp_path):
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    (dest / "nodes.py").write_text("NODES = 'mine'\n")          # tracked, not patched
    (dest / "my_notes.txt").write_text("keep me\n")             # untracked
    zpatch("apply", dest)
    zpatch("unapply", dest)
    assert (dest / "nodes.py").read_text() == "NODES = 'mine'\n"
    assert (dest / "my_notes.txt").read_text() == "keep me\n"
    assert (dest / "comfy/sd.py").read_text() == SD_PY


def test_status_reports_modified_patches_and_foreign_changes(world, zpatch, tmp_path):
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    sd = dest / "comfy/sd.py"
    sd.write_text(sd.read_text() + "# my tweak\n")
    (dest / "nodes.py").write_text("changed\n")
    st = zpatch.json("status", dest, expect=1)
    comfy = st["upstreams"][0]
    assert comfy["patches"] == [{"name": "0001-sd-accept-4-D-latents.patch", "state": "modified",
                                 "edited": ["comfy/sd.py"]}]
    assert comfy["foreign_changes"] == [{"path": "nodes.py", "git_status": " M", "in_patched_file": False}]
    text = zpatch("status", dest, expect=1).stdout
    assert "foreign    M nodes.py" in text and "edited after apply" in text
    assert "to apply what is missing" not in text        # the patch is applied: an edit is not a missing patch
    # the nested repository's files are not reported as foreign to ComfyUI
    assert st["upstreams"][1]["foreign_changes"] == []
    # and unapply refuses rather than lose the tweak
    r = zpatch("unapply", dest, expect=4)
    assert "comfy/sd.py: modified since zpatch applied it" in r.output
    assert sd.read_text().endswith("# my tweak\n")


def test_status_sees_patches_applied_by_hand(world, zpatch, tmp_path):
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    git("am", "-q", str(world.overlay / "patches/comfyui/0001-sd-accept-4-D-latents.patch"), cwd=dest)
    gguf = dest / "custom_nodes/ComfyUI-GGUF"
    # patches 1 and 2 by hand, in the work tree only: they touch the same file as patch 3
    for n in ("0001-loader-gemma3.patch", "0002-loader-tokenizer.patch"):
        git("apply", str(world.overlay / "patches/comfyui-gguf" / n), cwd=gguf)
    st = zpatch.json("status", dest, expect=1)
    assert st["upstreams"][0]["patches"][0]["state"] == "applied"
    assert st["upstreams"][0]["at_pin"] is False
    assert [p["state"] for p in st["upstreams"][1]["patches"]] == ["applied", "applied", "missing"]
    # all three by hand: every one is seen as applied (git apply --check alone would not chain them)
    git("apply", str(world.overlay / "patches/comfyui-gguf/0003-loader-external-tokenizer.patch"), cwd=gguf)
    st = zpatch.json("status", dest, expect=1)
    assert [p["state"] for p in st["upstreams"][1]["patches"]] == ["applied"] * 3
    # an edit under patch 2's hunk makes it conflict
    loader = gguf / "loader.py"
    loader.write_text(loader.read_text().replace("# loader line 19\n", "# loader line 19 edited\n"))
    st = zpatch.json("status", dest, expect=1)
    assert [p["state"] for p in st["upstreams"][1]["patches"]] == ["applied", "conflict", "applied"]


def test_changed_overlay_is_reapplied_and_says_so(world, zpatch, tmp_path):
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    world.build_overlay(comfy_edits=[("sd: v2", {"comfy/sd.py": replace_line(SD_PY, "line 12 of sd.py\n", "line 12 V2\n")})])
    out = zpatch("apply", dest).stdout
    assert "Replaced the applied patches of comfyui" in out   # gguf's too when the date ticked
    text = (dest / "comfy/sd.py").read_text()
    assert "line 12 V2" in text and "PATCHED" not in text
    zpatch("unapply", dest)
    assert (dest / "comfy/sd.py").read_text() == SD_PY


def test_allow_drift_applies_three_way_on_a_moved_upstream(world, zpatch, tmp_path):
    moved = commit(world.comfy_up, {"comfy/sd.py": replace_line(SD_PY, "line 30 of sd.py\n", "line 30 upstream\n")},
                   "upstream moves")
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    git("checkout", "-q", "--detach", moved, cwd=dest)
    r = zpatch("apply", dest, expect=4)
    assert "pinned at" in r.output and "--3way" in r.output
    zpatch("apply", dest, "--3way")
    text = (dest / "comfy/sd.py").read_text()
    assert "line 10 PATCHED" in text and "line 30 upstream" in text
    assert git("diff", "--cached", "--name-only", cwd=dest) == ""   # index left alone
    out = zpatch("status", dest, expect=1).output      # off the pin on purpose: no advice to merge again
    assert "--3way" not in out and "off pin" not in out


def test_console_script_runs(world, tmp_path):
    r = subprocess.run(["zpatch", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "zpatch checkout ./ComfyUI" in r.stdout
    for cmd in ("checkout", "apply", "unapply", "status", "check", "lock"):
        r = subprocess.run(["zpatch", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "Example:" in r.stdout and "--json" in r.stdout and "Exit codes" in r.stdout


def test_verify_runs_the_chain_and_reports_each_step(world, zpatch, tmp_path):
    res = zpatch.json("verify", "--no-smoke", "--keep", tmp_path / "v")
    assert res["ok"] is True and res["passed"] is True
    assert [s["step"] for s in res["steps"]] == ["checkout", "check", "apply", "status", "compile"]
    assert all(s["ok"] for s in res["steps"])
    assert (tmp_path / "v/ComfyUI/custom_nodes/ComfyUI-ZImage-Fix/__init__.py").exists()


def test_verify_stops_at_the_failing_step(world, zpatch, tmp_path):
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace("+# loader line 20 tokenizer", "+def broken(:"))
    world.relock()
    r = zpatch("verify", "--no-smoke", expect=5)
    assert "FAIL compile" in r.stdout and "does not compile" in r.stderr
    import re
    import shutil
    shutil.rmtree(re.search(r"kept in (\S+) \(remove it", r.stdout).group(1))


def test_noop_fast_path_reads_head_on_a_branch_too(world, zpatch, tmp_path):
    from zimage_patcher import git as zgit
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    git("checkout", "-q", "-b", "local", cwd=dest)              # loose ref
    assert zgit.read_head(dest) == world.comfy_pin
    git("pack-refs", "--all", cwd=dest)                          # packed ref
    assert zgit.read_head(dest) == world.comfy_pin
    zpatch("apply", dest)
    assert "Already applied" in zpatch("apply", dest).stdout


def test_ref_absent_from_files_never_contradicts_git(world, tmp_path):
    """edit mode's "not begun" is read off the files; it may say "ask git", never a wrong "absent"."""
    from zimage_patcher import git as zgit
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    ref = "refs/zpatch/base"

    def agrees() -> bool:
        absent = zgit.ref_absent(dest, ref)
        assert not (absent and zgit.rev_parse(dest, ref) is not None)
        return absent

    assert agrees() is True                                       # no such ref: no git process needed
    git("update-ref", ref, "HEAD", cwd=dest)                      # loose
    assert agrees() is False
    git("pack-refs", "--all", cwd=dest)                           # packed only
    assert not (zgit.git_dir_of(dest) / ref).exists() and agrees() is False
    git("update-ref", "-d", ref, cwd=dest)
    assert agrees() is True
    git("update-ref", f"{ref}/nested", "HEAD", cwd=dest)          # a folder where the ref would be: ask git
    assert agrees() is False
    git("update-ref", "-d", f"{ref}/nested", cwd=dest)
    wt = tmp_path / "linked"
    git("worktree", "add", "-q", "--detach", str(wt), cwd=dest)   # refs live in the main repository
    git("update-ref", ref, "HEAD", cwd=dest)
    assert zgit.ref_absent(wt, ref) is False and zgit.rev_parse(wt, ref) is not None


def test_checkout_with_apply_is_one_step(world, zpatch, tmp_path):
    res = zpatch.json("checkout", tmp_path / "C", "--apply")
    assert res["apply"]["changed"] is True
    assert zpatch.json("status", tmp_path / "C")["clean"] is True


def test_reverting_by_hand_is_noticed_and_not_called_an_edit(world, zpatch, tmp_path):
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    git("checkout", "--", ".", cwd=dest)                    # the user reverts ComfyUI by hand
    st = zpatch.json("status", dest, expect=1)
    assert st["upstreams"][0]["patches"][0]["state"] == "missing"
    assert [p["state"] for p in st["upstreams"][1]["patches"]] == ["applied"] * 3
    assert zpatch.json("apply", dest)["changed"] is True     # re-applies, no refusal
    assert "line 10 PATCHED" in (dest / "comfy/sd.py").read_text()
    git("checkout", "--", ".", cwd=dest)
    res = zpatch.json("unapply", dest)
    assert [u["name"] for u in res["upstreams"]] == ["comfyui-gguf"]
    assert (dest / "custom_nodes/ComfyUI-GGUF/loader.py").read_text() == LOADER_PY


def test_json_envelope_and_keys_are_stable(world, zpatch, tmp_path):
    dest = tmp_path / "C"
    first = zpatch.json("checkout", dest, "--apply")
    assert {"schema", "command", "ok", "checkout", "upstreams", "missing_objects", "apply"} <= set(first)
    applied = first["apply"]
    noop = zpatch.json("apply", dest)
    # the no-op answer has the same shape as the one that changed things
    assert set(noop) == set(applied) | {"schema", "command", "ok", "exit_code"} and noop["exit_code"] == 0
    assert [set(u) for u in noop["upstreams"]] == [set(u) for u in applied["upstreams"]]
    err = zpatch.json("apply", tmp_path / "missing", expect=4)
    assert set(err) == {"schema", "command", "ok", "error", "hint", "exit_code", "details"}
    assert err["ok"] is False and err["exit_code"] == 4 and err["schema"] == 2


def test_the_off_pin_hint_works_as_printed_on_an_applied_checkout(world, zpatch, tmp_path):
    """A newcomer: on an applied checkout that had moved off its pin, the hint `git checkout <pin>`
    failed (git refuses to check out over zpatch's changes). The hint, run literally, gets back."""
    import os
    import sys
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    moved = commit(world.comfy_up, {"nodes.py": "NODES = 2\n"}, "upstream moves elsewhere")
    git("fetch", "-q", "origin", cwd=dest)
    git("checkout", "-q", "--detach", moved, cwd=dest)          # git carries zpatch's changes along
    r = zpatch("apply", dest, expect=4)
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    cmd = hint[len("hint: "):].split("; or rerun with --3way", 1)[0]
    ov = f"--overlay {world.overlay}"        # the hint names the overlay the user named
    assert cmd.startswith(f"zpatch unapply {ov} {dest} && git -C {dest} checkout --detach {world.comfy_pin}")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=world.overlay, env=env)
    assert done.returncode == 0, done.stderr
    assert git("rev-parse", "HEAD", cwd=dest) == world.comfy_pin
    assert zpatch.json("status", dest)["clean"] is True


def test_statuss_off_pin_advice_works_as_printed_after_the_overlay_moved_its_pin(world, zpatch, tmp_path):
    """A newcomer: after a rebase moved the overlay's pin, status said `git -C <repo> checkout <pin>`
    (placeholders) and `zpatch apply`, which refused (off pin). Its advice, run literally, gets there."""
    from testing import run
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    gguf = dest / "custom_nodes/ComfyUI-GGUF"
    moved = commit(world.gguf_up, {"README.md": "moved\n"}, "upstream moves on")
    zpatch("rebase", "comfyui-gguf", "--onto", moved)             # the overlay's pin is now MOVED
    text = zpatch("status", dest, expect=1).output
    assert "to apply what is missing" not in text                   # apply would refuse: off the pin
    line = next(x for x in text.splitlines() if "(off pin:" in x)
    cmd = line.split("`")[1]
    assert "<" not in cmd and f"fetch origin {moved}" in cmd       # the new pin is not in the clone yet
    r = run.follow(cmd, tmp_path, world.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert git("rev-parse", "HEAD", cwd=gguf) == moved
    assert zpatch.json("status", dest)["clean"] is True


def test_statuss_off_pin_advice_keeps_commits_no_branch_holds(world, zpatch, tmp_path):
    """A newcomer committed in the nested repository (a detached HEAD, as zpatch checks out); status's
    way back to the pin then checked out the pin over it, leaving the commit to the reflog. The advice,
    run literally, now keeps it on a branch first."""
    from testing import run
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    zpatch("apply", dest)
    gguf = dest / "custom_nodes/ComfyUI-GGUF"
    git("checkout", "-q", "--detach", cwd=gguf)
    (gguf / "mine.py").write_text("precious\n")
    git("add", "mine.py", cwd=gguf)
    git("commit", "-q", "-m", "My precious new commit", cwd=gguf)
    mine = git("rev-parse", "HEAD", cwd=gguf)
    text = zpatch("status", dest, expect=1).output
    cmd = next(x for x in text.splitlines() if "(off pin:" in x).split("`")[1]
    r = run.follow(cmd, tmp_path, world.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert git("rev-parse", "HEAD", cwd=gguf) == world.gguf_pin
    assert git("rev-parse", f"zpatch-saved-{mine[:12]}", cwd=gguf) == mine
    assert zpatch.json("status", dest)["clean"] is True


def test_verify_says_a_patch_that_no_longer_applies_is_a_conflict(world, zpatch):
    """A newcomer: verify exited 1 (findings) when a patch no longer applied, and --json said ok."""
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace(" # loader line 19\n", " # loader line 19 NOT THERE\n", 1))
    world.relock()
    res = zpatch.json("verify", "--no-smoke", expect=5)
    assert res["ok"] is False and res["exit_code"] == 5 and res["passed"] is False
    failed = res["steps"][-1]
    assert failed["step"] == "check" and "0002-loader-tokenizer.patch" in failed["error"]["error"]


def test_a_failed_verify_keeps_the_folder_its_hint_names(world, zpatch):
    """A newcomer: verify's failure hint named files in a temporary folder gone when verify exited."""
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace("+# loader line 20 tokenizer", "+def broken(:"))
    world.relock()
    res = zpatch.json("verify", "--no-smoke", expect=5)
    from pathlib import Path
    kept = Path(res["workdir"])
    assert res["kept"] is True and (kept / "ComfyUI/custom_nodes/ComfyUI-GGUF/loader.py").is_file()
    import shutil
    shutil.rmtree(kept)


def test_status_shows_a_hand_edit_on_an_unapplied_checkout_and_its_advice_works(world, zpatch, tmp_path):
    """A newcomer: status on an unapplied checkout hid a hand edit in a patched file, and its advice
    (`zpatch apply`) then refused. It names the edit; its advice, run literally, applies and keeps it."""
    import os
    import sys
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    sd = dest / "comfy/sd.py"
    sd.write_text(sd.read_text().replace("line 3 of sd.py", "line 3 MINE"))
    res = zpatch.json("status", dest, expect=1)
    assert {"path": "comfy/sd.py", "git_status": " M", "in_patched_file": True} in res["upstreams"][0]["foreign_changes"]
    out = zpatch("status", dest, expect=1).output
    import re
    line = next(ln for ln in out.splitlines() if "keep them aside with" in ln)
    cmd = " && ".join(re.findall(r"`([^`]+)`", line))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=world.overlay, env=env)
    assert done.returncode == 0, (cmd, done.stderr)
    assert zpatch.json("status", dest)["clean"] is True
    assert "line 3 MINE" in git("stash", "show", "-p", cwd=dest)            # the edit is kept


def test_every_next_command_works_on_a_checkout_path_with_a_space(world, zpatch, tmp_path):
    """A fourth trial: `Next: zpatch apply /tmp/my co` and the like were printed unquoted (exit 2 pasted)."""
    from testing import run

    def printed(out: str, label: str) -> str:
        return next(x for x in out.splitlines() if label in x).split(label, 1)[1].split("   or   ")[0]

    dest = tmp_path / "my co"
    done = run.follow(printed(zpatch("checkout", dest).output, "Next: "), tmp_path, world.env)      # apply
    assert done.returncode == 0 and zpatch.json("status", dest)["clean"], done.stdout + done.stderr
    done = run.follow(printed(done.stdout, "Next: "), tmp_path, world.env)                          # status
    assert done.returncode == 0 and "All applied and clean." in done.stdout, done.stdout + done.stderr
    done = run.follow(printed(zpatch("unapply", dest).output, "Check: "), tmp_path, world.env)      # status
    assert done.returncode == 1 and "Not clean." in done.stdout, done.stdout + done.stderr


def test_status_json_carries_the_advice_the_text_prints_and_it_works_as_given(world, zpatch, tmp_path):
    """`status --json` had no next steps: a script had to parse the text. Its `advice` holds the text's
    sentences, commands naming the overlay as printed; run from elsewhere, the one given keeps the edit."""
    import re
    from testing import run
    dest = world.clone_checkout(tmp_path / "ComfyUI")
    assert zpatch.json("status", dest, expect=1)["advice"] == [f"use `zpatch apply --overlay {world.overlay} {dest}` "
                                                              "to apply what is missing or outdated"]
    zpatch("apply", dest)
    assert zpatch.json("status", dest)["advice"] == []
    sd = dest / "comfy/sd.py"
    mine = sd.read_text() + "# MINE\n"
    sd.write_text(mine)
    res = zpatch.json("status", dest, expect=1)
    text = zpatch("status", dest, expect=1).output
    for a in res["advice"]:
        assert f"  ({a})" in text
    line = next(a for a in res["advice"] if a.startswith("edited after apply"))
    cmd = re.findall(r"`([^`]+)`", line)[-1]           # keep a copy, let apply write the file again
    assert f"--overlay {world.overlay}" in cmd
    done = run.follow(cmd, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert zpatch.json("status", dest)["clean"] is True
    saved = [p for p in tmp_path.iterdir() if p.name.startswith("zpatch-saved-")]
    assert [p.read_text() for p in saved] == [mine]
