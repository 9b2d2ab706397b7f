"""What a new user meets: the checkout found from inside it, --version, -q, JSON on usage errors,
streamed verify, colour only on a terminal and never with NO_COLOR, exit codes in step with the README."""
from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zimage_patcher.cli import main
from zimage_patcher.errors import EXIT_HELP

ROOT = Path(__file__).resolve().parent.parent


def test_commands_find_the_checkout_from_inside_it(world, zpatch, checkout, monkeypatch):
    for inside in (checkout / "comfy", checkout / "custom_nodes/ComfyUI-GGUF",
                   checkout / "custom_nodes/ComfyUI-GGUF"):
        monkeypatch.chdir(inside)
        res = zpatch.json("apply")
        assert res["checkout"] == str(checkout.resolve())
        assert zpatch.json("status")["checkout"] == str(checkout.resolve())
    assert "line 10 PATCHED" in (checkout / "comfy/sd.py").read_text()


def test_version_names_the_overlay_and_its_pins(world, monkeypatch):
    monkeypatch.setenv("ZPATCH_OVERLAY", str(world.overlay))
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0
    assert re.search(r"^zpatch \S+", r.output)
    assert f"comfyui pinned at {world.comfy_pin[:12]}" in r.output
    assert f"comfyui-gguf pinned at {world.gguf_pin[:12]}" in r.output


def test_quiet_prints_nothing_on_success_and_still_the_error(zpatch, checkout, tmp_path):
    r = zpatch("apply", checkout, "-q")
    assert r.stdout == "" and r.stderr == ""
    r = zpatch("apply", tmp_path / "nowhere", "-q", expect=4)
    assert r.stderr.startswith("error: ")


def test_usage_errors_honour_json(zpatch):
    r = CliRunner().invoke(main, ["apply", "--json", "--no-such-option"])
    assert r.exit_code == 2
    env = json.loads(r.stdout)
    assert env["ok"] is False and env["exit_code"] == 2 and "no-such-option" in env["error"]
    helps = env["hint"].split("`")[1]                  # a command, run literally (it said "see --help")
    assert helps == "zpatch apply --help" and CliRunner().invoke(main, helps.split()[1:]).exit_code == 0
    r = CliRunner().invoke(main, ["apply", "--no-such-option"])
    assert r.exit_code == 2 and "No such option" in r.output


@pytest.mark.parametrize("path", ["../etc", "/etc/passwd", "no/such/file.py"])
def test_checkout_exclude_must_name_a_path_of_the_upstream(zpatch, tmp_path, path):
    r = zpatch("checkout", tmp_path / "C", "--exclude", path, expect=2)
    assert "--exclude" in r.stderr and not (tmp_path / "C").exists()


def test_checkout_into_an_unwritable_place_is_a_checkout_error_not_a_tool_error(zpatch):
    r = zpatch("checkout", "/proc/zpatch-nope", expect=4)
    assert "cannot create it" in r.stderr and "None" not in r.stderr


def test_warnings_go_to_stderr(zpatch, world, tmp_path):
    # a missing object in the source repository is a warning: stderr, never mixed into stdout
    from testing.fixtures import git
    blob = git("rev-parse", f"{world.comfy_pin}:nodes.py", cwd=world.comfy_up)
    obj = world.comfy_up / ".git/objects" / blob[:2] / blob[2:]
    obj.unlink()
    r = zpatch("checkout", tmp_path / "C")
    assert "warning: nodes.py is missing" in r.stderr and "warning:" not in r.stdout


def test_verify_streams_each_step_and_says_what_it_did_not_run(zpatch, tmp_path):
    r = zpatch("verify", "--no-smoke", "--keep", tmp_path / "v")
    lines = r.stdout.splitlines()
    assert [l.split()[1] for l in lines[:5]] == ["checkout", "check", "apply", "status", "compile"]
    assert "smoke generation was not run (--no-smoke)" in lines[-1]
    zpatch("verify", "--no-smoke", "--keep", tmp_path / "v")       # a second run reuses the folder
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/precious").write_text("x")
    zpatch("verify", "--no-smoke", "--keep", tmp_path / "mine", expect=2)
    assert (tmp_path / "mine/precious").read_text() == "x"


def _stderr_on_a_terminal(args, env) -> bytes:
    master, slave = pty.openpty()
    subprocess.run([sys.executable, "-m", "zimage_patcher.cli", *args], stderr=slave, stdout=subprocess.DEVNULL,
                   env=env)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 4096):
            out += chunk
    except OSError:
        pass
    os.close(master)
    return out


