"""The test infrastructure that executes GitHub workflows: testing/gha.py (a strict local runner)
and testing/fake_gh.py (a recording `gh` with state), each proved on small workflows written here."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from testing.fake_gh import FakeGitHub, install
from testing.fixtures import _IDENTITY, commit, git, make_repo
from testing.gha import Runner, WorkflowError, evaluate, parse_expr, split_template

TOKEN = "ghs_default_token"


@pytest.fixture
def origin(tmp_path) -> Path:
    """A bare origin (default branch main, two commits), as the workflow's repository."""
    src = tmp_path / "src"
    make_repo(src, {"README.md": "hello\n", "pyproject.toml": "[project]\nname = 'x'\n"})
    commit(src, {"data/a.txt": "A\n", "data/sub/b.txt": "B\n"}, "second")
    git("clone", "-q", "--bare", str(src), str(tmp_path / "origin.git"))
    return tmp_path / "origin.git"


@pytest.fixture
def gh(tmp_path, origin):
    """The fake gh installed in tmp/bin; returns (FakeGitHub, env for subprocesses and runners)."""
    extra = install(tmp_path / "bin", tmp_path / "gh-state.json", origin)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "GIT_CONFIG_NOSYSTEM": "1", **_IDENTITY, **extra}
    return FakeGitHub(tmp_path / "gh-state.json"), env


@pytest.fixture
def make(tmp_path, origin, gh):
    """make(yaml_text, **Runner kwargs) -> Runner on a workflow file in tmp."""
    counter = iter(range(1000))

    def factory(text, **kw):
        path = tmp_path / f"wf{next(counter)}.yml"
        path.write_text(textwrap.dedent(text))
        kw.setdefault("env", gh[1])
        kw.setdefault("event", "push")
        return Runner(path, workdir=kw.pop("workdir", tmp_path / "gha"), origin=origin, **kw)
    return factory


def ev(src, **ctx):
    return evaluate(parse_expr(src), ctx, {})


# ------------------------------------------------------------------------------ expressions
@pytest.mark.parametrize("src,want", [
    ("'abc' == 'ABC'", True), ("1 == '1'", True), ("null == 0", True), ("'' == 0", True),
    ("'abc' == 0", False), ("true == 1", True), ("'it''s'", "it's"), ("0x10 == 16", True),
    ("'a' && 'b'", "b"), ("'' && 'b'", ""), ("'' || 'x'", "x"), ("!0", True), ("!''", True),
    ("2 < 10", True), ("'b' > 'A'", True), ("(1 == 1) && !(2 == 3)", True),
    ("format('{0}-{1} {{x}}', 'a', 1)", "a-1 {x}"), ("contains('Hello', 'ELL')", True),
    ("contains(fromJSON('[1, 2]'), '2')", True), ("startsWith('Abc', 'a')", True),
    ("endsWith('Abc', 'BC')", True), ("join(fromJSON('[\"a\", \"b\"]'), '+')", "a+b"),
    ("fromJSON('{\"a\": {\"b\": 3}}').a.b == 3", True), ("fromJSON('{\"a\": 1}')['A']", 1),
    ("join(fromJSON('{\"x\": [{\"n\": 1}, {\"n\": 2}]}').x.*.n)", "1,2"),
    ("toJSON(fromJSON('[1]'))", "[\n  1\n]"), ("ctx.missing.deeper", None), ("ctx.v == 'X'", True),
])
def test_expression_semantics(src, want):
    got = ev(src, ctx={"v": "x"})
    assert got == want and type(got) is type(want) or (isinstance(want, int) and got == want)


def test_template_split_and_parse_errors():
    assert split_template("a ${{ 'x}}' }} b") == ["a ", ("expr", " 'x}}' "), " b"]
    for bad in ("a ==", "nosuch(1)", "contains(1)", "a.'b'", "1 2"):
        with pytest.raises(WorkflowError):
            parse_expr(bad)
    with pytest.raises(WorkflowError):
        split_template("${{ x")


# ------------------------------------------------------------------------------ run steps
def test_default_shell_has_no_pipefail_but_shell_bash_does(make):
    res = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - id: default
                run: false | true
              - id: stops
                continue-on-error: true
                run: |
                  false
                  echo never
              - id: bash
                shell: bash
                continue-on-error: true
                run: false | true
              - id: sh
                shell: sh
                run: echo "sh $0" | grep -q sh
    """).run()
    j = res.jobs["j"]
    assert j.step("default").outcome == "success"
    assert j.step("stops").outcome == "failure" and "never" not in j.step("stops").log
    assert j.step("bash").outcome == "failure" and j.step("bash").conclusion == "success"
    assert j.step("sh").outcome == "success" and res.ok


def test_outputs_env_path_and_summary_files(make):
    res = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            env: {LEVEL: job, KEEP: job}
            steps:
              - id: w
                env: {LEVEL: step}
                run: |
                  echo "level=$LEVEL" >> "$GITHUB_OUTPUT"
                  { echo "multi<<EOF_1"; echo "line 1"; echo "a=b"; echo "EOF_1"; } >> "$GITHUB_OUTPUT"
                  echo "KEEP=from-env-file" >> "$GITHUB_ENV"
                  mkdir -p "$RUNNER_TEMP/tools" && printf '#!/bin/sh\\necho tool-ran\\n' > "$RUNNER_TEMP/tools/mytool"
                  chmod +x "$RUNNER_TEMP/tools/mytool" && echo "$RUNNER_TEMP/tools" >> "$GITHUB_PATH"
                  echo "## Hello" >> "$GITHUB_STEP_SUMMARY"
              - id: r
                run: |
                  mytool
                  echo "keep=$KEEP ${{ env.KEEP }}" >> "$GITHUB_OUTPUT"
                  echo 'm=${{ steps.w.outputs.multi }}' | tr '\\n' '|' >> "$GITHUB_STEP_SUMMARY"
          other:
            needs: j
            runs-on: ubuntu-latest
            steps:
              - id: o
                run: echo "keep=${KEEP:-unset}" >> "$GITHUB_OUTPUT"
    """).run()
    j = res.jobs["j"]
    assert j.step("w").outputs == {"level": "step", "multi": "line 1\na=b"}
    assert "tool-ran" in j.step("r").log
    assert j.step("r").outputs["keep"] == "from-env-file from-env-file"
    assert res.summary.startswith("## Hello\n") and "m=line 1|a=b|" in res.summary
    assert res.jobs["other"].step("o").outputs["keep"] == "unset"   # GITHUB_ENV stays in its job


