from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from testing import ram_scratch, smoke_server
from testing.fixtures import World

from zimage_patcher.cli import main


def pytest_configure(config):
    if not hasattr(config, "workerinput"):       # workers inherit the controller's TMPDIR
        ram = ram_scratch.choose()      # in RAM when that is safe and roomy: testing/ram_scratch.py
        if ram:
            ram_scratch.sweep(ram)
            os.environ["TMPDIR"] = ram
            tempfile.tempdir = None              # tempfile asks TMPDIR again
            config._zpatch_ram = ram
    # One cache of upstream repositories per test run, never the user's own.
    if "ZPATCH_CACHE" not in os.environ:
        os.environ["ZPATCH_CACHE"] = tempfile.mkdtemp(prefix="zpatch-test-cache-")
        config._zpatch_cache = os.environ["ZPATCH_CACHE"]


# How the run is spread over the workers (pyproject.toml: -n auto). The tests that need the smoke
# interpreter (the `smoke_python` fixture) go to one worker as one unit: one fork server with torch,
# one set of checkouts at the pins, their module fixtures built once. Being the biggest unit, it is
# handed out first. The other tests go one at a time, those marked `slow` first (tens of seconds:
# kill loops, whole workflow runs), so that the run does not end waiting on one of them.
# (xdist's own --dist loadgroup cannot do this on pytest 9: pytest-xdist issue #1386.)
SMOKE_TESTS = ("tests/smoke/", "tests/test_real_smoke_head.py", "tests/test_real_upstream.py",
               "tests/test_drift_job.py::test_the_job_on_the_real_upstreams", "tests/test_overlay_node.py",
               "tests/test_node_package.py::test_matches_real_comfyui_at_the_pin")


@pytest.hookimpl(optionalhook=True)                 # a hook of pytest-xdist: unknown under -p no:xdist
def pytest_xdist_auto_num_workers(config):
    """-n auto: a worker per core plus one, plus one per core that other processes keep busy (at most two
    workers per core). A worker keeps a core busy most of the time (pytest, zpatch and git run one after
    another), but not all of it: it waits on syncs to disk and on the processes a test holds at a pause
    point, and one more worker fills those waits (on a quiet 2-core machine: 254 s with 2 workers, 215 s
    with 3, 212 s with 4). Where other work already runs, the kernel shares each core among the runnable
    processes, and the extra workers keep the suite's share near what it has alone (no more than that:
    with two CPU hogs, 5 workers took 409 s where 4 took 344-375 s). Busy: the machine's
    CPU time over a quarter of a second now, while this process waits (not a load average, which still
    counts a run just finished)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or not hasattr(os, "sched_getaffinity"):
        return None                                    # pytest-xdist's own answer

    def ticks() -> tuple[int, int]:                    # (busy, all) jiffies of all cores, from /proc/stat
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
        return user + nice + system + irq + softirq, user + nice + system + idle + iowait + irq + softirq + steal

    cores = len(os.sched_getaffinity(0))
    try:
        busy0, all0 = ticks()
        time.sleep(0.25)
        busy1, all1 = ticks()
    except (OSError, ValueError):
        return None
    others = (busy1 - busy0) / max(1, all1 - all0) * (os.cpu_count() or cores)
    return min(2 * cores, cores + max(1, round(others)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "load":      # a --dist the user chose on the command line
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SmokeTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "smoke" if nodeid.startswith(SMOKE_TESTS) else nodeid

    return SmokeTogether(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable: otherwise as collected
    for item in items:
        if "smoke_python" in getattr(item, "fixturenames", ()) and not item.nodeid.startswith(SMOKE_TESTS):
            warnings.warn(f"{item.nodeid} needs the smoke interpreter: add it to SMOKE_TESTS in tests/conftest.py "
                          "(else its worker starts a second smoke server)", pytest.PytestWarning)


def pytest_sessionstart(session):
    """At its end pytest deletes the temporary folders of the run three runs back (a run leaves about a
    gigabyte, 150,000 files): ~10 s on one core after the last test. Start that deletion now, beside the
    tests, in a process of its own running pytest's own cleanup (which skips folders another live run
    holds); pytest_sessionfinish waits for it, and pytest's cleanup at the end then finds little left."""
    config = session.config
    if hasattr(config, "workerinput") or config.getini("tmp_path_retention_policy") == "none":
        return                  # a worker's folders are in the main process's; "none" keeps nothing to delete
    try:
        from _pytest.pathlib import LOCK_TIMEOUT
        factory = config._tmp_path_factory
        if factory._given_basetemp is not None:
            return              # --basetemp: pytest empties that folder itself, at the start
        base = factory.getbasetemp()
        # in RAM, only this run's folder is kept (and only until it ends green: pytest_unconfigure)
        keep = 1 if hasattr(config, "_zpatch_ram") else int(config.getini("tmp_path_retention_count"))
        code = ("import sys; from pathlib import Path; from _pytest.pathlib import cleanup_numbered_dir; "
                "cleanup_numbered_dir(Path(sys.argv[1]), 'pytest-', int(sys.argv[2]), float(sys.argv[3]))")
        config._zpatch_tmp_cleanup = subprocess.Popen(
            [sys.executable, "-c", code, str(base.parent), str(keep), str(base.stat().st_mtime - LOCK_TIMEOUT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (ImportError, AttributeError, OSError, ValueError):
        pass            # a pytest that keeps its folders otherwise: it cleans up at the end, as always


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    cleanup = getattr(session.config, "_zpatch_tmp_cleanup", None)
    if cleanup is not None:
        cleanup.wait()
    session.config._zpatch_green = exitstatus == 0


def pytest_unconfigure(config):
    cache = getattr(config, "_zpatch_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    # a green run's 1.5 GB do not stay in RAM; a red one's stay, to be looked at, until the next run
    if getattr(config, "_zpatch_ram", None) and getattr(config, "_zpatch_green", False):
        factory = getattr(config, "_tmp_path_factory", None)
        if factory is not None and factory._given_basetemp is None and factory._basetemp is not None:
            shutil.rmtree(factory._basetemp, ignore_errors=True)


@pytest.fixture(scope="session")
def world_template(tmp_path_factory) -> World:
    """One World built per test process; each test's `world` is a copy of it (the same pins)."""
    return World(tmp_path_factory.mktemp("world-template"))


@pytest.fixture
def world(world_template, tmp_path, monkeypatch):
    w = World(tmp_path, template=world_template)
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


@pytest.fixture(scope="session")
def smoke_python():
    """The smoke interpreter ($ZPATCH_SMOKE_PYTHON if set, else the one running the tests) behind a fork
    server with torch imported (testing/smoke_server.py), one per test process; skips when it lacks
    torch/gguf/sentencepiece/safetensors."""
    py = os.environ.get("ZPATCH_SMOKE_PYTHON") or sys.executable
    folder = Path(tempfile.mkdtemp(prefix="zpatch-smoke-"))     # short: a socket path has ~100 bytes
    try:
        server, stand_in = smoke_server.start(py, folder)
    except RuntimeError as e:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(str(e))
    yield str(stand_in)
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
