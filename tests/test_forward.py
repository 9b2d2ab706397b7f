"""`zpatch forward`: patches leave the overlay as upstream-ready commits on the upstream head, pushed
to a fork, the pull request opened with a recording stand-in for gh, and `Forwarded:` written through
the overlay's front door (export stays byte-stable, a kill leaves the overlay old or new)."""
from __future__ import annotations

import os
import shutil

import pytest

from testing import fake_gh, run
from testing.pause import Held, zpatch_cmd
from testing.fixtures import GGUF_URL, commit, error_line, git, overlay_snapshot, replace_line, LOADER_PY

UP = "https://github.com/city96/ComfyUI-GGUF"
FORK = "https://github.com/me/ComfyUI-GGUF"
PATCHES = "patches/comfyui-gguf"


@pytest.fixture
def gh_world(world, tmp_path, monkeypatch):
    """The world with ComfyUI-GGUF at a GitHub URL (mapped to the fixture), upstream one commit ahead, a
    bare fork of it, and the gh stand-in on PATH knowing the fork."""
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace(GGUF_URL, UP))
    fork = tmp_path / "fork.git"
    git("init", "-q", "--bare", str(fork))
    cfg = world.tmp / "gitconfig"
    cfg.write_text(cfg.read_text() + f'[url "{world.gguf_up}"]\n\tinsteadOf = {UP}\n'
                   f'[url "{fork}"]\n\tinsteadOf = {FORK}\n')
    world.head = commit(world.gguf_up, {"nodes.py": "GGUF = 2\n"}, "upstream moves on")
    env = fake_gh.install(tmp_path / "bin", tmp_path / "github.json", world.gguf_up, repo="city96/ComfyUI-GGUF")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("GH_TOKEN", "token")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    world.gh = fake_gh.FakeGitHub(tmp_path / "github.json")
    world.gh.add_fork("me", fork)
    world.fork = fork
    return world


def test_forward_pushes_an_upstream_ready_commit_opens_the_pr_and_records_it(gh_world, zpatch):
    w = gh_world
    res = zpatch.json("forward", "comfyui-gguf", "0001", "--push", FORK, "--pr")
    (c,) = res["commits"]
    branch = "zpatch-forward/0001-loader-gemma3"
    assert res["branch"] == branch and res["onto"] == w.head
    assert git("rev-parse", f"refs/heads/{branch}", cwd=w.fork) == c["commit"]
    assert git("rev-parse", f"{c['commit']}^", cwd=w.fork) == w.head          # on upstream's head
    msg = git("log", "-1", "--format=%an <%ae>%n%B", c["commit"], cwd=w.fork)
    assert msg.startswith("Fixture <fixture@example.invalid>\nloader: gemma3")
    assert not any(line.startswith(("Origin:", "Forwarded:", "Last-Update:", "Upstream-License:"))
                   for line in msg.splitlines())
    assert "loader line 5 gemma3" in git("show", f"{c['commit']}:loader.py", cwd=w.fork)
    (pr,) = w.gh.prs
    assert pr["title"] == "loader: gemma3" and pr["headRefName"] == branch and pr["baseRefName"] == "main"
    assert "How it was tested" in pr["body"]
    create = next(x for x in w.gh.calls if x["argv"][:2] == ["pr", "create"])
    assert create["argv"][create["argv"].index("--head") + 1] == f"me:{branch}"
    assert res["pr"] == pr["url"] and res["written"] == [f"{PATCHES}/0001-loader-gemma3.patch"]
    patch = (w.overlay / PATCHES / "0001-loader-gemma3.patch").read_text()
    assert f"Forwarded: {pr['url']}" in patch and "Forwarded: no" not in patch
    assert zpatch.json("check", "--no-apply")["clean"]
    assert zpatch.json("export", "--check")["changed"] is False          # byte-stable for export
    state = zpatch.json("status", "--upstream-state")["upstreams"][1]["patches"][0]
    assert (state["state"], state["where"]) == ("forwarded", pr["url"])
    # again: nothing new to push, the same request, nothing rewritten
    before = overlay_snapshot(w)
    again = zpatch.json("forward", "comfyui-gguf", "0001", "--push", FORK, "--pr")
    assert again["pushed"]["changed"] is False and again["pr"] == pr["url"] and again["written"] == []
    assert len(w.gh.prs) == 1 and overlay_snapshot(w) == before