def test_unterminated_heredoc_fails_the_step(make):
    res = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - run: printf 'x<<END\\nno end\\n' >> "$GITHUB_OUTPUT"
    """).run()
    assert res.jobs["j"].result == "failure" and "Matching delimiter not found" in res.jobs["j"].log


def test_step_if_status_functions_and_outcome_vs_conclusion(make):
    res = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - id: flag
                run: echo "go=false" >> "$GITHUB_OUTPUT"
              - id: gated
                if: steps.flag.outputs.go == 'true'
                run: echo ran
              - id: string-if
                if: ${{ false }} == 'x'
                run: echo "a non-empty string is true, as on GitHub"
              - id: soft
                continue-on-error: true
                run: exit 3
              - id: after-soft
                run: echo "soft=${{ steps.soft.outcome }}/${{ steps.soft.conclusion }}" >> "$GITHUB_OUTPUT"
              - id: hard
                run: exit 1
              - id: default-skipped
                run: echo no
              - id: on-failure
                if: failure() && steps.hard.outcome == 'failure'
                run: echo "status=${{ job.status }}" >> "$GITHUB_OUTPUT"
              - id: cleanup
                if: ${{ always() }}
                run: echo cleanup
    """).run()
    j = res.jobs["j"]
    assert j.step("gated").outcome == "skipped"
    assert j.step("soft").outcome == "failure" and j.step("soft").conclusion == "success"
    assert j.step("after-soft").outputs["soft"] == "failure/success"
    assert j.step("default-skipped").outcome == "skipped"
    assert j.step("on-failure").outputs["status"] == "failure"
    assert j.step("cleanup").outcome == "success" and j.step("string-if").outcome == "success"
    assert j.result == "failure" and not res.ok


def test_needs_skip_propagation_and_status_functions(make):
    res = make("""
        on: push
        jobs:
          a:
            runs-on: ubuntu-latest
            steps: [{run: exit 1}]
          b:
            needs: a
            runs-on: ubuntu-latest
            steps: [{run: echo b}]
          c:
            needs: [b]
            runs-on: ubuntu-latest
            steps: [{run: echo c}]
          d:
            needs: b
            if: always()
            runs-on: ubuntu-latest
            outputs: {seen: "${{ needs.b.result }}"}
            steps: [{run: echo d}]
          e:
            needs: d
            runs-on: ubuntu-latest
            steps: [{run: echo e}]
          f:
            needs: d
            if: failure()
            runs-on: ubuntu-latest
            steps: [{run: echo f}]
          g:
            needs: d
            if: ${{ !cancelled() }}
            runs-on: ubuntu-latest
            steps: [{run: echo g}]
    """).run()
    got = {k: v.result for k, v in res.jobs.items()}
    # e: d succeeded, but an ancestor (a) failed, so success() is false; f: failure() sees a
    assert got == {"a": "failure", "b": "skipped", "c": "skipped", "d": "success", "e": "skipped",
                   "f": "success", "g": "success"}
    assert res.jobs["d"].outputs == {"seen": "skipped"}


def test_job_if_on_needs_outputs_and_workflow_dispatch_inputs(make):
    res = make("""
        on:
          workflow_dispatch:
            inputs:
              recreate: {type: boolean, default: false}
              mode: {type: choice, options: [fast, slow], default: fast}
        jobs:
          probe:
            runs-on: ubuntu-latest
            outputs: {go: "${{ steps.p.outputs.go }}"}
            steps:
              - id: p
                run: |
                  echo "go=yes" >> "$GITHUB_OUTPUT"
                  python3 -c 'import json,os; e=json.load(open(os.environ["GITHUB_EVENT_PATH"])); print("EV", e["inputs"])'
          yes:
            needs: probe
            if: needs.probe.outputs.go == 'YES' && inputs.recreate
            runs-on: ubuntu-latest
            steps: [{run: "echo '${{ inputs.mode }} ${{ github.event.inputs.recreate }} ${{ github.event_name }}'"}]
          no:
            needs: probe
            if: needs.probe.outputs.go != 'yes'
            runs-on: ubuntu-latest
            steps: [{run: echo no}]
    """, event="workflow_dispatch", inputs={"recreate": "true"}).run()
    assert "EV {'recreate': 'true', 'mode': 'fast'}" in res.jobs["probe"].log
    assert res.jobs["yes"].result == "success" and "fast true workflow_dispatch" in res.jobs["yes"].log
    assert res.jobs["no"].result == "skipped"