def test_colour_on_a_terminal_unless_no_color(world, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    args = ["apply", "--overlay", str(world.overlay), str(tmp_path / "nowhere")]
    assert b"\x1b[" in _stderr_on_a_terminal(args, env)
    plain = _stderr_on_a_terminal(args, {**env, "NO_COLOR": "1"})
    assert b"\x1b[" not in plain and b"error: " in plain


def test_readme_exit_code_table_is_the_one_zpatch_documents():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, re.M))
    assert {int(k): v for k, v in rows.items()} == {int(k): v for k, v in EXIT_HELP.items()}
    r = CliRunner().invoke(main, ["--help"])       # the table lives in `zpatch --help`, once
    for code in EXIT_HELP:
        assert re.search(rf"^ +{int(code)} +\S", r.output, re.M), code
    sub = CliRunner().invoke(main, ["status", "--help"]).output
    assert "every code is listed in `zpatch --help`" in " ".join(sub.split()) and not re.search(r"^ +130 ", sub, re.M)


def test_verbose_lists_every_file_and_error_details(zpatch, checkout, world):
    out = zpatch("apply", checkout, "-v").stdout
    assert "wrote    comfy/sd.py" in out and "wrote    custom_nodes/ComfyUI-GGUF/loader.py" in out
    assert "restored comfy/sd.py" in zpatch("unapply", checkout, "-v").stdout
    p = next((world.overlay / "patches/comfyui").glob("0001-*.patch"))
    p.write_text(p.read_text().replace(" line 9 of sd.py\n", " line 9 of sd.py (stale)\n"))
    world.relock()
    r = zpatch("apply", checkout, "-v", expect=5)
    assert '"failures"' in r.stderr and '"expected"' in r.stderr


def test_upstream_probe_honours_git_config_global_as_zpatch_does(world, tmp_path):
    """`make test` once skipped the whole upstream suite when the mirror came through
    GIT_CONFIG_GLOBAL: the probe must see git configured as the user configured it."""
    from testing.fixtures import COMFY_URL, GGUF_URL
    from testing.upstream import probe
    urls = {"comfyui": COMFY_URL, "comfyui-gguf": GGUF_URL}        # example.invalid: never reachable
    home = tmp_path / "home"
    home.mkdir()
    bare = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    assert probe(bare, urls) is not None
    assert probe({**bare, "GIT_CONFIG_GLOBAL": os.environ["GIT_CONFIG_GLOBAL"]}, urls) is None   # world's mirrors


def test_global_options_go_before_the_command_too_and_quiet_keeps_the_failure(world, zpatch):
    """`zpatch -q rebase ...` was a usage error; `zpatch rebase -q` stopping on a conflict printed nothing."""
    from testing.fixtures import LOADER_PY, commit, replace_line
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20")
    from zimage_patcher.cli import main
    from click.testing import CliRunner
    r = CliRunner().invoke(main, ["-q", "--overlay", str(world.overlay), "rebase", "comfyui-gguf", "--onto", "main"])
    assert r.exit_code == 5 and r.stdout == ""
    error, hint = r.stderr.splitlines()
    assert error.startswith("error: comfyui-gguf onto ") and error.endswith("0002-loader-tokenizer.patch conflicts")
    assert hint.startswith("hint: resolve the files in ") and f"`zpatch rebase --overlay {world.overlay} --continue`" in hint
    r = CliRunner().invoke(main, ["--json", "rebase", "--overlay", str(world.overlay), "--abort"])
    assert r.exit_code == 0 and __import__("json").loads(r.stdout)["exit_code"] == 0


