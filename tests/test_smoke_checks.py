"""`zpatch smoke` checks the checkout against the overlay it is told about (--overlay, ZPATCH_OVERLAY)
before it starts the harness: a smoke of an unapplied checkout, or a control of an applied one, is
refused at once with the command that fixes it. A missing smoke python (exit 8) shows a run got past
the check without starting torch."""
from __future__ import annotations

import os
import subprocess
import sys

from testing import run
from testing.fixtures import error_line


def test_smoke_uses_the_overlay_it_is_told_about(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    nopy = str(tmp_path / "no-such-python")
    r = run.zpatch("smoke", checkout, "--python", nopy, "--overlay", world.overlay, cwd=tmp_path)
    assert r.returncode == 8 and "smoke python not found" in r.stderr          # past the check
    r = run.zpatch("smoke", checkout, "--python", nopy, env={**os.environ, "ZPATCH_OVERLAY": str(world.overlay)},
                   cwd=tmp_path)
    assert r.returncode == 8, r.stderr
    # named by nothing: the overlay that applied the checkout (its record names it), past the check
    env = {k: v for k, v in os.environ.items() if k != "ZPATCH_OVERLAY"}
    r = run.zpatch("smoke", checkout, "--python", nopy, env=env, cwd=tmp_path)
    assert r.returncode == 8, r.stderr
    # that overlay gone: refused, naming it, rather than compared with the one beside zpatch
    world.overlay.rename(tmp_path / "moved")
    try:
        r = run.zpatch("smoke", checkout, "--python", nopy, env=env, cwd=tmp_path)
        assert r.returncode == 3 and "the overlay that last applied this checkout is gone" in error_line(r), r.stderr
    finally:
        (tmp_path / "moved").rename(world.overlay)


def test_a_control_of_an_applied_checkout_is_refused_and_its_hint_makes_it_pristine(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    out = tmp_path / "out"
    r = run.zpatch("smoke", checkout, "--unpatched", "--python", tmp_path / "nopy", "--out", out,
                   "--overlay", world.overlay, cwd=tmp_path)
    assert r.returncode == 4 and "negative control needs upstream without the overlay" in error_line(r)
    assert not out.exists()
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))[len("hint: "):]
    assert hint.startswith("zpatch unapply") and "--overlay" in hint
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(hint, shell=True, cwd=tmp_path, env={**os.environ, "PATH": path}, capture_output=True)
    assert done.returncode == 0, done.stderr
    r = run.zpatch("smoke", checkout, "--unpatched", "--python", tmp_path / "nopy", "--overlay", world.overlay,
                   cwd=tmp_path)
    assert r.returncode == 8, r.stderr