def test_matrix_legs_include_exclude_and_merged_outputs(make):
    res = make("""
        on: push
        jobs:
          check:
            runs-on: ubuntu-latest
            strategy:
              fail-fast: false
              matrix:
                up: [comfyui, gguf]
                py: ["3.11", "3.12"]
                exclude: [{up: gguf, py: "3.12"}]
                include:
                  - {up: comfyui, extra: yes}
                  - {up: other, py: "3.13"}
            outputs:
              comfyui: ${{ steps.s.outputs.comfyui }}
              gguf: ${{ steps.s.outputs.gguf }}
              last: ${{ steps.s.outputs.last }}
            steps:
              - id: s
                run: |
                  echo "${{ matrix.up }}=${{ matrix.py }}${{ matrix.extra }}" >> "$GITHUB_OUTPUT"
                  echo "last=${{ matrix.up }}-${{ strategy.job-index }}/${{ strategy.job-total }}" >> "$GITHUB_OUTPUT"
                  test "${{ matrix.up }}" != other
          after:
            needs: check
            if: always()
            runs-on: ubuntu-latest
            steps:
              - run: echo "result=${{ needs.check.result }} c=${{ needs.check.outputs.comfyui }}"
    """).run()
    assert [leg.name for leg in res.jobs["check"].legs] == ["check"] * 4
    assert list(res.jobs) == ["check (comfyui, 3.11, yes)", "check (comfyui, 3.12, yes)", "check (gguf, 3.11)",
                              "check (other, 3.13)", "after"]
    assert res.jobs["check"] is res.jobs.groups["check"] and "check" not in res.jobs
    assert res.leg("check", up="gguf").result == "success" and res.leg("check", up="other").result == "failure"
    agg = res.jobs["check"]
    assert agg.result == "failure"
    # legs merge in order: the last non-empty value of each output wins
    assert agg.outputs == {"comfyui": "3.12yes", "gguf": "3.11", "last": "other-3/4"}
    assert "result=failure c=3.12yes" in res.jobs["after"].log


def test_matrix_from_needs_json(make):
    res = make("""
        on: push
        jobs:
          plan:
            runs-on: ubuntu-latest
            outputs: {ups: "${{ steps.p.outputs.ups }}"}
            steps:
              - id: p
                run: echo 'ups=["a","b","c"]' >> "$GITHUB_OUTPUT"
          run:
            needs: plan
            runs-on: ubuntu-latest
            strategy:
              matrix:
                up: ${{ fromJSON(needs.plan.outputs.ups) }}
            steps: [{run: "echo leg-${{ matrix.up }}"}]
          never:
            if: false
            runs-on: ubuntu-latest
            strategy: {matrix: {x: [1, 2]}}
            steps: [{run: echo}]
    """).run()
    assert [g.matrix["up"] for g in res.jobs["run"].legs] == ["a", "b", "c"] and res.ok
    # a matrix job that never expanded is listed under its id
    assert list(res.jobs) == ["plan", "run (a)", "run (b)", "run (c)", "never"] and res.jobs["never"].result == "skipped"


# ------------------------------------------------------------------------------ isolation & secrets
def test_each_job_gets_a_fresh_workspace_home_and_a_clean_environment(make, monkeypatch):
    monkeypatch.setenv("LEAKY_TEST_VAR", "from-pytest")
    res = make("""
        on: push
        jobs:
          a:
            runs-on: ubuntu-latest
            steps:
              - run: |
                  echo x > in-workspace; echo y > "$HOME/in-home"; git config --global user.name leaked
                  test "$GITHUB_WORKSPACE" = "$PWD" && test "$CI" = true && test "$GITHUB_ACTIONS" = true
                  test "$GITHUB_REPOSITORY" = owner/repo && test "$GITHUB_REF" = refs/heads/main
                  test "$GITHUB_SERVER_URL" = https://github.com && test -n "$GITHUB_RUN_ID" && test -d "$RUNNER_TEMP"
          b:
            needs: a
            runs-on: ubuntu-latest
            steps:
              - id: look
                run: |
                  ls -A; ls -A "$HOME"; echo "name=$(git config --global user.name || echo none)"
                  echo "leak=${LEAKY_TEST_VAR:-none}"
    """).run()
    assert res.ok, res.report()
    log = res.jobs["b"].log
    assert "in-workspace" not in log and "in-home" not in log and "name=none" in log and "leak=none" in log
    assert res.jobs["a"].workspace != res.jobs["b"].workspace


