"""`zpatch import`: an upstream pull request (refs/pull/N/head in the fixture) or commit carried as
patches, at a chosen place; its DEP-3 fields say where it comes from; once upstream merges it, rebase
calls it upstreamed. Written through the front door: a kill leaves the overlay old or new."""
from __future__ import annotations

import shutil

import pytest

from testing import run
from testing.fixtures import GGUF_URL, commit, error_line, git, overlay_snapshot
from testing.pause import Held, zpatch_cmd

UP = "https://github.com/city96/ComfyUI-GGUF"
PATCHES = "patches/comfyui-gguf"


@pytest.fixture
def pr_world(world):
    """ComfyUI-GGUF at a GitHub URL (mapped to the fixture) with pull request 1 on a side branch."""
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace(GGUF_URL, UP))
    cfg = world.tmp / "gitconfig"
    cfg.write_text(cfg.read_text() + f'[url "{world.gguf_up}"]\n\tinsteadOf = {UP}\n')
    git("checkout", "-q", "-b", "pr1", world.gguf_pin, cwd=world.gguf_up)
    world.pr_head = commit(world.gguf_up, {"nodes.py": "GGUF = 1\nGEMMA3 = True\n"}, "Support Gemma 3 in nodes")
    git("update-ref", "refs/pull/1/head", world.pr_head, cwd=world.gguf_up)
    git("checkout", "-q", "main", cwd=world.gguf_up)
    return world


def test_import_a_pull_request_after_a_patch(pr_world, zpatch, checkout, tmp_path):
    w = pr_world
    res = zpatch.json("import", "comfyui-gguf", "--pr", "1", "--after", "0001")
    assert res["origin"] == f"{UP}/pull/1" and not res["merged_upstream"]
    (p,) = res["patches"]
    assert p["name"] == "0002-Support-Gemma-3-in-nodes.patch"
    series = (w.overlay / PATCHES / "series").read_text().split()
    assert series[1] == p["name"] and len(series) == 4
    text = (w.overlay / PATCHES / p["name"]).read_text()
    assert f"Origin: upstream, {UP}/pull/1" in text and f"Forwarded: {UP}/pull/1" in text
    assert "Applied-Upstream" not in text and "Upstream-License: test" in text
    assert zpatch.json("check")["clean"]
    state = next(x for x in zpatch.json("status", "--upstream-state")["upstreams"][1]["patches"] if x["name"] == p["name"])
    assert state["state"] == "forwarded"
    zpatch("apply", checkout)
    assert (checkout / "custom_nodes/ComfyUI-GGUF/nodes.py").read_text() == "GGUF = 1\nGEMMA3 = True\n"


def test_once_upstream_merges_it_import_says_so_and_rebase_drops_it(pr_world, zpatch):
    w = pr_world
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "pr1", cwd=w.gguf_up)
    # importing a request upstream has merged records that upstream has it (the series is still on the pin)
    res = zpatch.json("import", "comfyui-gguf", "--pr", "1")
    assert res["merged_upstream"] is True and res["origin"] == f"{UP}/pull/1"
    assert f"Applied-Upstream: {UP}/pull/1" in (w.overlay / PATCHES / res["patches"][0]["name"]).read_text()
    r = zpatch("import", "comfyui-gguf", "--pr", "1", expect=2)                # twice: it is there already
    assert "its change is already in the comfyui-gguf series" in error_line(r)
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "origin/main")
    states = {p["name"]: p["state"] for p in res["patches"]}
    assert states["0004-Support-Gemma-3-in-nodes.patch"] == "upstreamed"


