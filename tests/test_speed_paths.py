"""The console script's fast paths (zimage_patcher/entry.py) print exactly what the CLI prints.

`zpatch --help` and a no-op `zpatch apply` are answered before click is imported; each must say
byte for byte what click and the command say, and hand everything else to the CLI. (How fast they
are is measured in bench/, never asserted here.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zimage_patcher.cli import fast_help

# the console script as pip writes it (argv[0] ends in "zpatch"), and the same argv through click
FAST = ("import sys; sys.argv = ['zpatch', *sys.argv[1:]]; from zimage_patcher.entry import main; main(); "
        "'click' in sys.modules or print('FAST PATH', file=sys.stderr)")     # answered without click
CLICK = "import sys; sys.argv = ['zpatch', *sys.argv[1:]]; from zimage_patcher.cli import main; main()"


def _run(code: str, *args, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def _fresh() -> bool:
    """main_help.txt is what click renders now (when not, only the test below fails over it: the fast
    path steps aside, and the others check that it does)."""
    return Path(fast_help.HELP_FILE).read_text(encoding="utf-8") == fast_help.expected()


def test_the_stored_main_help_is_clicks_rendering():
    assert Path(fast_help.HELP_FILE).read_text(encoding="utf-8") == fast_help.expected(), (
        "zimage_patcher/cli/main_help.txt is not what click renders for `zpatch --help` now (a command or its help "
        "changed, or the CLI's code did); regenerate it: python -m zimage_patcher.cli.fast_help")
    assert fast_help.render().isascii()


def test_a_stale_main_help_is_never_printed(tmp_path, monkeypatch, capfd):
    from zimage_patcher import entry
    monkeypatch.setattr(entry, "_plain_run", lambda: True)     # as the `zpatch` script, whatever runs pytest
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(entry, "HELP_FILE", str(tmp_path / "main_help.txt"))
    Path(entry.HELP_FILE).write_text(f"key {entry.help_key()}\nthe help\n")
    assert entry._help(["--help"]) and capfd.readouterr().out == "the help\n"
    Path(entry.HELP_FILE).write_text("key 00000000-1\nan old help\n")     # rendered from other sources
    assert not entry._help(["--help"]) and capfd.readouterr().out == ""


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("columns", ["80", "200"])
def test_help_fast_path_prints_what_click_prints(flag, columns):
    fast, slow = (_run(code, flag, env={"COLUMNS": columns}) for code in (FAST, CLICK))
    assert ("FAST PATH" in fast.stderr) == _fresh()
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout) == (0, fast_help.render())


def test_help_on_a_narrow_terminal_is_left_to_click():
    fast, slow = (_run(code, "--help", env={"COLUMNS": "60"}) for code in (FAST, CLICK))
    assert "FAST PATH" not in fast.stderr
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)
    assert fast.stdout != fast_help.render()      # wrapped at 58 columns


def test_a_stdout_that_is_not_ascii_is_left_to_click():
    fast, slow = (_run(code, "--help", env={"COLUMNS": "100", "PYTHONIOENCODING": "utf-16"}) for code in (FAST, CLICK))
    assert "FAST PATH" not in fast.stderr
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)


def test_shell_completion_is_left_to_click():
    env = {"_ZPATCH_COMPLETE": "bash_complete", "COMP_WORDS": "zpatch --he", "COMP_CWORD": "1"}
    fast, slow = (_run(code, "--help", env=env) for code in (FAST, CLICK))
    assert "FAST PATH" not in fast.stderr
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)


def _applied(world, zpatch, dest: Path) -> Path:
    co = world.clone_checkout(dest)
    zpatch("apply", co)
    return co


def test_noop_apply_fast_path_prints_what_the_command_prints(world, zpatch, tmp_path):
    co = _applied(world, zpatch, tmp_path / "ComfyUI")
    env = {"ZPATCH_OVERLAY": str(world.overlay)}
    for args, cwd in (([co], tmp_path), ([], co / "custom_nodes")):
        fast, slow = (_run(code, "apply", *args, env=env, cwd=cwd) for code in (FAST, CLICK))
        assert fast.stderr == "FAST PATH\n", fast.stderr
        assert (fast.returncode, fast.stdout, slow.stderr) == (slow.returncode, slow.stdout, "")
        assert fast.stdout.startswith("Already applied (")
    fast, slow = (_run(code, "apply", co, env={**env, "PYTHONIOENCODING": "utf-16"}) for code in (FAST, CLICK))
    assert "FAST PATH" not in fast.stderr and (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)


def test_apply_with_work_to_do_goes_to_the_command(world, zpatch, tmp_path):
    env = {"ZPATCH_OVERLAY": str(world.overlay)}
    a, b = world.clone_checkout(tmp_path / "a"), world.clone_checkout(tmp_path / "b")
    fast, slow = _run(FAST, "apply", a, env=env), _run(CLICK, "apply", b, env=env)
    assert "FAST PATH" not in fast.stderr
    assert fast.returncode == slow.returncode == 0
    assert fast.stdout.replace(str(a), "CO") == slow.stdout.replace(str(b), "CO")
    # an edit after apply: the command, not the fast path, says what it does about it
    (a / "comfy/sd.py").write_text("edited\n")
    (b / "comfy/sd.py").write_text("edited\n")
    fast, slow = _run(FAST, "apply", a, env=env), _run(CLICK, "apply", b, env=env)
    assert "FAST PATH" not in fast.stderr
    assert fast.returncode == slow.returncode != 0
    assert fast.stderr.replace(str(a), "CO") == slow.stderr.replace(str(b), "CO")


@pytest.mark.parametrize("args", [["-q", "apply", "CO"], ["apply", "CO", "--json"], ["apply", "FILE"],
                                  ["apply", "--", "CO"], ["apply", "missing-dir"]])
def test_anything_but_a_plain_noop_apply_goes_to_the_command(world, zpatch, tmp_path, args):
    co = _applied(world, zpatch, tmp_path / "ComfyUI")
    (tmp_path / "FILE").write_text("not a checkout\n")
    args = [str(co) if a == "CO" else str(tmp_path / a) if a in ("FILE", "missing-dir") else a for a in args]
    env = {"ZPATCH_OVERLAY": str(world.overlay)}
    fast, slow = (_run(code, *args, env=env, cwd=tmp_path) for code in (FAST, CLICK))
    assert "FAST PATH" not in fast.stderr
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)