def test_secrets_and_token_reach_only_the_steps_that_map_them(make):
    res = make("""
        on: push
        permissions: {}
        env:
          WF_LEVEL: "${{ github.repository }}"
        jobs:
          j:
            runs-on: ubuntu-latest
            permissions: {contents: write}
            outputs:
              leaked: ${{ steps.m.outputs.tok }}
              fine: ${{ steps.m.outputs.fine }}
            steps:
              - id: plain
                run: env
              - id: m
                env:
                  GH_TOKEN: ${{ github.token }}
                  APP_KEY: ${{ secrets.APP_KEY }}
                run: |
                  echo "tok=$GH_TOKEN" >> "$GITHUB_OUTPUT"
                  echo "fine=ok" >> "$GITHUB_OUTPUT"
          k:
            runs-on: ubuntu-latest
            steps: [{run: echo k}]
    """, secrets={"APP_KEY": "s3cr3t-key"}).run()
    for leg, step in res.steps():
        if step.id == "m":
            assert step.env["GH_TOKEN"] == TOKEN and step.env["APP_KEY"] == "s3cr3t-key"
        else:
            values = "\n".join(step.env.values())
            assert TOKEN not in values and "s3cr3t-key" not in values, (leg, step.name)
    assert "GITHUB_TOKEN" not in res.jobs["j"].step("plain").log
    assert res.jobs["j"].step("plain").env["WF_LEVEL"] == "owner/repo"
    # GitHub drops a job output that contains a secret
    assert res.jobs["j"].outputs == {"fine": "ok"}
    assert any("leaked" in w for w in res.jobs["j"].warnings)
    assert res.jobs["j"].permissions == {"contents": "write"} and res.jobs["k"].permissions == {}


def test_secrets_are_not_allowed_in_a_step_if(make):
    r = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - id: gate
                if: secrets.X != ''
                run: echo x
    """)
    with pytest.raises(WorkflowError, match=r"job 'j' step 'gate'.*secrets"):
        r.run()


@pytest.mark.parametrize("job,match", [
    ("steps: [{run: echo, runs: x}]", r"job 'j' step '#1'.*unknown step key.*runs"),
    ("steps: [{uses: actions/nosuch@v1, if: false}]", r"job 'j' step 'actions/nosuch@v1'.*no handler"),
    ("steps: [{run: echo, shell: pwsh}]", r"shell 'pwsh' is not supported"),
    ("steps: [{uses: ./local-action}]", r"only owner/name@ref"),
    ("steps: [{uses: actions/checkout@v4, with: {fetch_depth: 0}}]", r"Unexpected input.*fetch_depth"),
    ("steps: [{run: 'echo ${{ nosuch.x }}'}]", r"job 'j'.*Unrecognized named-value: 'nosuch'"),
    ("steps: [{run: 'echo ${{ github.x == }}'}]", r"cannot parse|unexpected"),
    ("container: ubuntu\n    steps: [{run: echo}]", r"not supported"),
    ("timeout: 5\n    steps: [{run: echo}]", r"unknown job key.*timeout"),
])
def test_broken_workflows_are_hard_errors(make, job, match):
    with pytest.raises(WorkflowError, match=match):
        make(f"""\
on: push
jobs:
  j:
    runs-on: ubuntu-latest
    {job}
""").run()


def test_event_must_be_a_trigger_and_inputs_declared(make):
    with pytest.raises(WorkflowError, match="does not run on 'push'"):
        make("on: {schedule: [{cron: '1 1 * * *'}]}\njobs: {j: {runs-on: x, steps: [{run: echo}]}}\n")
    with pytest.raises(WorkflowError, match="Unexpected inputs"):
        make("on: {workflow_dispatch: {inputs: {a: {default: x}}}}\njobs: {j: {runs-on: x, steps: [{run: echo}]}}\n",
             event="workflow_dispatch", inputs={"b": "1"})


def test_workflow_text_and_replace_run(make, tmp_path, origin, gh):
    text = """
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - name: Set up
                run: pip install --index-url https://example.invalid/ nothing
              - id: after
                run: echo "after ${{ github.event_name }}"
    """
    kw = dict(workdir=tmp_path / "w", origin=origin, env=gh[1], workflow_text=textwrap.dedent(text))
    res = Runner(tmp_path / "named-only.yml", replace_run={"Set up": "echo replaced-${{ github.event_name }}"}, **kw).run()
    j = res.jobs["j"]
    assert j.steps[0].log == "replaced-push\n" and j.steps[0].data["replaced"] and not j.step("after").data["replaced"]
    with pytest.raises(WorkflowError, match="replace_run names no run: step.*Setup"):
        Runner(tmp_path / "named-only.yml", replace_run={"Setup": "true"}, **kw)


def test_runtime_expression_failure_fails_the_step_not_the_runner(make):
    res = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - run: echo '${{ fromJSON('') }}'
              - if: always()
                run: echo still-here
    """).run()
    j = res.jobs["j"]
    assert j.steps[0].outcome == "failure" and "fromJSON" in j.steps[0].log
    assert "still-here" in j.steps[1].log and j.result == "failure"


def test_defaults_python_shell_working_directory_and_hashfiles(make):
    res = make("""
        on: push
        defaults:
          run: {shell: bash, working-directory: sub}
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
              - uses: actions/setup-python@v5
                with: {python-version: "3.11"}
              - working-directory: .
                run: mkdir -p sub && echo "${{ hashFiles('data/**', '!data/sub/*') }}" > sub/h1
              - shell: python
                run: |
                  import os, sys
                  print("cwd", os.path.basename(os.getcwd()), "pipefail-free", "${{ hashFiles('nothing*') }}" == "")
              - id: h
                run: echo "h=${{ hashFiles('data/a.txt') }}" >> "$GITHUB_OUTPUT"
    """).run()
    j = res.jobs["j"]
    assert res.ok, res.report()
    assert j.steps[1].data["python-version"] == "3.11"
    assert "cwd sub pipefail-free True" in j.steps[3].log
    want = hashlib.sha256(hashlib.sha256(b"A\n").digest()).hexdigest()
    assert j.step("h").outputs["h"] == want
    assert (j.workspace / "sub" / "h1").read_text().strip() == want   # data/sub/* excluded