def test_a_commit_that_does_not_apply_changes_nothing(pr_world, zpatch):
    w = pr_world
    git("checkout", "-q", "-b", "pr2", w.gguf_pin, cwd=w.gguf_up)
    bad = commit(w.gguf_up, {"loader.py": "entirely different\n"}, "Rewrite the loader")
    git("update-ref", "refs/pull/2/head", bad, cwd=w.gguf_up)
    git("checkout", "-q", "main", cwd=w.gguf_up)
    before = overlay_snapshot(w)
    r = zpatch("import", "comfyui-gguf", "--pr", "2", expect=5)
    assert "does not apply at place 4" in error_line(r)
    assert overlay_snapshot(w) == before
    assert "no pull request 9" in error_line(zpatch("import", "comfyui-gguf", "--pr", "9", expect=6))
    assert "--pr N or a commit" in error_line(zpatch("import", "comfyui-gguf", expect=2))
    assert overlay_snapshot(w) == before


def test_a_kill_leaves_the_overlay_old_or_new(pr_world, zpatch, tmp_path):
    w = pr_world
    start = tmp_path / "start"
    shutil.copytree(w.overlay, start)
    zpatch("import", "comfyui-gguf", "--pr", "1")
    want = overlay_snapshot(w)
    shutil.rmtree(w.overlay)
    shutil.copytree(start, w.overlay)
    old = overlay_snapshot(w)
    n = 0
    while True:
        n += 1
        r = run.zpatch("import", "--overlay", w.overlay, "comfyui-gguf", "--pr", "1", kill_at=n)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        held = Held(zpatch_cmd(w.overlay, "lock"), "overlay-held")    # the next writer recovers first
        assert overlay_snapshot(w) in (old, want), f"kill point {n}"
        held.proc.kill()
        held.proc.wait()
        shutil.rmtree(w.overlay)
        shutil.copytree(start, w.overlay)
    assert overlay_snapshot(w) == want and n > 3


def three_commit_pr(w, n: int) -> list[str]:
    """Pull request N: three commits, each building on the one before, on a side branch."""
    git("checkout", "-q", "-b", f"pr{n}", w.gguf_pin, cwd=w.gguf_up)
    out = [commit(w.gguf_up, {"gemma.py": "A = 1\n"}, "Add gemma.py")]
    out.append(commit(w.gguf_up, {"gemma.py": "A = 1\nB = 2\n"}, "More gemma"))
    out.append(commit(w.gguf_up, {"gemma.py": "A = 1\nB = 2\nC = 3\n"}, "Even more gemma"))
    git("update-ref", f"refs/pull/{n}/head", out[-1], cwd=w.gguf_up)
    git("checkout", "-q", "main", cwd=w.gguf_up)
    return out


def test_a_request_of_several_commits_comes_in_their_order(pr_world, zpatch, checkout):
    w = pr_world
    three_commit_pr(w, 3)
    res = zpatch.json("import", "comfyui-gguf", "--pr", "3")
    assert [p["name"] for p in res["patches"]] == ["0004-Add-gemma.py.patch", "0005-More-gemma.patch",
                                                   "0006-Even-more-gemma.patch"]
    zpatch("apply", checkout)
    assert (checkout / "custom_nodes/ComfyUI-GGUF/gemma.py").read_text() == "A = 1\nB = 2\nC = 3\n"


def test_a_request_merged_with_a_merge_commit_comes_whole(pr_world, zpatch):
    w = pr_world
    ours = three_commit_pr(w, 3)
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #3", "pr3", cwd=w.gguf_up)
    res = zpatch.json("import", "comfyui-gguf", "--pr", "3", "--dry-run")
    assert [p["commit"] for p in res["patches"]] == ours and res["merged_upstream"]


def test_a_merge_commit_is_refused_and_its_hint_imports_what_it_merged(pr_world, zpatch, tmp_path):
    import os
    import subprocess
    import sys
    w = pr_world
    three_commit_pr(w, 3)
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #3", "pr3", cwd=w.gguf_up)
    merge = git("rev-parse", "HEAD", cwd=w.gguf_up)
    r = zpatch("import", "comfyui-gguf", merge, expect=2)
    assert "a merge commit" in error_line(r)
    hint = next(line for line in r.output.splitlines() if line.startswith("hint: "))[len("hint: "):]
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(hint, shell=True, capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert done.returncode == 0, done.stderr
    assert len((w.overlay / PATCHES / "series").read_text().split()) == 6
    assert zpatch.json("check")["clean"]
