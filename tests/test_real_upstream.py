"""The real patch set on the real pinned upstreams (skips when they cannot be reached)."""
from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys

import pytest

from testing.upstream import EXCLUDE, ROOT, unreachable_reason

pytestmark = pytest.mark.skipif(unreachable_reason() is not None, reason=str(unreachable_reason()))


def zpatch(*args, env, expect=0) -> dict:
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", *map(str, args), "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == expect, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def env():
    e = dict(os.environ)        # ZPATCH_CACHE: the run's shared cache (conftest.py)
    e.pop("ZPATCH_OVERLAY", None)
    return e


def test_check_real_overlay_applies_on_the_pins(env):
    res = zpatch("check", env=env)
    assert res["clean"], res["problems"]
    assert [s["name"] for s in res["series"]] == ["comfyui", "comfyui-gguf"]
    assert all(s["applies"] for s in res["series"])


def test_real_checkout_apply_compile_unapply(env, tmp_path):
    dest = tmp_path / "ComfyUI"
    res = zpatch("checkout", dest, "--exclude", EXCLUDE, env=env)
    assert res["missing_objects"] == []
    gguf = dest / "custom_nodes" / "ComfyUI-GGUF"
    pristine = {p: p.read_bytes() for p in [dest / "comfy/sd.py", gguf / "loader.py"]}

    res = zpatch("apply", dest, env=env)
    assert res["changed"]
    assert zpatch("status", dest, env=env)["clean"]
    assert zpatch("apply", dest, env=env)["changed"] is False

    loader = (gguf / "loader.py").read_text()
    assert "gemma3" in loader
    assert "spiece_model" in loader
    sd = (dest / "comfy/sd.py").read_text()
    assert "shape[-2] * shape[-1]" in sd
    for f in [dest / "comfy/sd.py", *gguf.glob("*.py"), *(dest / "custom_nodes/ComfyUI-ZImage-Fix").glob("*.py")]:
        py_compile.compile(str(f), doraise=True, cfile=str(tmp_path / "c.pyc"))

    zpatch("unapply", dest, env=env)
    assert {p: p.read_bytes() for p in pristine} == pristine
    for repo in (dest, gguf):
        assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                              text=True).stdout == ""
    assert not (dest / "custom_nodes/ComfyUI-ZImage-Fix").exists()


def test_patched_modules_import_under_torch(env, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    dest = tmp_path / "ComfyUI"
    zpatch("checkout", dest, "--exclude", EXCLUDE, env=env)
    zpatch("apply", dest, env=env)
    code = ("import sys, asyncio; sys.argv = ['x', '--cpu']\n"
            "import comfy.options; comfy.options.enable_args_parsing()\n"
            "import comfy.sd, nodes\n"
            "for node in ('custom_nodes/ComfyUI-GGUF', 'custom_nodes/ComfyUI-ZImage-Fix'):\n"
            "    assert asyncio.run(nodes.load_custom_node(node)), node\n"
            "assert 'LatentUnsqueeze' in nodes.NODE_CLASS_MAPPINGS\n"
            "assert 'CLIPLoaderGGUF' in nodes.NODE_CLASS_MAPPINGS\n"
            "print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=dest, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    assert "IMPORT FAILED" not in r.stderr


def test_real_overlay_is_in_exported_form(env):
    """The CI gate on the real series: every patch is exactly what `zpatch export` writes for it."""
    res = zpatch("export", "--check", env=env)
    assert res["changed"] is False, res


def test_real_edit_commit_export_round_trip_on_a_partial_source(env, tmp_path):
    """The snapshot lacks one blob (DESIGN section 7): with it excluded, edit mode and plain git
    commits work, and an unchanged series exports to the same bytes."""
    dest = tmp_path / "ComfyUI"
    res = zpatch("checkout", dest, "--exclude", EXCLUDE, "--apply", env=env)
    gguf = dest / "custom_nodes" / "ComfyUI-GGUF"
    res = zpatch("edit", dest, env=env)
    assert [len(u["commits"]) for u in res["upstreams"]] == [1, 4]
    assert zpatch("export", dest, "--check", env=env)["changed"] is False
    (dest / "comfy/sd.py").write_text((dest / "comfy/sd.py").read_text() + "# a maintainer's edit\n")
    subprocess.run(["git", "commit", "-q", "-a", "--amend", "--no-edit"], cwd=dest, check=True,
                   capture_output=True)
    res = zpatch("export", dest, "--check", env=env, expect=1)
    assert [p["state"] for p in res["upstreams"][0]["patches"]] == ["changed"]
    assert [p["state"] for p in res["upstreams"][1]["patches"]] == ["unchanged"] * 4
    zpatch("unapply", dest, "--discard", env=env)
    for repo in (dest, gguf):
        assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                              text=True).stdout == ""
