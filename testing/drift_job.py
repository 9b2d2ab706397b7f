"""The drift workflow's repository on a stand-in GitHub, run by the local runner: a day of the job,
for tests/test_drift_job.py and bench/drift_bench.py."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from testing import fake_gh, fork_server, stub_smoke
from testing.fixtures import git
from testing.gha import Runner

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ".github/workflows/upstream-drift.yml"
VENV = Path(sys.prefix)
TOKEN = "ghs_workflow_token_value"


class Programs:
    """What the workflow's steps run many times, each run forked from one server (testing/fork_server.py)
    that has zimage_patcher and the fakes' imports loaded: `zpatch` (VENV/bin/zpatch: the job's .venv
    links to VENV), the fake `gh` (in BIN, for PATH) and the stub smoke (SMOKE_PYTHON). A day of the
    job runs zpatch about ten times and gh thirty; each would otherwise start Python and import it all."""

    PRELOAD = ("zimage_patcher.entry", "zimage_patcher.cli", "zimage_patcher.drift", "zimage_patcher.drift_publish",
               "zimage_patcher.drift_report", "zimage_patcher.verify", "zimage_patcher.smoke.runner",
               "csv", "datetime", "fcntl", "json", "shlex", "subprocess", "argparse")

    def __init__(self, folder: Path):
        self.server = fork_server.start(sys.executable, folder, preload=self.PRELOAD)
        self.venv, self.bin = folder / "venv", folder / "bin"
        self.server.program(self.venv / "bin" / "zpatch", script=str(Path(__file__).with_name("zpatch_main.py")))
        self.server.program(self.bin / "gh", script=str(Path(fake_gh.__file__).resolve()))
        self.smoke_python = self.server.program(folder / "smoke" / "stub-smoke-python",
                                                script=str(Path(stub_smoke.__file__).resolve()))

    def stop(self) -> None:
        self.server.stop()


class Job:
    """The repository on GitHub (a bare origin with the overlay and the workflow), its state on
    GitHub (fake gh), and the runner that runs the workflow against both."""

    def __init__(self, world, tmp: Path, programs: Programs | None = None):
        """PROGRAMS: zpatch, gh and the stub smoke served by a fork server (else each is a fresh process)."""
        self.world, self.tmp = world, tmp
        self.setup = f'ln -s "{programs.venv if programs else VENV}" .venv'
        self.origin = tmp / "origin.git"
        git("init", "-q", "--bare", "-b", "main", str(self.origin))
        src = tmp / "src"
        shutil.copytree(world.overlay, src)
        (src / ".github/workflows").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / WORKFLOW, src / WORKFLOW)
        git("init", "-q", "-b", "main", str(src))
        git("add", "-A", cwd=src)
        git("commit", "-q", "-m", "the overlay", cwd=src)
        git("push", "-q", str(self.origin), "main", cwd=src)
        shutil.rmtree(src)
        bin_dir = tmp / "bin"
        self.state = tmp / "github.json"
        gh_env = fake_gh.install(bin_dir, self.state, self.origin, repo="owner/overlay")
        self.smoke_log = tmp / "smokes.jsonl"
        env = {k: v for k, v in os.environ.items()
               if k not in ("ZPATCH_CACHE", "XDG_CACHE_HOME", "ZPATCH_OVERLAY", "GH_TOKEN", "GITHUB_TOKEN",
                            "ZPATCH_SMOKE_PYTHON", "STUB_SMOKE_LOG", "PYTEST_CURRENT_TEST")}
        env.update(world.env)
        for k in ("ZPATCH_CACHE", "XDG_CACHE_HOME"):     # the cache lives in each job's HOME, as on a runner
            env.pop(k, None)
        env.update(gh_env)
        env["PATH"] = os.pathsep.join([*([str(programs.bin)] if programs else []), str(bin_dir), env.get("PATH", "")])
        env["ZPATCH_SMOKE_PYTHON"] = str(programs.smoke_python if programs else stub_smoke.install(bin_dir))
        env["STUB_SMOKE_LOG"] = str(self.smoke_log)
        self.env = env
        self.gh = fake_gh.FakeGitHub(self.state)
        self.runs = 0

    def run(self, *, secrets=None, vars=None, inputs=None, event="schedule"):
        self.runs += 1
        r = Runner(self.origin / "HEAD", workdir=self.tmp / "gha", origin=str(self.origin),
                   repository="owner/overlay", event=event, inputs=inputs or {}, secrets=secrets or {},
                   vars=vars or {}, env=self.env, token=TOKEN,
                   replace_run={"Set up": self.setup, "Set up (no torch, no smoke)": self.setup},
                   workflow_text=git("show", f"main:{WORKFLOW}", cwd=self.origin))
        res = r.run()
        logs = "\n".join(f"--- {j}/{s.name}: {s.outcome}\n{s.log}" for j, jr in res.jobs.items() for s in jr.steps)
        assert res.ok, logs
        return res

    def branch(self, name: str) -> str | None:
        out = git("for-each-ref", "--format=%(objectname)", f"refs/heads/zpatch-drift/{name}", cwd=self.origin)
        return out or None

    def lock_on(self, ref: str) -> str:
        return git("show", f"{ref}:upstream.lock", cwd=self.origin)

    def refs(self) -> str:
        return git("for-each-ref", cwd=self.origin)

    def prs(self, state="OPEN") -> list[dict]:
        return [p for p in self.gh.prs if p["state"] == state]

    def issues(self, state="OPEN") -> list[dict]:
        return [i for i in self.gh.issues if i["state"] == state]

    def human_push(self, name: str, text: str) -> str:
        """A maintainer's fixup commit on the job's branch."""
        work = self.tmp / f"human-{self.runs}"
        git("clone", "-q", "-b", f"zpatch-drift/{name}", str(self.origin), str(work))
        (work / "NOTES.md").write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "maintainer fixup", cwd=work)
        git("push", "-q", "origin", f"HEAD:zpatch-drift/{name}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)
