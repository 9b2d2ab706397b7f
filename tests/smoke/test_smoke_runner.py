"""runner.py without torch: interpreter resolution and failure reporting."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from zimage_patcher.errors import Exit, ZpatchError
from zimage_patcher.smoke import runner


@pytest.fixture
def fake_checkout(tmp_path) -> Path:
    (tmp_path / "ComfyUI" / "comfy").mkdir(parents=True)
    return tmp_path / "ComfyUI"


def test_runner_imports_no_torch():
    import subprocess
    code = "import sys, zimage_patcher.smoke.runner; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_explicit_python_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(runner.ENV_PYTHON, "/nonexistent/from-env")
    assert runner.resolve_python(sys.executable) == sys.executable


def test_environment_python_is_used_and_checked(monkeypatch):
    monkeypatch.setenv(runner.ENV_PYTHON, sys.executable)
    assert runner.resolve_python() == sys.executable
    monkeypatch.setenv(runner.ENV_PYTHON, "/nonexistent/python")
    with pytest.raises(ZpatchError) as ei:
        runner.resolve_python()
    assert ei.value.exit_code == Exit.ENVIRONMENT
    assert ei.value.message == "smoke python not found: /nonexistent/python (from $ZPATCH_SMOKE_PYTHON)"


def test_missing_python_is_an_environment_error(fake_checkout, tmp_path):
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(fake_checkout, tmp_path / "out", python="no-such-python-zpatch")
    assert ei.value.exit_code == Exit.ENVIRONMENT
    assert "--python" in ei.value.hint


def test_managed_venv_lives_in_the_xdg_cache_and_is_reused(monkeypatch, tmp_path):
    monkeypatch.delenv(runner.ENV_PYTHON, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    venv = runner.managed_venv_dir()
    assert venv == tmp_path / "cache" / "zimage-patcher" / "smoke-venv"
    # a venv whose stamp matches requirements.txt is reused as is (no pip run)
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (venv / ".zpatch-requirements.sha256").write_text(runner._requirements_digest() + "\n")
    assert runner.resolve_python() == str(venv / "bin" / "python")


def test_requirements_pin_the_torch_pair():
    lines = [l.strip() for l in runner.REQUIREMENTS.read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines
    for pkg in ("gguf", "sentencepiece", "safetensors", "einops", "torchsde", "av", "protobuf"):
        assert pkg in lines


def test_a_harness_that_dies_without_a_report_is_a_smoke_failure(fake_checkout, tmp_path):
    fake = tmp_path / "fakepy"
    fake.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    fake.chmod(0o755)
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(fake_checkout, tmp_path / "out", python=str(fake))
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    assert err.message == "smoke harness exited 139 without a report: Segmentation fault (core dumped)"
    assert err.details["returncode"] == 139


def test_not_a_checkout(tmp_path):
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(tmp_path, tmp_path / "out", python=sys.executable)
    assert ei.value.exit_code == Exit.BAD_CHECKOUT


def test_summary_first_line_stands_alone():
    rep = {"ok": True, "mode": "smoke", "width": 64, "height": 64, "steps": 2, "tier": "tiny", "device": "cpu",
           "timings": {"total": 5.0, "import": 3.0, "load": 0.1}, "peak_rss_mb": 950.0,
           "images": [{"graph": "direct", "path": "/x.png"}]}
    first = runner.summary(rep).splitlines()[0]
    assert first == "smoke passed: 1 image(s) 64x64, 2 steps, tier tiny on cpu, 5.0s, peak RSS 950 MB"
