"""Fixtures for the smoke-generation tests (helpers in smoke_support.py).

Checkouts are built with raw git from the pinned upstreams (a url.insteadOf mirror works); when
the upstream URLs are unreachable the tests skip with a one-line reason. Everything that imports
ComfyUI runs in a subprocess under the smoke Python: $ZPATCH_SMOKE_PYTHON if set, else the
interpreter running the tests, forked from a server that has torch imported (the `smoke_python`
fixture in tests/conftest.py).
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

from testing.smoke_support import (ROOT, SMOKE_DIR, apply_overlay, build_checkout, byte_compiled, lock,  # noqa: E402
                                   run_probe, unreachable_reason)


@pytest.fixture(scope="session")
def pristine_checkout(tmp_path_factory, smoke_python) -> Path:
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    return byte_compiled(build_checkout(tmp_path_factory.mktemp("pristine") / "ComfyUI"), smoke_python)


@pytest.fixture(scope="session")
def patched_checkout(tmp_path_factory, smoke_python) -> Path:
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    return byte_compiled(apply_overlay(build_checkout(tmp_path_factory.mktemp("patched") / "ComfyUI")), smoke_python)


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