def test_a_patch_that_conflicts_on_the_head_is_refused_with_the_upstream_commits(gh_world, zpatch):
    w = gh_world
    moved = commit(w.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 upstream\n")},
                   "upstream changes line 20")
    before = overlay_snapshot(w)
    r = zpatch("forward", "comfyui-gguf", "0002", "--push", FORK, expect=5)
    assert "0002-loader-tokenizer.patch: does not apply on comfyui-gguf" in error_line(r)
    assert moved[:12] in r.output
    assert overlay_snapshot(w) == before and git("for-each-ref", cwd=w.fork) == ""


def test_dry_run_and_bad_input_change_nothing(gh_world, zpatch):
    w = gh_world
    before = overlay_snapshot(w)
    res = zpatch.json("forward", "comfyui-gguf", "1", "3", "--dry-run")
    assert [c["patch"] for c in res["commits"]] == ["0001-loader-gemma3.patch", "0003-loader-external-tokenizer.patch"]
    assert git("for-each-ref", cwd=w.fork) == "" and w.gh.calls == []
    assert "no patch of comfyui-gguf matches" in error_line(zpatch("forward", "comfyui-gguf", "0009", expect=2))
    assert "--pr needs --push" in error_line(zpatch("forward", "comfyui-gguf", "0001", "--pr", expect=2))
    assert "not a GitHub repository URL" in error_line(
        zpatch("forward", "comfyui", "0001", "--push", FORK, "--pr", expect=2))
    assert overlay_snapshot(w) == before


def test_a_kill_while_recording_forwarded_leaves_the_old_overlay_or_the_new(gh_world, zpatch, tmp_path):
    w = gh_world
    url = "https://github.com/city96/ComfyUI-GGUF/pull/7"
    start = tmp_path / "start"
    shutil.copytree(w.overlay, start)
    zpatch("forward", "comfyui-gguf", "0002", "--forwarded", url)
    want = overlay_snapshot(w)
    shutil.rmtree(w.overlay)
    shutil.copytree(start, w.overlay)
    old = overlay_snapshot(w)
    n = 0
    while True:
        n += 1
        r = run.zpatch("forward", "--overlay", w.overlay, "comfyui-gguf", "0002", "--forwarded", url, kill_at=n)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        # the next writer of the overlay finishes or rolls back the write first: hold one right after
        held = Held(zpatch_cmd(w.overlay, "lock"), "overlay-held")
        assert overlay_snapshot(w) in (old, want), f"kill point {n}"
        held.proc.kill()
        held.proc.wait()
        done = run.zpatch("forward", "--overlay", w.overlay, "comfyui-gguf", "0002", "--forwarded", url)
        assert done.returncode == 0 and overlay_snapshot(w) == want, f"kill point {n}"
        shutil.rmtree(w.overlay)
        shutil.copytree(start, w.overlay)
    assert overlay_snapshot(w) == want and n > 3


def test_a_stranger_s_request_from_a_branch_of_the_same_name_is_not_taken_for_ours(gh_world, zpatch):
    w = gh_world
    stranger = w.gh.fork_pr("zpatch-forward/0001-loader-gemma3", "someone else's work")
    res = zpatch.json("forward", "comfyui-gguf", "0001", "--push", FORK, "--pr")
    assert res["pr"] != w.gh.pr(stranger)["url"] and not res["pr_reused"]
    assert len([p for p in w.gh.prs if p["state"] == "OPEN"]) == 2


def test_commits_someone_pushed_to_the_forward_branch_are_not_pushed_over(gh_world, zpatch, tmp_path):
    w = gh_world
    zpatch("forward", "comfyui-gguf", "0001", "--push", FORK)
    branch = "zpatch-forward/0001-loader-gemma3"
    other = tmp_path / "reviewer"
    git("clone", "-q", "--branch", branch, str(w.fork), str(other))
    (other / "loader.py").write_text((other / "loader.py").read_text() + "# fixup\n")
    git("commit", "-q", "-am", "review fixup", cwd=other)
    git("push", "-q", "origin", f"HEAD:{branch}", cwd=other)
    theirs = git("rev-parse", "HEAD", cwd=other)
    r = zpatch("forward", "comfyui-gguf", "0001", "--push", FORK, expect=5)
    assert "holds commits forward did not make" in error_line(r)
    assert git("rev-parse", f"refs/heads/{branch}", cwd=w.fork) == theirs


@pytest.mark.parametrize("value", ["", "a\nb", "https://x/\u00a0pull/1", "no such"])
def test_a_bad_forwarded_value_is_refused_before_anything_is_pushed(gh_world, zpatch, value):
    w = gh_world
    before = overlay_snapshot(w)
    r = zpatch("forward", "comfyui-gguf", "0001", "--push", FORK, "--forwarded", value, expect=2)
    assert "not a URL" in error_line(r)
    assert git("for-each-ref", cwd=w.fork) == "" and overlay_snapshot(w) == before
