"""Fixtures for the smoke-generation tests (helpers in smoke_support.py).

Checkouts are built with raw git from the pinned upstreams (a url.insteadOf mirror works); when
the upstream URLs are unreachable the tests skip with a one-line reason. Everything that imports
ComfyUI runs in a subprocess under the smoke Python: $ZPATCH_SMOKE_PYTHON if set, else the
interpreter running the tests.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testing.smoke_support import (ROOT, SMOKE_DIR, SMOKE_MODULES, apply_overlay, build_checkout,  # noqa: E402
                           lock, run_probe, unreachable_reason)


@pytest.fixture(scope="session")
def smoke_python() -> str:
    """The smoke interpreter; skips when it lacks torch/gguf/sentencepiece/safetensors."""
    py = os.environ.get("ZPATCH_SMOKE_PYTHON") or sys.executable
    if os.path.abspath(py) == os.path.abspath(sys.executable):  # not realpath: a venv's python links out
        for mod in SMOKE_MODULES:
            pytest.importorskip(mod)
    else:
        r = subprocess.run([py, "-c", "import " + ", ".join(SMOKE_MODULES)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"smoke python {py} lacks one of {', '.join(SMOKE_MODULES)}")
    return py


@pytest.fixture(scope="session")
def pristine_checkout(tmp_path_factory, smoke_python) -> Path:
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    return build_checkout(tmp_path_factory.mktemp("pristine") / "ComfyUI")


@pytest.fixture(scope="session")
def patched_checkout(tmp_path_factory, smoke_python) -> Path:
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    return apply_overlay(build_checkout(tmp_path_factory.mktemp("patched") / "ComfyUI"))


@pytest.fixture(scope="session")
def node_only_checkout(tmp_path_factory, smoke_python) -> Path:
    """Pristine upstream plus the overlay node, without the patches."""
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    dest = build_checkout(tmp_path_factory.mktemp("nodeonly") / "ComfyUI")
    ov = lock()["overlay"]
    shutil.copytree(ROOT / ov["source"], dest / ov["path"], ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, smoke_python) -> Path:
    """The tiny synthetic set, written once per session by writers.py under the smoke Python."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    r = subprocess.run([smoke_python, str(SMOKE_DIR / "writers.py"), "--out", str(out), "--tier", "tiny"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def probe(smoke_python):
    return functools.partial(run_probe, smoke_python)