# ------------------------------------------------------------------------------ actions
def test_checkout_persist_credentials_depth_ref_and_push_back(make, origin, tmp_path):
    src = tmp_path / "src"
    git("switch", "-q", "-c", "feature", cwd=src)
    feature = commit(src, {"f.txt": "feature\n"}, "feature")
    git("push", "-q", str(origin), "feature", cwd=src)
    res = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
              - uses: actions/checkout@v4
                with: {path: nocreds, persist-credentials: false, fetch-depth: 0}
              - uses: actions/checkout@v4
                id: feat
                with: {path: feat, ref: feature, persist-credentials: "false"}
              - run: |
                  git config user.name ci && git config user.email ci@example.invalid
                  git switch -c from-ci && git commit -q --allow-empty -m ci && git push -q origin from-ci
    """).run()
    assert res.ok, res.report()
    j = res.jobs["j"]
    ws = j.workspace

    def cfg(path, key):
        return subprocess.run(["git", "config", "--get", key], cwd=ws / path, capture_output=True, text=True).stdout.strip()
    header = cfg(".", "http.https://github.com/.extraheader")
    assert header == "AUTHORIZATION: basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert cfg("nocreds", "http.https://github.com/.extraheader") == ""
    assert cfg(".", "remote.origin.url") == str(origin)
    assert git("rev-parse", "--is-shallow-repository", cwd=ws) == "true" and j.steps[0].data["fetch_depth"] == 1
    assert git("rev-list", "--count", "HEAD", cwd=ws / "nocreds") == "2"
    assert git("rev-parse", "HEAD", cwd=ws / "feat") == feature == j.step("feat").outputs["commit"]
    assert git("rev-parse", "refs/heads/from-ci", cwd=origin)   # the push reached the bare origin
    first = git("rev-list", "--max-parents=0", "main", cwd=origin)
    older = make("on: push\njobs: {j: {runs-on: x, steps: [{uses: actions/checkout@v4}]}}\n", sha=first).run()
    assert git("rev-parse", "HEAD", cwd=older.jobs["j"].workspace) == first
    assert git("branch", "--show-current", cwd=older.jobs["j"].workspace) == "main"


def test_artifacts_between_jobs_roots_names_and_visibility(make):
    res = make("""
        on: push
        jobs:
          up:
            runs-on: ubuntu-latest
            steps:
              - run: |
                  mkdir -p out/deep patches && echo r > out/report.md && echo d > out/deep/d.txt
                  echo p > patches/1.patch && echo h > patches/.hidden && echo j > drift.json
              - uses: actions/upload-artifact@v4
                with: {name: several, path: "drift.json\\npatches/\\n"}
              - uses: actions/upload-artifact@v4
                with: {name: onefile, path: out/report.md}
              - uses: actions/upload-artifact@v4
                with: {name: onedir, path: out}
              - uses: actions/upload-artifact@v4
                with: {name: drift-x, path: drift.json}
              - id: again
                continue-on-error: true
                uses: actions/upload-artifact@v4
                with: {name: onefile, path: drift.json}
              - id: none
                continue-on-error: true
                uses: actions/upload-artifact@v4
                with: {name: empty, path: nothing/*.txt, if-no-files-found: error}
          down:
            needs: up
            runs-on: ubuntu-latest
            steps:
              - uses: actions/download-artifact@v4
                with: {name: several}
              - uses: actions/download-artifact@v4
                with: {path: all}
              - uses: actions/download-artifact@v4
                with: {pattern: "drift-*", path: merged, merge-multiple: true}
              - run: find . -type f -not -path './.git/*' | sort
          unrelated:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/download-artifact@v4
                with: {name: several}
    """).run()
    art = res.artifacts_dir
    files = sorted(str(p.relative_to(art)) for p in art.rglob("*") if p.is_file())
    assert files == ["drift-x/drift.json", "onedir/deep/d.txt", "onedir/report.md", "onefile/report.md",
                     "several/drift.json", "several/patches/1.patch"]
    up = res.jobs["up"]
    assert up.step("again").outcome == "failure" and "409" in up.step("again").log
    assert up.step("none").outcome == "failure" and "No files were found" in up.step("none").log
    listing = res.jobs["down"].steps[-1].log.split()
    assert {"./drift.json", "./patches/1.patch", "./all/onefile/report.md", "./all/several/patches/1.patch",
            "./merged/drift.json"} <= set(listing)
    assert not any(x.startswith("./merged/drift-x") for x in listing)
    # no `needs: up`: GitHub would race, here it fails deterministically
    assert res.jobs["unrelated"].result == "failure" and "Artifact not found" in res.jobs["unrelated"].log


def test_cache_cold_then_warm_across_runs_with_restore_keys(make):
    runner = make("""
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - id: c
                uses: actions/cache@v4
                with:
                  path: |
                    ~/.cache/thing
                    build
                  key: thing-${{ hashFiles('inputs.txt') }}-v1
                  restore-keys: |
                    thing-
              - id: show
                run: |
                  echo "hit=${{ steps.c.outputs.cache-hit }}" >> "$GITHUB_OUTPUT"
                  cat ~/.cache/thing/n 2>/dev/null || echo missing
                  mkdir -p ~/.cache/thing build && echo "run-$GITHUB_RUN_NUMBER" > ~/.cache/thing/n && echo b > build/b
          restore-only:
            needs: j
            runs-on: ubuntu-latest
            steps:
              - id: r
                uses: actions/cache/restore@v4
                with: {path: "~/.cache/thing\\nbuild", key: other-key, restore-keys: thing-}
              - run: cat ~/.cache/thing/n build/b
    """)
    first = runner.run()
    assert first.ok, first.report()
    assert first.jobs["j"].step("show").outputs["hit"] == "false" and "missing" in first.jobs["j"].step("show").log
    assert first.jobs["j"].steps[-1].name.startswith("Post") and first.jobs["j"].steps[-1].data["saved"]
    assert first.jobs["restore-only"].step("r").outputs["cache-hit"] == "false"   # prefix match is not a hit
    assert "run-1" in first.jobs["restore-only"].log and "b" in first.jobs["restore-only"].log
    second = runner.run()
    assert second.jobs["j"].step("show").outputs["hit"] == "true" and "run-1" in second.jobs["j"].step("show").log
    assert not second.jobs["j"].steps[-1].name.startswith("Post")   # exact hit: nothing saved
    # a new key is restored from the newest prefix match, and saved afterwards
    third = make(runner.path.read_text().replace("-v1", "-v2"), workdir=runner.workdir).run()
    assert third.jobs["j"].step("show").outputs["hit"] == "false" and "run-1" in third.jobs["j"].step("show").log
    assert third.jobs["j"].steps[-1].data["saved"].endswith("-v2")
    # two entries match the prefix now: the newest (saved by this run's job j) wins
    assert "run-3" in third.jobs["restore-only"].log and "run-1" not in third.jobs["restore-only"].log


def test_app_token_action_and_custom_handlers(make, tmp_path):
    seen = {}

    def custom(action):
        seen.update(action.inputs)
        return {"answer": 42}

    workflow = """
        on: push
        jobs:
          j:
            runs-on: ubuntu-latest
            outputs: {tok: "${{ steps.app.outputs.token }}"}
            steps:
              - id: app
                uses: actions/create-github-app-token@v2
                with: {app-id: "123", private-key: "${{ secrets.KEY }}", permission-contents: write}
              - id: mine
                uses: me/thing@v9
                with: {question: "${{ steps.app.outputs.token != '' }}"}
              - run: echo "${{ steps.mine.outputs.answer }}"
    """
    res = make(workflow, secrets={"KEY": "pem"}, actions={"me/thing": custom}).run()
    tok = res.jobs["j"].step("app").outputs["token"]
    again = make(workflow, secrets={"KEY": "pem"}, actions={"me/thing": custom}, workdir=tmp_path / "w2").run()
    assert tok.startswith("ghs_") and tok == again.jobs["j"].outputs_of("app", "token")   # deterministic
    assert seen == {"question": "true"} and "42" in res.jobs["j"].steps[2].log
    assert res.jobs["j"].outputs == {}   # the app token is masked, so the job output is dropped
    bad = make(workflow, secrets={}, actions={"me/thing": custom}).run()
    assert bad.jobs["j"].step("app").outcome == "failure" and "private-key" in bad.jobs["j"].step("app").log


# ------------------------------------------------------------------------------ fake gh
def gh_run(env, *args, cwd=None, token=TOKEN, input=None):
    e = {**env, **({"GH_TOKEN": token} if token else {})}
    return subprocess.run(["gh", *args], env=e, cwd=cwd, capture_output=True, text=True, input=input)


def push_branch(tmp_path, origin, branch, files) -> str:
    src = tmp_path / "src"
    git("switch", "-q", "-C", branch, "main", cwd=src)
    sha = commit(src, files, f"on {branch}")
    git("push", "-q", "--force", str(origin), f"{branch}:{branch}", cwd=src)
    git("switch", "-q", "main", cwd=src)
    return sha


def test_fake_gh_requires_a_token_and_logs_each_call(gh):
    fake, env = gh
    r = gh_run(env, "pr", "list", "-R", "owner/repo", token=None)
    assert r.returncode == 4 and "To get started with GitHub CLI, please run:  gh auth login" in r.stderr
    r = gh_run({**env, "GITHUB_TOKEN": "ghp_other"}, "issue", "list", "-R", "owner/repo", token=None)
    assert r.returncode == 0
    assert [(c["exit"], c["token"]) for c in fake.calls] == [(4, None), (0, "ghp_other")]
    assert fake.writes() == []


@pytest.mark.parametrize("args,match", [
    (["pr", "list", "--x"], "unknown flag: --x"),
    (["pr", "list", "-z"], "unknown shorthand flag: 'z' in -z"),
    (["pr", "create", "--title"], "flag needs an argument: --title"),
    (["pr", "list", "--json", "number", "--jq", ".[0].number"], "--jq is not implemented"),
    (["pr", "list", "--json", "nmber"], 'Unknown JSON field: "nmber"'),
    (["pr", "list", "--state", "weird"], 'valid values are {open|closed|merged|all}'),
    (["pr", "frobnicate"], 'unknown command "frobnicate" for "gh pr"'),
    (["api", "repos"], "'gh api' is not implemented"),
    (["issue", "view", "99", "--json", "title"], "Could not resolve to an Issue with the number of 99"),
    (["pr", "list", "-R", "other/repo"], "Could not resolve to a Repository with the name 'other/repo'"),
])
def test_fake_gh_is_strict(gh, args, match):
    fake, env = gh
    r = gh_run(env, *args[:2], *([] if "-R" in args else ["-R", "owner/repo"]), *args[2:])
    assert r.returncode == 1 and match in r.stderr, r.stderr
    assert fake.calls[-1]["exit"] == 1 and not fake.calls[-1]["wrote"]


def test_fake_gh_repo_from_gh_repo_or_the_checkout(gh, origin, tmp_path):
    fake, env = gh
    assert gh_run({**env, "GH_REPO": "owner/repo"}, "pr", "list", cwd=tmp_path).returncode == 0
    r = gh_run(env, "pr", "list", cwd=tmp_path)
    assert r.returncode == 1 and "not a git repository" in r.stderr
    git("clone", "-q", str(origin), str(tmp_path / "clone"))
    assert gh_run(env, "pr", "list", cwd=tmp_path / "clone").returncode == 0


def test_fake_gh_pull_request_lifecycle(gh, origin, tmp_path):
    fake, env = gh
    R = ["-R", "owner/repo"]
    r = gh_run(env, "pr", "create", "--head", "nope", "--title", "t", "--body", "b", *R)
    assert r.returncode == 1 and "Head ref must be a branch" in r.stderr
    git("push", "-q", str(origin), "main:same", cwd=tmp_path / "src")
    r = gh_run(env, "pr", "create", "--head", "same", "--title", "t", "--body", "b", *R)
    assert r.returncode == 1 and "No commits between main and same" in r.stderr
    sha1 = push_branch(tmp_path, origin, "drift", {"x": "1\n"})
    (tmp_path / "body.md").write_text("report v1\n")
    r = gh_run(env, "pr", "create", "-H", "drift", "-t", "Drift", "-F", str(tmp_path / "body.md"), *R)
    assert r.returncode == 0 and r.stdout == "https://github.com/owner/repo/pull/1\n"
    r = gh_run(env, "pr", "create", "--head", "drift", "--title", "again", "--body", "x", *R)
    assert r.returncode == 1 and 'a pull request for branch "drift" into branch "main" already exists' in r.stderr
    issue = gh_run(env, "issue", "create", "--title", "i", "--body", "", *R)
    assert issue.stdout == "https://github.com/owner/repo/issues/2\n"   # one counter for both
    listed = json.loads(gh_run(env, "pr", "list", "--head", "drift", "--state", "open", "--json",
                               "number,headRefOid,title", *R).stdout)
    assert listed == [{"headRefOid": sha1, "number": 1, "title": "Drift"}]
    sha2 = push_branch(tmp_path, origin, "drift", {"x": "2\n"})
    assert fake.pr(1)["headRefOid"] == sha2 != sha1          # read from origin at query time
    r = gh_run(env, "pr", "edit", "1", "--add-label", "upstream", *R)
    assert r.returncode == 1 and "'upstream' not found" in r.stderr
    assert gh_run(env, "label", "create", "upstream", "--color", "#00ff00", *R).returncode == 0
    assert gh_run(env, "label", "create", "upstream", *R).returncode == 1
    assert gh_run(env, "pr", "edit", "1", "--add-label", "upstream,bug", "--body", "report v2", *R).returncode == 0
    assert gh_run(env, "pr", "comment", "1", "--body-file", "-", *R, input="from stdin\n").returncode == 0
    fake.comment("pr", 1, "please wait")
    view = json.loads(gh_run(env, "pr", "view", "1", "--json", "body,labels,comments,state,isDraft", *R).stdout)
    assert view["body"] == "report v2" and [x["name"] for x in view["labels"]] == ["upstream", "bug"]
    assert [(c["author"]["login"], c["body"]) for c in view["comments"]] == [
        ("app/github-actions", "from stdin\n"), ("maintainer", "please wait")]
    assert view["state"] == "OPEN" and view["isDraft"] is False
    fake.merge_pr(1)
    assert json.loads(gh_run(env, "pr", "list", "--state", "merged", "--json", "number", *R).stdout) == [{"number": 1}]
    assert json.loads(gh_run(env, "pr", "list", "--json", "number", *R).stdout) == []
    r = gh_run(env, "pr", "close", "1", *R)
    assert r.returncode == 1 and "already merged" in r.stderr
    push_branch(tmp_path, origin, "drift2", {"y": "1\n"})
    assert gh_run(env, "pr", "create", "--head", "drift2", "--title", "two", "--body", "", "--draft", *R).returncode == 0
    assert gh_run(env, "pr", "close", "3", "--comment", "superseded", "--delete-branch", *R).returncode == 0
    assert fake.pr(3)["state"] == "CLOSED" and fake.pr(3)["comments"][-1]["body"] == "superseded"
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "refs/heads/drift2"], cwd=origin).returncode == 1
    assert [c["argv"][:2] for c in fake.writes()] == [["pr", "create"], ["issue", "create"], ["label", "create"],
                                                      ["pr", "edit"], ["pr", "comment"], ["pr", "create"], ["pr", "close"]]
    table = gh_run(env, "pr", "list", "--state", "all", *R).stdout.splitlines()
    assert [line.split("\t")[:4] for line in table] == [["3", "two", "drift2", "CLOSED"], ["1", "Drift", "drift", "MERGED"]]


def test_fake_gh_issue_lifecycle_and_search(gh):
    fake, env = gh
    R = ["-R", "owner/repo"]
    r = gh_run(env, "issue", "create", "--title", "Drift", "--body", "x", "--label", "upstream-drift", *R)
    assert r.returncode == 1 and "could not add label: 'upstream-drift' not found" in r.stderr and fake.issues == []
    assert gh_run(env, "label", "create", "upstream-drift", "--description", "d", *R).returncode == 0
    r = gh_run(env, "issue", "create", "-t", "Drift report", "-b", "conflict in sd.py", "-l", "upstream-drift", *R)
    assert r.returncode == 0
    assert gh_run(env, "issue", "create", "-t", "Other", "-b", "unrelated", *R).returncode == 0
    found = json.loads(gh_run(env, "issue", "list", "--label", "upstream-drift", "--json", "number,title,labels", *R).stdout)
    assert [(i["number"], i["labels"][0]["name"]) for i in found] == [(1, "upstream-drift")]
    assert json.loads(gh_run(env, "issue", "list", "--search", "sd.py in:body", "--json", "number", *R).stdout) == [{"number": 1}]
    assert gh_run(env, "issue", "edit", "1", "--title", "Drift (2)", "--remove-label", "upstream-drift", *R).returncode == 0
    assert gh_run(env, "issue", "close", "1", "--comment", "back to current", "--reason", "completed", *R).returncode == 0
    r = gh_run(env, "issue", "close", "1", *R)
    assert r.returncode == 0 and "already closed" in r.stderr
    assert json.loads(gh_run(env, "issue", "list", "--state", "closed", "--json", "number,state,stateReason", *R).stdout) \
        == [{"number": 1, "state": "CLOSED", "stateReason": "COMPLETED"}]
    assert gh_run(env, "issue", "reopen", "1", *R).returncode == 0
    assert gh_run(env, "issue", "comment", "1", "--body", "still drifting", *R).returncode == 0
    fake.add_label("issue", 1, "needs-human")
    view = json.loads(gh_run(env, "issue", "view", "1", "--json", "title,state,labels,comments", *R).stdout)
    assert (view["title"], view["state"], [x["name"] for x in view["labels"]]) == ("Drift (2)", "OPEN", ["needs-human"])
    assert [c["body"] for c in view["comments"]] == ["back to current", "still drifting"]
    assert len(fake.writes()) == 7   # the human's label is state, not a gh call
    r = gh_run(env, "label", "create", "upstream-drift", "--force", "--color", "ff0000", *R)
    assert r.returncode == 0
    assert {"name": "upstream-drift", "color": "ff0000", "description": "d", "isDefault": False} in fake.labels
    names = json.loads(gh_run(env, "label", "list", "--json", "name", "--limit", "100", *R).stdout)
    assert {"name": "upstream-drift"} in names and {"name": "needs-human"} in names and {"name": "bug"} in names
    fake.close_issue(2)
    assert json.loads(gh_run(env, "issue", "list", "--json", "number", *R).stdout) == [{"number": 1}]


def test_fake_gh_refuses_bodies_over_65536_characters(gh, tmp_path):
    fake, env = gh
    R = ["-R", "owner/repo"]
    (tmp_path / "ok.md").write_text("x" * 65536)
    (tmp_path / "big.md").write_text("é" * 65537)
    assert gh_run(env, "issue", "create", "-t", "ok", "-F", str(tmp_path / "ok.md"), *R).returncode == 0
    before = json.dumps(fake.issues)
    for args in (["issue", "create", "-t", "big", "-F", str(tmp_path / "big.md")],
                 ["issue", "comment", "1", "-F", str(tmp_path / "big.md")],
                 ["issue", "edit", "1", "-F", str(tmp_path / "big.md")]):
        r = gh_run(env, *args, *R)
        assert r.returncode == 1 and "Body is too long (maximum is 65536 characters)" in r.stderr
    assert json.dumps(fake.issues) == before and len(fake.writes()) == 1


def test_fake_gh_concurrent_calls_lose_nothing(gh):
    fake, env = gh
    procs = [subprocess.Popen(["gh", "issue", "create", "-R", "owner/repo", "-t", f"n{k}", "-b", "x"],
                              env={**env, "GH_TOKEN": f"tok{k}"}, stdout=subprocess.PIPE, text=True) for k in range(8)]
    urls = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(u.rsplit("/", 1)[1]) for u in urls) == list(range(1, 9))
    assert sorted(i["title"] for i in fake.issues) == [f"n{k}" for k in range(8)]
    assert sorted(c["token"] for c in fake.calls) == sorted(f"tok{k}" for k in range(8))


def test_fake_gh_inside_a_workflow_sees_only_mapped_tokens(make, gh):
    fake, _ = gh
    res = make("""
        on: schedule
        jobs:
          j:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
                with: {persist-credentials: false}
              - id: without
                continue-on-error: true
                run: gh issue list
              - env: {GH_TOKEN: "${{ github.token }}"}
                run: gh label create drift && gh issue create --title "from ${{ github.event_name }}" --body "" --label drift
    """, event="schedule").run()
    assert res.jobs["j"].step("without").outcome == "failure"
    assert [(c["exit"], c["token"]) for c in fake.calls] == [(4, None), (0, TOKEN), (0, TOKEN)]
    assert fake.issues[0]["title"] == "from schedule" and fake.issues[0]["labels"][0]["name"] == "drift"