def test_a_conflict_a_command_reports_is_its_error_line_in_quiet_and_json_and_the_hint_works(world, zpatch, tmp_path):
    """A dry-run rebase (and drift) meeting a conflict exits 5: -q printed "error: Dry run: nothing written."
    and --json had ok false with no `error` or `hint`. Now both carry the conflict and the next step,
    which, run literally, stops the real rebase at that conflict."""
    from testing import run
    from testing.fixtures import LOADER_PY, commit, overlay_snapshot, replace_line
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20")
    for argv in (["rebase", "comfyui-gguf", "--onto", "main", "--dry-run"], ["drift", "--upstream", "comfyui-gguf"]):
        r = zpatch(*argv, "-q", expect=5)
        error, hint = r.stderr.splitlines()
        assert "0002-loader-tokenizer.patch conflict" in error
        assert hint.startswith(f"hint: `zpatch rebase --overlay {world.overlay} comfyui-gguf --onto ")
        res = zpatch.json(*argv, expect=5)
        assert res["ok"] is False and res["error"] == error[len("error: "):] and res["hint"] == hint[len("hint: "):]
        assert res["details"] == {}
    before = overlay_snapshot(world)
    r = run.follow(hint[len("hint: "):].split("`")[1], tmp_path, world.env)
    assert r.returncode == 5 and "CONFLICT in 0002-loader-tokenizer.patch" in r.stdout, r.stdout + r.stderr
    assert zpatch.json("rebase", "--abort")["aborted"] is True and overlay_snapshot(world) == before


def test_a_hint_names_the_overlay_the_user_named(world, zpatch, tmp_path, monkeypatch):
    """A newcomer ran `zpatch check --overlay OV` from elsewhere; the hint's `zpatch lock` then failed
    where they stood. With --overlay given, every zpatch command in a hint carries it."""
    import shlex
    import subprocess
    import sys
    p = world.overlay / "patches/comfyui-gguf/0001-loader-gemma3.patch"
    p.write_bytes(p.read_bytes().replace(b"Last-Update:", b"X-Reviewed: yes\nLast-Update:", 1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = zpatch("export", "--check", expect=3)
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    assert f"zpatch lock --overlay {shlex.quote(str(world.overlay))}" in hint, hint
    cmd = hint.split("run `", 1)[1].split("`", 1)[0]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    assert subprocess.run(cmd, shell=True, cwd=elsewhere, env=env, capture_output=True).returncode == 0
    assert zpatch.json("check", "--no-apply")["clean"]


def test_shell_completion_offers_the_overlays_upstream_names(world):
    """A newcomer: completion did not complete upstream names (rebase UPSTREAM, drift --upstream)."""
    import subprocess
    import sys
    env = {**os.environ, "_ZPATCH_COMPLETE": "bash_complete", "COMP_CWORD": "4"}
    for words, want in ((["rebase", "--overlay", str(world.overlay), "comfyui-"], ["comfyui-gguf"]),
                        (["rebase", "--overlay", str(world.overlay), "comf"], ["comfyui", "comfyui-gguf"])):
        r = subprocess.run([sys.executable, "-c", "from zimage_patcher.cli import main; main(prog_name='zpatch')"],
                           capture_output=True, text=True, env={**env, "COMP_WORDS": " ".join(["zpatch", *words])})
        assert [line.split(",", 1)[1] for line in r.stdout.split()] == want, r.stdout + r.stderr


def test_each_command_says_what_to_do_after_an_interruption_of_its_own():
    """Ctrl-C in `checkout`, `edit` or `refresh` said that an interrupted apply or unapply is rolled back
    by the next command: only apply and unapply say that now; each other command its own way on."""
    from zimage_patcher.cli import main
    from zimage_patcher.cli.base import INTERRUPTED, ROLLED_BACK, WROTE_NOTHING
    names = {n for n, c in main.commands.items() if not hasattr(c, "commands")}
    names |= {f"{n} {s}" for n, c in main.commands.items() for s in getattr(c, "commands", {})}
    assert set(INTERRUPTED) == names
    assert {n for n, h in INTERRUPTED.items() if h == ROLLED_BACK} == {"apply", "unapply"}
    assert {n for n, h in INTERRUPTED.items() if h == WROTE_NOTHING} == {"status", "check"}
    for n in ("edit", "refresh"):
        assert "`{again}`" in INTERRUPTED[n]            # the command line as it was run (tests/test_refresh.py)
    assert "checkout command" in INTERRUPTED["checkout"]       # checkout's own hint names the command (below)


def test_a_commands_help_lists_exit_1_only_when_it_can_exit_1():
    """`zpatch checkout --help` said "1 found something to act on", which checkout never returns."""
    from click.testing import CliRunner
    from zimage_patcher.cli import main
    from zimage_patcher.cli.base import INTERRUPTED
    findings = {"status", "check", "export", "drift", "refresh"}
    for name in INTERRUPTED:
        r = CliRunner().invoke(main, [*name.split(), "--help"])
        assert r.exit_code == 0, r.output
        assert ("1 found something to act on" in r.output) == (name in findings), name
        assert "2 bad command line" in r.output
