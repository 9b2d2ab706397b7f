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
    zpatch("import", "comfyui-gguf", "--pr", "1")
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "pr1", cwd=w.gguf_up)
    # importing a request upstream has merged records that upstream has it (the series is still on the pin)
    res = zpatch.json("import", "comfyui-gguf", w.pr_head, "--dry-run")
    assert res["merged_upstream"] is True and res["origin"] == f"{UP}/commit/{w.pr_head}"
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
