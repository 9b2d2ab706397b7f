"""The smoke through zpatch's command line: verify end to end, and smoke's exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from testing.smoke_support import ROOT


def zpatch(*args, smoke_python):
    env = dict(os.environ, ZPATCH_SMOKE_PYTHON=smoke_python)
    env.pop("ZPATCH_OVERLAY", None)
    return subprocess.run([sys.executable, "-m", "zimage_patcher.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900)


def test_verify_with_control_passes_every_step(pristine_checkout, smoke_python, tmp_path):
    r = zpatch("verify", "--control", "--keep", tmp_path / "v", "--json", smoke_python=smoke_python)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert [s["step"] for s in res["steps"]] == ["checkout", "check", "apply", "status", "compile", "smoke",
                                                 "control"]
    assert all(s["ok"] for s in res["steps"])
    assert all(s["failure"] is None for s in res["steps"])
    assert res["steps"][5]["warnings"] == res["steps"][5]["data"]["warnings"]
    assert all(set(w) == {"stage", "level", "message"} for w in res["steps"][5]["warnings"])
    smoke = res["steps"][5]["data"]
    assert len(smoke["images"]) == 2 and all(os.path.isfile(i["path"]) for i in smoke["images"])


def test_smoke_on_pristine_upstream_is_refused_before_it_runs(pristine_checkout, smoke_python, tmp_path):
    r = zpatch("smoke", pristine_checkout, "--out", tmp_path / "out", smoke_python=smoke_python)
    assert r.returncode == 4, r.stdout + r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "is not applied here" in errors[0] and "(missing)" in errors[0]
    assert f"hint: zpatch apply {pristine_checkout}" in r.stderr
    assert not (tmp_path / "out").exists()                # nothing ran, nothing was written


def test_smoke_with_a_missing_python_exits_8(pristine_checkout, tmp_path):
    r = zpatch("smoke", pristine_checkout, "--unpatched", "--python", tmp_path / "no-such-python",
               smoke_python="unused")
    assert r.returncode == 8 and "smoke python not found" in r.stderr
