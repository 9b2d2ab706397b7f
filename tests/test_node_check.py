"""The node notices a broken overlay at ComfyUI start: it compares the patched files with zpatch's
record of the last apply (read-only, no git) and logs one warning naming the files and the command
that fixes it; it never raises. The warning's command, followed, puts the overlay back."""
from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from testing.fixtures import git

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "zimage_patcher" / "overlay" / "ComfyUI-ZImage-Fix"


def load(name: str, path: Path, **kw):
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = load("zimage_fix_overlay_check", NODE / "overlay_check.py")


def test_the_paths_it_knows_are_the_lock_s():
    lock = tomllib.loads((ROOT / "upstream.lock").read_text())
    assert check.UPSTREAM_PATHS == {name: u["path"] for name, u in lock["upstream"].items()}


def test_an_update_that_reverts_the_patches_is_named_and_the_fix_works(world, zpatch, checkout, tmp_path):
    assert check.warning(checkout) is None                      # not applied by zpatch: nothing to say
    zpatch("apply", checkout)
    assert check.warning(checkout) is None
    git("checkout", "--", "loader.py", cwd=checkout / "custom_nodes/ComfyUI-GGUF")    # what an update does
    text = check.warning(checkout)
    assert "custom_nodes/ComfyUI-GGUF/loader.py differs from what `zpatch apply` wrote" in text
    fix = text.rsplit("; ", 1)[1].split("`")[1]
    assert fix == f"zpatch apply {shlex.quote(str(checkout))}"
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(fix, shell=True, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, "ZPATCH_OVERLAY": str(world.overlay)})
    assert done.returncode == 0, done.stderr
    assert check.warning(checkout) is None


def test_a_damaged_record_or_odd_files_never_raise(world, zpatch, checkout):
    zpatch("apply", checkout)
    (checkout / "comfy/sd.py").unlink()
    (checkout / "custom_nodes/ComfyUI-GGUF/loader.py").unlink()
    (checkout / "custom_nodes/ComfyUI-GGUF/loader.py").symlink_to("/etc/hostname")
    assert check.differences(checkout) == ["comfy/sd.py", "custom_nodes/ComfyUI-GGUF/loader.py"]
    (checkout / ".git/zpatch/record.json").write_text("{not json")
    assert check.warning(checkout) is None
    check.check_at_start(checkout / "no" / "such")             # nothing there at all


def test_comfyui_importing_the_node_logs_the_warning(world, zpatch, checkout, tmp_path, caplog):
    zpatch("apply", checkout)
    git("checkout", "--", "comfy/sd.py", cwd=checkout)
    node = tmp_path / "real-node" / "custom_nodes" / "ComfyUI-ZImage-Fix"
    shutil.copytree(NODE, node, ignore=shutil.ignore_patterns("__pycache__"))
    # the node sits in the checkout as ComfyUI loads it: <checkout>/custom_nodes/<node>
    here = checkout / "custom_nodes" / "ComfyUI-ZImage-Fix-real"
    shutil.copytree(node, here)
    with caplog.at_level(logging.WARNING, logger="ComfyUI-ZImage-Fix"):
        pkg = load("zimage_fix_real", here / "__init__.py", submodule_search_locations=[str(here)])
    assert "LatentUnsqueeze" in pkg.NODE_CLASS_MAPPINGS
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "ComfyUI-ZImage-Fix"]
    assert "comfy/sd.py differs from what `zpatch apply` wrote" in msg
