"""`zpatch publish`: an upstream's series as a branch of a fork, one commit per patch on the pin, the
same commit ids for the same overlay (so an unchanged series pushes nothing), installable with plain
git. A real bare "fork" remote; the push is checked by cloning it."""
from __future__ import annotations

import subprocess

from testing.fixtures import error_line, git

GGUF = "custom_nodes/ComfyUI-GGUF"


def fork(tmp_path):
    path = tmp_path / "fork.git"
    git("init", "-q", "--bare", str(path))
    return path


def test_publish_twice_gives_the_same_commits_and_pushes_nothing_the_second_time(world, zpatch, checkout, tmp_path):
    remote = fork(tmp_path)
    first = zpatch.json("publish", "comfyui-gguf", "--remote", remote)
    assert first["pushed"] and first["before"] is None and len(first["commits"]) == 3
    assert git("rev-parse", "refs/heads/zpatch/comfyui-gguf", cwd=remote) == first["commit"]
    again = zpatch.json("publish", "comfyui-gguf", "--remote", remote)
    assert again["commit"] == first["commit"] and not again["pushed"] and not again["would_push"]
    assert "Up to date" in zpatch("publish", "comfyui-gguf", "--remote", remote).output
    # each commit is the patch: author, subject; the parent chain starts at the pin
    log = git("log", "--format=%an|%s", f"{world.gguf_pin}..{first['commit']}", cwd=remote).splitlines()
    assert log == ["Fixture|loader: external tokenizer", "Fixture|loader: tokenizer", "Fixture|loader: gemma3"]
    # installed with plain git, the files are what zpatch apply writes
    zpatch("apply", checkout)
    installed = tmp_path / "installed"
    cmd = first["install"].replace("ComfyUI-GGUF", str(installed))
    assert subprocess.run(cmd, shell=True, capture_output=True).returncode == 0
    for f in ("loader.py", "nodes.py", "tokenizer_util.py"):
        assert (installed / f).read_bytes() == (checkout / GGUF / f).read_bytes()


def test_a_changed_series_rewrites_the_branch_and_a_tag_never_moves(world, zpatch, checkout, tmp_path):
    remote = fork(tmp_path)
    first = zpatch.json("publish", "comfyui-gguf", "--remote", remote, "--tag", "overlay-1")
    assert git("rev-parse", "refs/tags/overlay-1", cwd=remote) == first["commit"]
    zpatch("apply", checkout)
    p = checkout / GGUF / "loader.py"
    p.write_text(p.read_text().replace("loader line 5 gemma3\n", "loader line 5 gemma3 v2\n"))
    zpatch("refresh", checkout)
    dry = zpatch.json("publish", "comfyui-gguf", "--remote", remote, "--dry-run")
    assert dry["would_push"] and dry["forced"] and not dry["pushed"]
    assert git("rev-parse", "refs/heads/zpatch/comfyui-gguf", cwd=remote) == first["commit"]     # dry: nothing
    second = zpatch.json("publish", "comfyui-gguf", "--remote", remote)
    assert second["forced"] and second["commit"] != first["commit"]
    assert git("rev-parse", "refs/heads/zpatch/comfyui-gguf", cwd=remote) == second["commit"]
    r = zpatch("publish", "comfyui-gguf", "--remote", remote, "--tag", "overlay-1", expect=5)
    assert "tag overlay-1 already names" in error_line(r)
    assert git("rev-parse", "refs/tags/overlay-1", cwd=remote) == first["commit"]


def test_a_push_made_meanwhile_is_not_overwritten(world, zpatch, tmp_path):
    remote = fork(tmp_path)
    zpatch.json("publish", "comfyui-gguf", "--remote", remote)
    other = tmp_path / "other"
    git("clone", "-q", "--branch", "zpatch/comfyui-gguf", str(remote), str(other))
    (other / "extra.txt").write_text("theirs\n")
    git("add", "extra.txt", cwd=other)
    git("commit", "-q", "-m", "someone else's work", cwd=other)
    git("push", "-q", "origin", "HEAD:zpatch/comfyui-gguf", cwd=other)
    theirs = git("rev-parse", "HEAD", cwd=other)
    # the branch holds a commit publish did not make: publishing again would drop it, so it refuses
    r = zpatch("publish", "comfyui-gguf", "--remote", remote, expect=5)
    assert f"holds commits publish did not make (its tip {theirs[:12]})" in error_line(r)
    assert git("rev-parse", "refs/heads/zpatch/comfyui-gguf", cwd=remote) == theirs
    # its hint, followed: look at them, then publish elsewhere
    assert zpatch.json("publish", "comfyui-gguf", "--remote", remote, "--branch", "zpatch/gguf-2")["pushed"]


def test_bad_input_is_one_line(world, zpatch, tmp_path):
    r = zpatch("publish", "nope", "--remote", fork(tmp_path), expect=2)
    assert "no such upstream" in error_line(r)
    r = zpatch("publish", "comfyui", "--remote", fork(tmp_path), "--branch", "bad..name", expect=2)
    assert "not a valid git ref name" in error_line(r)
    r = zpatch("publish", "comfyui", "--remote", tmp_path / "missing.git", expect=6)
    assert "cannot read the remote" in error_line(r)
    witness = tmp_path / "pwned"
    r = zpatch("publish", "comfyui", "--remote", f"--upload-pack=touch {witness}", expect=2)
    assert "not a remote's URL or path" in error_line(r) and not witness.exists()
