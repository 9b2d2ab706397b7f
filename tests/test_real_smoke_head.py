"""The real ComfyUI series, rebased onto ComfyUI's newest commit, passes the CPU smoke.

ComfyUI moved on after the pin: its Wan 2.1 VAE memory estimates changed (the patch's hunk
conflicts, resolved below) and it removed the Z-Image `norm_final` module, so a model file that
has the tensor loads with ComfyUI's own `unet unexpected: ['norm_final.weight']` log line. ComfyUI
carries on after that line and so must the smoke: it is a warning in the report, not a failure.

Everything runs through zpatch's command line on a scratch copy of the overlay (the repository's
patches/ and upstream.lock are never touched); skipped when the upstreams cannot be reached.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testing.upstream import EXCLUDE, ROOT, lock, unreachable_reason

pytestmark = pytest.mark.skipif(unreachable_reason() is not None, reason=str(unreachable_reason()))

CONFLICT = re.compile(r"^<{7}[^\n]*\n(?P<ours>.*?)(?:^\|{7}[^\n]*\n.*?)?^={7}\n(?P<theirs>.*?)^>{7}[^\n]*\n",
                      re.S | re.M)


def resolve_wan21_estimates(text: str) -> str:
    """The conflict in comfy/sd.py, resolved.

    Upstream (ours, in the scratch clone) rewrote the Wan 2.1 VAE's memory estimates after the pin
    (e4fb3a3 / 6a2678a / e711aaf): a cheaper factor for clips of up to 4 frames,
    `(1500 if shape[2]<=4 else 6000) * shape[3] * shape[4]`. The patch (theirs) made the old
    estimates rank-agnostic, `6000 * shape[-2] * shape[-1]`. Keep upstream's new numbers and carry
    the patch's intent into them: H and W indexed from the end, and a 4-D (B, C, H, W) image latent
    counted as the single frame it is (what the patch's decode turns it into)."""
    (conflict,) = CONFLICT.finditer(text)
    upstream, patch = conflict["ours"], conflict["theirs"]
    assert "(1500 if shape[2]<=4 else 6000) * shape[3] * shape[4]" in upstream, upstream
    assert "6000 * shape[-2] * shape[-1]" in patch, patch
    resolved = (upstream.replace("shape[2]<=4", "len(shape) < 5 or shape[2] <= 4")
                        .replace("shape[3] * shape[4]", "shape[-2] * shape[-1]"))
    assert resolved.count("len(shape) < 5 or shape[2] <= 4") == 2 and "shape[3]" not in resolved
    return text[:conflict.start()] + resolved + text[conflict.end():]


def zpatch(*args, env, expect=0) -> dict:
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", *map(str, args), "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == expect, r.stdout[-4000:] + r.stderr[-4000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory, smoke_python) -> dict:
    e = dict(os.environ, ZPATCH_SMOKE_PYTHON=smoke_python)   # ZPATCH_CACHE: the run's shared cache (conftest.py)
    e["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg"))  # rebase scratch area, smoke models
    e.pop("ZPATCH_OVERLAY", None)
    return e


@pytest.fixture(scope="module")
def overlay(tmp_path_factory) -> Path:
    """A scratch copy of the overlay: upstream.lock, the series and the node's sources."""
    dest = tmp_path_factory.mktemp("overlay")
    shutil.copy2(ROOT / "upstream.lock", dest / "upstream.lock")
    shutil.copytree(ROOT / "patches", dest / "patches")
    src = lock()["overlay"]["source"]
    shutil.copytree(ROOT / src, dest / src, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_rebased_series_passes_the_smoke_at_comfyui_head(env, overlay, tmp_path):
    old_pin = lock()["upstream"]["comfyui"]["commit"]

    res = zpatch("rebase", "comfyui", "--onto", "origin/master", "--overlay", overlay, env=env, expect=5)
    head = res["onto"]
    assert res["stopped"] and head != old_pin
    (conflict,) = [p for p in res["patches"] if p["state"] == "conflict"]
    assert conflict["name"] == "0001-Let-video-VAEs-decode-4-D-image-latents.patch"
    sd = Path(res["scratch"]) / "comfy" / "sd.py"
    sd.write_text(resolve_wan21_estimates(sd.read_text()))
    res = zpatch("rebase", "--continue", "--overlay", overlay, env=env)
    assert res["written"] and [p["state"] for p in res["patches"]] == ["changed"]
    assert f'commit = "{head}"' in (overlay / "upstream.lock").read_text()
    assert (ROOT / "upstream.lock").read_text().count(old_pin) == 1      # the repository's own is untouched

    dest = tmp_path / "ComfyUI"
    zpatch("checkout", dest, "--exclude", EXCLUDE, "--overlay", overlay, env=env)
    zpatch("apply", dest, "--overlay", overlay, env=env)
    text = (dest / "comfy" / "sd.py").read_text()
    assert "(1500 if len(shape) < 5 or shape[2] <= 4 else 6000) * shape[-2] * shape[-1]" in text
    assert "image_latent = self.latent_dim == 3 and samples_in.ndim == 4" in text

    # the smoke checks the checkout against the overlay it is told about: the rebased one, not the repository's
    refused = zpatch("smoke", dest, "--out", tmp_path / "smoke", env=env, expect=4)
    assert "is not applied here" in refused["error"] and "(outdated)" in refused["error"]
    rep = zpatch("smoke", dest, "--out", tmp_path / "smoke", "--overlay", overlay, env=env)["report"]
    assert rep["ok"] is True and rep["failure"] is None, rep["failure"]
    assert rep["commits"]["comfyui"]["commit"] == head
    assert {"stage": "load", "level": "WARNING", "message": "unet unexpected: ['norm_final.weight']"} \
        in rep["warnings"]
    assert rep["stages"]["load"]["text_encoder_keys"]["checked"] is True
    assert sorted(i["graph"] for i in rep["images"]) == ["direct", "latent_unsqueeze"]
