""".github/workflows/upstream-drift.yml run as GitHub runs it (testing/gha.py), with a stand-in `gh`
that keeps state (testing/fake_gh.py) and a local bare repository as origin, on the fixtures'
upstreams. The smoke is testing/stub_smoke.py (the fixtures' ComfyUI is a stub); every other step
runs as written except the venv install, replaced by a link to a venv whose `zpatch` is the test's own
(its runs, and those of the fake gh and the stub smoke, forked from one server: testing/drift_job.py).

Each scenario is a day in the life of the job: what it pushes, which PRs and issues it opens, edits
or closes, and what it leaves alone."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from testing.drift_job import ROOT, TOKEN, Job, Programs
from testing.fixtures import LOADER_PY, SD_PY, commit, git, replace_line


@pytest.fixture(scope="session")
def programs():
    folder = Path(tempfile.mkdtemp(prefix="zpatch-job-"))      # short: a socket path has ~100 bytes
    served = Programs(folder)
    yield served
    served.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def job(world, tmp_path, programs):
    return Job(world, tmp_path / "job", programs)


def _marker(body: str) -> dict:
    from zimage_patcher.drift_publish import read_marker
    return read_marker(body, "pr")


def _gguf_moves(world, n=1, tag="") -> list[str]:
    return [commit(world.gguf_up, {f"w{tag}{i}.py": f"x = {i}\n"}, f"gguf work {tag}{i}") for i in range(n)]


def test_first_run_one_clean_one_conflicting_upstream(job, world):
    """ComfyUI-GGUF moves clean: a PR to its head. ComfyUI conflicts at its second commit: a PR to the
    first (partial advance) and an issue naming the commit that breaks the series."""
    c1 = commit(world.comfy_up, {"nodes.py": "NODES = 2\n"}, "comfy: unrelated")
    c2 = commit(world.comfy_up, {"comfy/sd.py": replace_line(SD_PY, "line 10 of sd.py\n", "line 10 upstream\n")},
                "comfy: rewrites line 10 \r- `0000000000000000000000000000000000000000` forged")
    commit(world.comfy_up, {"nodes.py": "NODES = 3\n"}, "comfy: later")
    g1, = _gguf_moves(world)
    res = job.run()
    assert [j for j in res.jobs] == ["check (comfyui)", "check (comfyui-gguf)", "publish"]
    prs = {(_marker(p["body"]) or {})["upstream"]: p for p in job.prs()}
    assert set(prs) == {"comfyui", "comfyui-gguf"}
    assert _marker(prs["comfyui-gguf"]["body"])["target"] == g1
    assert _marker(prs["comfyui"]["body"])["target"] == c1
    # each branch moves its own pin only, starting from main
    assert f'commit = "{g1}"' in job.lock_on("zpatch-drift/comfyui-gguf")
    assert f'commit = "{world.comfy_pin}"' in job.lock_on("zpatch-drift/comfyui-gguf")
    assert f'commit = "{c1}"' in job.lock_on("zpatch-drift/comfyui")
    assert git("rev-parse", "zpatch-drift/comfyui^", cwd=job.origin) == git("rev-parse", "main", cwd=job.origin)
    # one issue, for the upstream that needs a person, naming the first commit that breaks the series
    issues = job.issues()
    assert len(issues) == 1 and "comfyui needs a person" in issues[0]["title"]
    body = issues[0]["body"]
    assert "The first commit that breaks it: `" + c2[:12] + "`" in body and "Partial advance" in body
    # the forged line from upstream's subject stays on its line, escaped
    assert not any(line.startswith(("- `0000", "- `?`", "- \\`0000")) for line in body.splitlines())
    assert "\\x0d- \\`0000000000000000000000000000000000000000\\` forged" in body
    # the workflow's own token: the PR says checks did not run
    assert all("Checks have not run" in p["body"] for p in job.prs())
    # the check legs' artifacts and the step summary hold the reports
    assert json.loads((res.artifacts_dir / "drift-comfyui" / "drift.json").read_text())["class"] == "moved-conflict"
    assert "## Upstream drift: moved-conflict" in res.summary


def test_a_rerun_with_nothing_new_pushes_and_edits_nothing(job, world):
    _gguf_moves(world)
    commit(world.comfy_up, {"comfy/sd.py": replace_line(SD_PY, "line 10 of sd.py\n", "line 10 upstream\n")},
           "comfy: rewrites line 10")
    job.run()
    refs, writes = job.refs(), len(job.gh.writes())
    assert writes >= 3                         # label, PR, issue
    job.run()
    assert job.refs() == refs
    assert len(job.gh.writes()) == writes, job.gh.writes()[writes:]


def test_upstream_moves_again_updates_the_same_branch_and_pr(job, world):
    g1, = _gguf_moves(world)
    job.run()
    pr, = job.prs()
    g2, = _gguf_moves(world, tag="b")
    job.run()
    again, = job.prs()
    assert again["number"] == pr["number"] and _marker(again["body"])["target"] == g2
    assert f'commit = "{g2}"' in job.lock_on("zpatch-drift/comfyui-gguf")
    assert git("rev-parse", "zpatch-drift/comfyui-gguf^", cwd=job.origin) == git("rev-parse", "main", cwd=job.origin)


@pytest.mark.slow
def test_a_human_commit_on_the_branch_is_kept_until_a_fresh_branch_is_asked_for(job, world):
    _gguf_moves(world)
    job.run()
    pr, = job.prs()
    mine = job.human_push("comfyui-gguf", "a maintainer's note\n")
    g2, = _gguf_moves(world, tag="b")
    job.run()
    assert job.branch("comfyui-gguf") == mine                   # not force-pushed over
    comments = [c for c in job.gh.pr(pr["number"])["comments"]]
    assert len(comments) == 1 and "zpatch-drift:recreate" in comments[0]["body"]
    job.run()                                                   # says so once
    assert len(job.gh.pr(pr["number"])["comments"]) == 1
    job.gh.add_label("pr", pr["number"], "zpatch-drift:recreate")
    job.run()
    head = job.branch("comfyui-gguf")
    assert head != mine and f'commit = "{g2}"' in job.lock_on(head)
    assert "zpatch-drift:recreate" not in {x["name"] for x in job.gh.pr(pr["number"])["labels"]}
    assert [p["number"] for p in job.prs()] == [pr["number"]]
    # the dispatch input does the same
    mine = job.human_push("comfyui-gguf", "another note\n")
    job.run(event="workflow_dispatch", inputs={"recreate": "comfyui-gguf"})
    assert job.branch("comfyui-gguf") not in (mine, head)


@pytest.mark.slow
def test_a_pr_closed_without_merge_skips_its_target_until_upstream_moves(job, world):
    _gguf_moves(world)
    job.run()
    pr, = job.prs()
    job.gh.close_pr(pr["number"])
    writes = len(job.gh.writes())
    job.run()
    assert job.prs() == [] and len(job.gh.writes()) == writes
    g2, = _gguf_moves(world, tag="b")
    job.run()
    new, = job.prs()
    assert new["number"] != pr["number"] and _marker(new["body"])["target"] == g2


def test_current_again_closes_the_issue_and_a_merged_pr_is_left_alone(job, world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "gguf: rewrites line 20")
    c1 = commit(world.comfy_up, {"nodes.py": "NODES = 2\n"}, "comfy: unrelated")
    job.run()
    issue, = job.issues()
    pr, = job.prs()
    assert "comfyui-gguf" in issue["title"] and _marker(pr["body"])["target"] == c1
    # the maintainer merges the ComfyUI PR; upstream ComfyUI-GGUF takes its commit back
    git("push", "-q", ".", f"zpatch-drift/comfyui:main", cwd=job.origin)
    job.gh.merge_pr(pr["number"])
    git("update-ref", "refs/heads/main", world.gguf_pin, cwd=world.gguf_up)
    writes = len(job.gh.writes())
    job.run()
    assert job.issues() == [] and job.gh.issue(issue["number"])["state"] == "CLOSED"
    closing = job.gh.issue(issue["number"])["comments"][-1]["body"]
    assert "comfyui-gguf is current again" in closing
    assert [w for w in job.gh.writes()[writes:] if w["argv"][:2] != ["issue", "close"]] == []


def test_a_failed_smoke_is_bisected_and_the_pr_offers_the_last_passing_commit(job, world):
    g1, = _gguf_moves(world)
    bad = commit(world.gguf_up, {"nodes2.py": "# SMOKE: FAIL unet unexpected shape\n"}, "gguf: breaks the smoke")
    _gguf_moves(world, n=2, tag="c")
    job.run()
    pr, = job.prs()
    issue, = job.issues()
    assert _marker(pr["body"])["target"] == g1
    assert "**Semantic bisect:** the smoke first fails at `" + bad[:12] + "`" in issue["body"]
    assert "FAILED at smoke" in issue["body"] and "unet unexpected shape" in issue["body"]
    assert "--smoke" in issue["body"]


def test_the_job_that_runs_upstream_code_sees_no_token(job, world):
    _gguf_moves(world)
    secrets = {"ZPATCH_APP_PRIVATE_KEY": "-----BEGIN KEY-----secret", "ZPATCH_PUBLISH_TOKEN": "github_pat_secret"}
    res = job.run(secrets=secrets, vars={"ZPATCH_APP_ID": "4242"})
    app_token = res.jobs["publish"].outputs_of("app", "token")
    values = {TOKEN, app_token, *secrets.values()}
    for name, j in res.jobs.items():
        if name.startswith("check"):
            assert j.permissions == {"contents": "read"}
            for s in j.steps:
                assert not any(v in str(s.env) for v in values), (name, s.name)
            assert "extraheader" not in (j.workspace / ".git" / "config").read_text()
    # the stand-in smoke itself (upstream code's place) saw no token-like variable
    seen = [json.loads(line) for line in job.smoke_log.read_text().splitlines()]
    assert seen and all(s["token_vars"] == [] for s in seen)
    # the publisher used the App's token, so the PR says nothing about checks not running
    assert {c["token"] for c in job.gh.calls} == {app_token}
    pr, = job.prs()
    assert "Checks have not run" not in pr["body"]


from testing.upstream import unreachable_reason  # noqa: E402


@pytest.mark.skipif(unreachable_reason() is not None, reason=str(unreachable_reason()))
def test_the_job_on_the_real_upstreams(tmp_path, smoke_python, programs):
    """This repository's overlay, the real upstream histories (as the user's git config reaches them),
    the real smoke: ComfyUI's head conflicts from its first commit after the pin (no target: an issue
    that names that commit), ComfyUI-GGUF moves clean and gets its pull request."""
    from types import SimpleNamespace
    from zimage_patcher.drift_schema import load_report
    src = tmp_path / "src"
    for rel in ("upstream.lock", "patches", "zimage_patcher/overlay"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / rel).is_dir() else shutil.copy2)(ROOT / rel, src / rel)
    gitconfig = os.environ.get("GIT_CONFIG_GLOBAL") or str(Path.home() / ".gitconfig")
    world = SimpleNamespace(overlay=src, env={"GIT_CONFIG_GLOBAL": gitconfig})
    job = Job(world, tmp_path / "job", programs)
    job.env["ZPATCH_SMOKE_PYTHON"] = smoke_python
    res = job.run()
    reports = {n: load_report(res.artifacts_dir / f"drift-{n}" / "drift.json") for n in ("comfyui", "comfyui-gguf")}
    comfy, gguf = reports["comfyui"]["upstreams"][0], reports["comfyui-gguf"]["upstreams"][0]
    assert comfy["class"] == "moved-conflict" and comfy["target"] is None
    assert comfy["advance"]["first_bad"].startswith("e711aaf1a751")
    assert comfy["smoke"]["passed"] and comfy["smoke"]["commit"] == comfy["pin"]     # the pins still work
    assert gguf["class"] == "moved-clean" and gguf["target"] == gguf["head"] and gguf["smoke"]["passed"]
    issue, = job.issues()
    assert "comfyui needs a person" in issue["title"] and "e711aaf1a751" in issue["body"]
    pr, = job.prs()
    assert _marker(pr["body"]) ["target"] == gguf["head"]
    assert f'commit = "{gguf["head"]}"' in job.lock_on("zpatch-drift/comfyui-gguf")


@pytest.mark.slow
def test_an_issue_closed_by_a_person_stays_closed_until_the_finding_changes(job, world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "gguf: rewrites line 20")
    job.run()
    issue, = job.issues()
    job.gh.close_issue(issue["number"])
    writes = len(job.gh.writes())
    job.run()
    assert job.issues() == [] and len(job.gh.writes()) == writes       # not reopened, not opened again
    commit(world.gguf_up, {"w9.py": "x\n"}, "gguf: more work")         # the finding changes: a new head
    job.run()
    new, = job.issues()
    assert new["number"] != issue["number"]


def test_a_pr_whose_marker_a_person_removed_is_left_alone(job, world):
    import subprocess
    _gguf_moves(world)
    job.run()
    pr, = job.prs()
    env = {**job.env, "GH_TOKEN": "maintainer", "GH_REPO": "owner/overlay"}
    subprocess.run(["gh", "pr", "edit", str(pr["number"]), "--body", "my own words now"], env=env, check=True)
    _gguf_moves(world, tag="b")
    refs, writes = job.refs(), len(job.gh.writes())
    job.run()
    assert job.refs() == refs and len(job.gh.writes()) == writes
    assert job.gh.pr(pr["number"])["body"] == "my own words now"


def test_a_pat_secret_is_used_when_there_is_no_app(job, world):
    _gguf_moves(world)
    job.run(secrets={"ZPATCH_PUBLISH_TOKEN": "github_pat_only"})
    assert {c["token"] for c in job.gh.calls} == {"github_pat_only"}
    pr, = job.prs()
    assert "Checks have not run" not in pr["body"]


def test_a_mirror_poisoned_by_upstream_code_never_runs_beside_the_token(job, world, tmp_path):
    """Upstream code in the check job plants a hook in zpatch's cache. The publish job restores no
    cache the check job wrote, so the hook runs (if ever) only in later check jobs, without a token."""
    marker = tmp_path / "hook-ran.txt"
    job.env["STUB_SMOKE_POISON"] = str(marker)
    _gguf_moves(world)
    job.run()
    _gguf_moves(world, tag="b")          # the next day: the check legs restore the poisoned cache
    res = job.run()
    ran = marker.read_text().splitlines() if marker.exists() else []
    assert ran and all(line == "ran with token=none" for line in ran)   # only in check legs
    assert not any(s.uses and "cache" in s.uses for s in res.jobs["publish"].steps)


def test_a_fork_pr_with_the_same_branch_name_is_not_the_jobs(job, world):
    from zimage_patcher.drift_publish import marker
    g1, = _gguf_moves(world)
    forged = marker("pr", upstream="comfyui-gguf", target=g1, pushed="f" * 40)
    job.gh.fork_pr("zpatch-drift/comfyui-gguf", "forged\n" + forged, state="CLOSED")
    job.gh.fork_pr("zpatch-drift/comfyui-gguf", "an open one\n" + forged)
    job.run()
    ours = [p for p in job.prs() if not p["isCrossRepository"]]
    assert len(ours) == 1 and _marker(ours[0]["body"])["target"] == g1


@pytest.mark.slow
def test_a_human_commit_on_the_branch_of_a_closed_pr_is_not_overwritten(job, world):
    _gguf_moves(world)
    job.run()
    pr, = job.prs()
    job.gh.close_pr(pr["number"])
    mine = job.human_push("comfyui-gguf", "picking this up by hand\n")
    _gguf_moves(world, tag="b")
    job.run()
    assert job.branch("comfyui-gguf") == mine and job.prs() == []
    job.run(event="workflow_dispatch", inputs={"recreate": "comfyui-gguf"})
    assert job.branch("comfyui-gguf") != mine and len(job.prs()) == 1
