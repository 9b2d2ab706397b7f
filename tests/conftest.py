from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from testing.fixtures import World

from zimage_patcher.cli import main


def pytest_configure(config):
    # One cache of upstream repositories per test run, never the user's own.
    if "ZPATCH_CACHE" not in os.environ:
        os.environ["ZPATCH_CACHE"] = tempfile.mkdtemp(prefix="zpatch-test-cache-")
        config._zpatch_cache = os.environ["ZPATCH_CACHE"]


def pytest_unconfigure(config):
    cache = getattr(config, "_zpatch_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def world(tmp_path, monkeypatch):
    w = World(tmp_path)
    for k, v in w.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ZPATCH_OVERLAY", raising=False)
    return w


class Zpatch:
    def __init__(self, overlay: Path):
        self.overlay = overlay

    def __call__(self, *args, expect: int | None = 0):
        r = CliRunner().invoke(main, [args[0], "--overlay", str(self.overlay), *map(str, args[1:])],
                               catch_exceptions=False)
        if expect is not None:
            assert r.exit_code == expect, f"exit {r.exit_code}, wanted {expect}\n{r.output}"
        return r

    def json(self, *args, expect: int | None = 0) -> dict:
        r = self(*args, "--json", expect=expect)
        return json.loads(r.stdout)


@pytest.fixture
def zpatch(world):
    return Zpatch(world.overlay)


@pytest.fixture
def checkout(world, tmp_path):
    """A user's own ComfyUI install (plain git clones at the pins)."""
    return world.clone_checkout(tmp_path / "ComfyUI")
