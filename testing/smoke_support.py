"""Helpers for the smoke-generation tests: checkouts at the pins made and patched by zpatch's own
engine, and the probe subprocess (fixtures are in conftest.py)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from zimage_patcher import apply, clone, patchset

from testing.upstream import EXCLUDE, lock, unreachable_reason  # noqa: E402,F401  (one reachability probe per run)

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DIR = ROOT / "zimage_patcher" / "smoke"
HERE = ROOT / "tests" / "smoke"


def build_checkout(dest: Path) -> Path:
    """ComfyUI with ComfyUI-GGUF nested, at the pins of upstream.lock, made by zpatch itself."""
    clone.checkout(patchset.load(ROOT), dest, exclude=[EXCLUDE])
    return dest


def apply_overlay(dest: Path) -> Path:
    """Both series and the node, applied by zpatch."""
    apply.apply(patchset.load(ROOT), dest)
    return dest


def byte_compiled(dest: Path, python: str) -> Path:
    """DEST's modules byte-compiled by PYTHON, as the first import of a checkout leaves them where Python
    may write bytecode: the many smoke runs on one session checkout then read ComfyUI's bytecode instead
    of each compiling it again (under PYTHONDONTWRITEBYTECODE too). Hash-checked, so a file a test
    edits is compiled afresh from its source, however quick the edit."""
    subprocess.run([python, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", str(dest)],
                   capture_output=True)
    return dest


def run_probe(smoke_python: str, checkout: Path, *args, expect_ok: bool = True) -> dict:
    """Run tests/smoke/probe.py (imports ComfyUI) in a subprocess; return its JSON answer."""
    r = subprocess.run([smoke_python, str(HERE / "probe.py"), "--checkout", str(checkout), *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    lines = [l for l in r.stdout.splitlines() if l.startswith("PROBE ")]
    if not lines:
        raise AssertionError(f"probe exited {r.returncode} without an answer\n{r.stderr[-4000:]}")
    out = json.loads(lines[-1][len("PROBE "):])
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"probe failed ({r.returncode}): {out}\n{r.stderr[-3000:]}")
    return out
