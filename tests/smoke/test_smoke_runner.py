"""runner.py without torch: interpreter resolution and failure reporting."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zimage_patcher.errors import Exit, ZpatchError
from zimage_patcher.smoke import runner


@pytest.fixture
def fake_checkout(tmp_path) -> Path:
    (tmp_path / "ComfyUI" / "comfy").mkdir(parents=True)
    return tmp_path / "ComfyUI"


@pytest.fixture
def bare_python(tmp_path) -> str:
    """A real interpreter without the smoke packages: a fresh venv, no pip."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(runner._venv_python(venv))


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $ZPATCH_SMOKE_PYTHON, and a managed venv location in tmp (nothing there yet)."""
    monkeypatch.delenv(runner.ENV_PYTHON, raising=False)
    monkeypatch.delenv("ZPATCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return runner.managed_venv_dir()


@pytest.fixture
def no_venv_creation(monkeypatch):
    """Record calls to ensure_managed_venv instead of installing 6 GB."""
    calls = []
    monkeypatch.setattr(runner, "ensure_managed_venv", lambda: calls.append(1) or "/created/bin/python")
    return calls


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
    assert runner.choose_python() == (sys.executable, "from $ZPATCH_SMOKE_PYTHON")
    monkeypatch.setenv(runner.ENV_PYTHON, "/nonexistent/python")
    with pytest.raises(ZpatchError) as ei:
        runner.resolve_python()
    assert ei.value.exit_code == Exit.ENVIRONMENT
    assert ei.value.message == "smoke python not found: /nonexistent/python (from $ZPATCH_SMOKE_PYTHON)"


def test_a_relative_python_is_made_absolute(monkeypatch, tmp_path):
    # the harness runs with cwd=OUT, where a relative path would not resolve
    (tmp_path / "bin").mkdir()
    os.symlink(sys.executable, tmp_path / "bin" / "python")
    monkeypatch.chdir(tmp_path)
    assert runner.resolve_python(os.path.join("bin", "python")) == str(tmp_path / "bin" / "python")


def test_missing_python_is_an_environment_error(fake_checkout, tmp_path):
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(fake_checkout, tmp_path / "out", python="no-such-python-zpatch")
    assert ei.value.exit_code == Exit.ENVIRONMENT
    assert "--python" in ei.value.hint


def test_the_module_map_covers_requirements_txt():
    dists = [l.split("==")[0].strip() for l in runner.REQUIREMENTS.read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert sorted(dists) == sorted(runner.SMOKE_MODULES)


def test_the_dependency_check_uses_real_interpreters(bare_python):
    # the interpreter running the tests (.venv, installed with the smoke extra) has them all
    assert runner.missing_smoke_modules(sys.executable) == []
    missing = runner.missing_smoke_modules(bare_python)
    assert "torch" in missing and "google.protobuf" in missing and "yaml" in missing
    assert sorted(missing) == sorted(runner.SMOKE_MODULES.values())
    assert runner.missing_smoke_modules("/nonexistent/python") == list(runner.SMOKE_MODULES.values())


def test_the_running_interpreter_is_used_when_it_has_the_packages(no_env, no_venv_creation, capfd):
    assert runner.choose_python() == (sys.executable, "the interpreter running zpatch has the smoke packages")
    assert runner.resolve_python() == sys.executable
    assert no_venv_creation == [] and not no_env.exists()
    assert capfd.readouterr().err == (f"zpatch: smoke uses {sys.executable} "
                                      "(the interpreter running zpatch has the smoke packages)\n")


def test_a_running_interpreter_without_the_packages_gets_the_managed_venv(no_env, no_venv_creation,
                                                                          bare_python, monkeypatch, capfd):
    monkeypatch.setattr(sys, "executable", bare_python)
    py, why = runner.choose_python()
    assert py is None and why.startswith("a new managed smoke venv; the interpreter running zpatch lacks torch")
    assert runner.resolve_python() == "/created/bin/python"
    assert no_venv_creation == [1]
    assert "zpatch: smoke uses /created/bin/python (a new managed smoke venv;" in capfd.readouterr().err


def test_managed_venv_lives_in_the_xdg_cache_and_is_reused(no_env, no_venv_creation, bare_python,
                                                            monkeypatch, tmp_path):
    venv = no_env
    assert venv == tmp_path / "cache" / "zimage-patcher" / "smoke-venv"
    monkeypatch.setattr(sys, "executable", bare_python)  # the running one lacks the packages
    # a venv whose stamp matches requirements.txt is reused as is (no pip run)
    (venv / "bin").mkdir(parents=True)
    os.symlink(bare_python, venv / "bin" / "python")
    (venv / ".zpatch-requirements.sha256").write_text(runner._requirements_digest() + "\n")
    assert runner.resolve_python() == str(venv / "bin" / "python")
    assert no_venv_creation == []
    # a stale stamp (requirements.txt changed) means a reinstall
    (venv / ".zpatch-requirements.sha256").write_text("old\n")
    assert runner.resolve_python() == "/created/bin/python"


def test_a_failed_install_streams_pip_and_ends_in_a_clear_error(bare_python, tmp_path, capfd):
    # a venv without pip: the real pip step fails at once, without a network
    venv = Path(bare_python).parents[1]
    with pytest.raises(ZpatchError) as ei:
        runner.ensure_managed_venv(venv)
    err = ei.value
    assert err.exit_code == Exit.ENVIRONMENT
    assert err.message.startswith("creating the smoke environment failed: ")
    assert err.message.endswith(": No module named pip")
    assert err.details["returncode"] != 0
    out = capfd.readouterr()
    assert out.out == ""  # nothing on stdout: --json stays parseable
    assert f"creating the smoke venv in {venv}" in out.err and "about 6 GB" in out.err
    assert f"rm -rf {venv}" in out.err and "https://download.pytorch.org/whl/cpu" in out.err
    assert "No module named pip" in out.err  # streamed, not swallowed
    assert not (venv / runner._STAMP).exists()


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
    assert err.details["failure"] == {"stage": "harness",
                                      "error": "harness exited 139 without a report: Segmentation fault (core dumped)"}
    assert f"reproduce: zpatch smoke {fake_checkout} --out {tmp_path / 'out'}" in err.hint
    assert f"full log: {tmp_path / 'out' / runner.LOG_NAME}" in err.hint


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
