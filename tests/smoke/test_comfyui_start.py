"""The overlay node at ComfyUI's start, as a user meets it: real ComfyUI at the pin loads custom_nodes/
with its own loader and logger (tests/smoke/probe.py `start`). After an update takes a patch away, the
log says so in one warning that names the file and the command; the command, followed, clears it; and
the node loads either way (the check never stops ComfyUI)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testing.fixtures import git
from testing.smoke_support import ROOT, apply_overlay, build_checkout, run_probe, unreachable_reason

PREFIX = "ComfyUI-ZImage-Fix: the Z-Image overlay is no longer in place in "


def _zpatch(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ZPATCH_OVERLAY"}
    return subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "--overlay", str(ROOT), *map(str, args)],
                          capture_output=True, text=True, env=env)


def _warnings(out: dict) -> list[str]:
    return [line for entry in out["log"] for line in entry.splitlines() if line.startswith(PREFIX)]


@pytest.mark.skipif(unreachable_reason() is not None, reason=str(unreachable_reason()))
def test_an_update_that_reverts_a_patch_shows_in_comfyui_s_log_and_the_named_command_fixes_it(smoke_python, tmp_path):
    checkout = apply_overlay(build_checkout(tmp_path / "ComfyUI"))
    gguf = checkout / "custom_nodes" / "ComfyUI-GGUF"

    clean = run_probe(smoke_python, checkout, "start")
    assert clean["loaded"] == {"ComfyUI-GGUF": True, "ComfyUI-ZImage-Fix": True}, clean
    assert "LatentUnsqueeze" in clean["new_nodes"] and "CLIPLoaderGGUF" in clean["new_nodes"]
    assert _warnings(clean) == []
    # ComfyUI parses each node's pyproject.toml (comfy_config, the registry's parser) as it loads it
    assert not [e for e in clean["log"] if "Unable to parse pyproject.toml" in e], clean["log"]

    git("checkout", "--", "loader.py", cwd=gguf)            # what `git pull` or ComfyUI-Manager's update does
    reverted = run_probe(smoke_python, checkout, "start")
    assert reverted["loaded"] == {"ComfyUI-GGUF": True, "ComfyUI-ZImage-Fix": True}, reverted
    (line,) = _warnings(reverted)
    assert line.startswith(PREFIX + str(checkout) + ": custom_nodes/ComfyUI-GGUF/loader.py differs"), line
    fix = line.rsplit("; ", 1)[1].split("`")[1]                    # the command the warning names for a revert
    assert fix == f"zpatch apply {checkout}"

    r = _zpatch(*fix.split()[1:])                                  # followed literally (zpatch = this tree)
    assert r.returncode == 0, r.stderr
    again = run_probe(smoke_python, checkout, "start")
    assert _warnings(again) == [] and again["loaded"]["ComfyUI-ZImage-Fix"], again
    assert git("status", "--porcelain", cwd=gguf) != ""           # loader.py carries the patches again
