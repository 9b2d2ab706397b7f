"""Where each patch stands upstream: read from the DEP-3 / OpenEmbedded fields a patch has, shown by
`status --upstream-state` and the drift report, which also asks whether a forwarded pull request was
merged (the request's head reachable from the upstream branch, in a fixture with refs/pull/N/head)."""
from __future__ import annotations

import datetime
import json

import pytest

from testing.fixtures import GGUF_URL, commit, git, replace_line, LOADER_PY
from zimage_patcher import drift_schema, patchfile, upstream_state

UP = "https://github.com/city96/ComfyUI-GGUF"
DIFF = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n a\n+b\n"


def patch(*fields: str):
    head = "From: A <a@b>\nSubject: [PATCH] x\n\nWhy.\n\n" + "".join(f + "\n" for f in fields)
    return patchfile.parse("0001-x.patch", (head + "\n" + DIFF).encode())


@pytest.mark.parametrize("fields, state, where", [
    ((), "not-forwarded", None),
    (("Forwarded: no",), "not-forwarded", None),
    (("Forwarded: not-needed",), "local-only", None),
    (("Forwarded: https://github.com/o/r/pull/3",), "forwarded", "https://github.com/o/r/pull/3"),
    (("Upstream-Status: Submitted [https://x/pr/1]",), "forwarded", "https://x/pr/1"),
    (("Upstream-Status: Denied [https://x/pr/1]",), "rejected", "https://x/pr/1"),
    (("Upstream-Status: Inappropriate [Z-Image only]",), "local-only", "Z-Image only"),
    (("Upstream-Status: Superseded [upstream's Qwen3 path]",), "superseded", "upstream's Qwen3 path"),
    (("Forwarded: https://x/pr/1", "Applied-Upstream: v1.2, commit abc"), "merged", "v1.2, commit abc"),
    (("Upstream-Status: Backport",), "merged", None),
])
def test_the_state_comes_from_the_fields(fields, state, where):
    got = upstream_state.of(patch(*fields))
    assert (got["state"], got["where"]) == (state, where)


def test_age_and_size():
    p = patch("Last-Update: 2026-11-26")
    assert upstream_state.stats(p, datetime.date(2026, 12, 3)) == {"age_days": 7, "lines_added": 1, "lines_removed": 0}


def test_the_report_schema_knows_every_state():
    assert drift_schema.UPSTREAM_STATES == upstream_state.STATES


def forwarded_as_pull_request_1(world, zpatch, monkeypatch) -> None:
    """ComfyUI-GGUF at a GitHub URL (mapped to the fixture), patch 0002 forwarded as its pull request 1,
    and upstream's request: patch 2's change on a side branch, refs/pull/1/head (not merged yet). No gh."""
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace(GGUF_URL, UP))
    cfg = world.tmp / "gitconfig"
    cfg.write_text(cfg.read_text() + f'[url "{world.gguf_up}"]\n\tinsteadOf = {UP}\n')
    zpatch("forward", "comfyui-gguf", "0002", "--forwarded", f"{UP}/pull/1")
    git("checkout", "-q", "-b", "pr1", world.gguf_pin, cwd=world.gguf_up)
    head = commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 tokenizer\n")},
                  "tokenizer")
    git("update-ref", "refs/pull/1/head", head, cwd=world.gguf_up)
    git("checkout", "-q", "main", cwd=world.gguf_up)


def test_drift_says_a_forwarded_request_was_merged(world, zpatch, monkeypatch):
    forwarded_as_pull_request_1(world, zpatch, monkeypatch)
    r = zpatch("drift", "--upstream", "comfyui-gguf", "--json", expect=None)
    rep = json.loads(r.stdout)
    (u,) = rep["upstreams"]
    p2 = next(p for p in u["patches"] if p["name"] == "0002-loader-tokenizer.patch")
    assert p2["upstream"]["state"] == "forwarded"
    assert p2["upstream"]["pull_request"] == {"number": 1, "state": "not merged", "checked_by": "git"}
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "pr1", cwd=world.gguf_up)
    r = zpatch("drift", "--upstream", "comfyui-gguf", "--json", expect=None)
    u = json.loads(r.stdout)["upstreams"][0]
    p2 = next(p for p in u["patches"] if p["name"] == "0002-loader-tokenizer.patch")
    assert p2["upstream"]["pull_request"]["state"] == "merged"
    md = zpatch("drift", "--upstream", "comfyui-gguf", "--markdown", expect=None).output
    assert "pull request #1 is merged upstream: drop this patch at the next rebase" in md
    other = next(p for p in u["patches"] if p["name"] == "0001-loader-gemma3.patch")
    assert other["upstream"] == {"state": "not-forwarded", "where": None, "field": "Forwarded", "pull_request": None}


def test_rebases_survived_come_from_the_overlay_history(world, zpatch):
    ov = world.overlay
    git("init", "-q", cwd=ov)
    git("add", "-A", cwd=ov)
    git("commit", "-q", "-m", "overlay", cwd=ov)
    moved = commit(world.gguf_up, {"nodes.py": "GGUF = 3\n"}, "upstream moves")
    zpatch("rebase", "comfyui-gguf", "--onto", moved)
    git("commit", "-q", "-am", "rebase", cwd=ov)
    (ov / "patches/comfyui-gguf/0004-late.patch").write_bytes(
        (ov / "patches/comfyui-gguf/0003-loader-external-tokenizer.patch").read_bytes().replace(
            b"tokenizer_util.py", b"late_util.py"))
    # a patch added after the rebase has survived none
    with open(ov / "patches/comfyui-gguf/series", "a") as f:
        f.write("0004-late.patch\n")
    zpatch("lock")
    git("add", "-A", cwd=ov)
    git("commit", "-q", "-m", "a late patch", cwd=ov)
    got = {p["name"]: p["rebases_survived"] for p in zpatch.json("status", "--upstream-state")["upstreams"][1]["patches"]}
    assert got == {"0001-loader-gemma3.patch": 1, "0002-loader-tokenizer.patch": 1,
                   "0003-loader-external-tokenizer.patch": 1, "0004-late.patch": 0}
    from zimage_patcher import patchset
    survived = upstream_state.rebases_survived(patchset.load(ov, verify_hashes=False))
    assert survived[("comfyui-gguf", "0004-late.patch")] == 0
    assert survived[("comfyui", "0001-sd-accept-4-D-latents.patch")] == 0


def test_status_turns_a_forwarded_patch_merged_when_its_request_is(world, zpatch, monkeypatch):
    forwarded_as_pull_request_1(world, zpatch, monkeypatch)
    p2 = lambda: zpatch.json("status", "--upstream-state")["upstreams"][1]["patches"][1]   # noqa: E731
    assert p2()["state"] == "forwarded"
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "pr1", cwd=world.gguf_up)
    assert (p2()["state"], p2()["pull_request"]["state"]) == ("merged", "merged")
    assert "its pull request is merged upstream" in zpatch("status", "--upstream-state").output
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "origin/main")           # and the next rebase drops it
    assert {p["name"]: p["state"] for p in res["patches"]}["0002-loader-tokenizer.patch"] == "upstreamed"
