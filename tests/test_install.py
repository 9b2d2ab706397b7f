"""`pipx install .` carries the overlay: the wheel bundles lock, patches and node, verified."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from testing.upstream import ROOT


def test_wheel_bundles_the_overlay_and_finds_it_outside_the_repository(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("zimage_patcher-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    for f in ("zimage_patcher/_bundle/upstream.lock", "zimage_patcher/_bundle/patches/comfyui/series",
              "zimage_patcher/_bundle/zimage_patcher/overlay/ComfyUI-ZImage-Fix/nodes.py",
              "zimage_patcher/overlay/workflow_z_image.json", "zimage_patcher/smoke/harness.py"):
        assert f in names, f
    # from a directory with no overlay in sight, the installed package uses its bundle,
    # and every hash in the bundled lock matches the bundled bytes (CRLF patches included)
    code = ("from zimage_patcher import patchset; r = patchset.find_root(); ov = patchset.load(r); "
            "print(r); print(sum(len(s.patches) for s in ov.series))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    root, count = out.stdout.split()
    assert root == str(site / "zimage_patcher" / "_bundle")
    assert int(count) == sum(len((ROOT / "patches" / u / "series").read_text().split())
                             for u in ("comfyui", "comfyui-gguf"))
