"""Benchmarks of `zpatch drift` and of the daily upstream-drift job.

    python -m bench.drift_bench            # writes bench/results/drift.md

1. partial advance over 500 upstream commits: a 10-patch series whose 6th patch conflicts from
   upstream commit 317 on; `zpatch drift` (it bisects with trial applies) vs the raw-git floor of the
   same search (the same number of `read-tree` + `apply --cached --3way` trials in a scratch index)
2. `zpatch drift` on the real upstreams, warm cache, no smoke (when they are reachable)
3. the whole workflow through the local runner (testing/gha.py) on the fixtures: a cold run (empty
   runner caches) and a warm one (caches restored), with the stand-in smoke
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ZPATCH = [sys.executable, "-m", "zimage_patcher.cli"]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def synthetic(tmp: Path):
    """A World whose GGUF series is 10 patches on a 400-line loader.py, and 500 upstream commits;
    commit 317 rewrites the line patch 6 changes."""
    from bench.rebase_bench import ten_patch_world
    from testing.fixtures import git
    w, lines = ten_patch_world(tmp)
    cur = "".join(lines)
    # one fast-import stream instead of 1,500 git processes
    stream = []
    for n in range(500):
        if n == 317:
            cur = cur.replace("# loader line 220\n", "# loader line 220 upstream\n")
            stream.append(("loader.py", cur))
        elif n % 50 == 0:
            cur = f"# upstream line {n}\n" + cur
            stream.append(("loader.py", cur))
        else:
            stream.append((f"f{n % 20}.py", f"x = {n}\n"))
    data = []
    for n, (path, content) in enumerate(stream):
        body = content.encode()
        msg = f"upstream {n}".encode()
        data.append(b"commit refs/heads/main\n")
        data.append(f"committer U <u@x> {1700000000 + n} +0000\n".encode())
        data.append(b"data %d\n%s\n" % (len(msg), msg))
        if n == 0:
            data.append(f"from {w.gguf_pin}\n".encode())
        data.append(f"M 100644 inline {path}\n".encode() + b"data %d\n%s\n" % (len(body), body))
    subprocess.run(["git", "fast-import", "--quiet", "--force"], cwd=w.gguf_up, input=b"".join(data), check=True)
    git("reset", "-q", "--hard", "main", cwd=w.gguf_up)
    return w, git


def partial_advance(tmp: Path) -> list[str]:
    w, git = synthetic(tmp)
    ov = w.overlay
    cmd = [*ZPATCH, "drift", "--overlay", str(ov), "--upstream", "comfyui-gguf", "--json"]
    subprocess.run(cmd, capture_output=True)              # warm the cache
    times, report = [], None
    for _ in range(RUNS):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert r.returncode == 5, r.stderr
        report = json.loads(r.stdout)
    adv = report["upstreams"][0]["advance"]
    line = git("rev-list", "--first-parent", f"{w.gguf_pin}..main", cwd=w.gguf_up).split()
    line.reverse()
    assert adv["exact"] and adv["first_bad"] == line[317] and adv["target"] == line[316], adv
    # the raw-git floor of the same search: as many trials, each a read-tree and a 3-way apply of the series
    from testing.fixtures import GGUF_URL
    from zimage_patcher.cache import mirror_path
    mirror = mirror_path(GGUF_URL)
    patches = [str(p) for p in sorted((ov / "patches/comfyui-gguf").glob("*.patch"))]
    idx = tmp / "raw-index"
    env = {**os.environ, "GIT_INDEX_FILE": str(idx)}
    raw = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        for commit in line[::max(1, len(line) // adv["trials"])][:adv["trials"]]:
            subprocess.run(["git", "read-tree", commit], cwd=mirror, env=env, check=True)
            subprocess.run(["git", "apply", "--cached", "--3way", *patches], cwd=mirror, env=env, capture_output=True)
        raw.append(time.perf_counter() - t0)
    z, g = statistics.median(times), statistics.median(raw)
    return ["## Partial advance over 500 upstream commits", "",
            "A 10-patch series; upstream commit 317 of 500 rewrites the line patch 6 changes.", "",
            "| measure | value |", "|---|---:|",
            f"| `zpatch drift --upstream comfyui-gguf` wall, median of {RUNS} (goal: under 5 s) | {z:.2f} s |",
            f"| trial applies (goal: at most 10) | {adv['trials']} |",
            "| found | target = upstream commit 316 (the last that carries), first bad = 317 |",
            f"| raw git, the same {adv['trials']} trials (`read-tree` + `apply --cached --3way`) | {g:.2f} s |",
            f"| ratio zpatch / raw git (zpatch also fetches, runs the dry-run rebase with blame and writes the "
            f"report) | {z / g:.1f}x |", ""]


def real_warm() -> list[str]:
    from testing.upstream import probe
    if probe(os.environ) is not None:
        return ["## Real upstreams", "", "Not measured: the upstreams are unreachable.", ""]
    cmd = [*ZPATCH, "drift", "--json", "--overlay", str(ROOT)]
    subprocess.run(cmd, capture_output=True)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    rep = json.loads(r.stdout)
    summary = "; ".join(f"{u['name']} {u['class']} ({u['ahead']} ahead"
                        + (f", {u['advance']['trials']} trial applies" if u.get("advance") else "") + ")"
                        for u in rep["upstreams"])
    git_fetch = []
    for _ in range(RUNS):       # the floor: the fetches alone (what a warm drift cannot avoid)
        t0 = time.perf_counter()
        for u in rep["upstreams"]:
            subprocess.run(["git", "ls-remote", u["url"], f"refs/heads/{u['branch']}"], capture_output=True)
        git_fetch.append(time.perf_counter() - t0)
    return ["## Real upstreams, warm cache, no smoke", "",
            f"`zpatch drift` (both upstreams): {', '.join(f'{t:.2f}' for t in times)} s (goal: under 1 s); "
            f"`git ls-remote` of both branch heads alone: {statistics.median(git_fetch):.2f} s. {summary}.", ""]


def daily_job(tmp: Path) -> list[str]:
    """The workflow through the runner, on the fixtures with one clean and one conflicting upstream."""
    from testing.drift_job import Job
    from testing.fixtures import LOADER_PY, World, commit, replace_line
    w = World(tmp / "w")
    os.environ.update(w.env)
    commit(w.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")}, "x")
    commit(w.comfy_up, {"nodes.py": "NODES = 2\n"}, "y")
    job = Job(w, tmp / "job")
    rows = []
    for label in ("cold (no runner cache)", "warm (caches restored)"):
        t0 = time.perf_counter()
        job.run()
        rows.append(f"| {label} | {time.perf_counter() - t0:.1f} s |")
    return ["## The daily job through the local runner", "",
            "Both check legs (checkout, caches, drift with the stand-in smoke, artifact) and publish (a PR, an "
            "issue), on the fixtures; the venv install is linked, not run, so this is the job's own cost:", "",
            "| run | wall |", "|---|---:|", *rows, ""]


def real_job(tmp: Path) -> list[str]:
    """The workflow through the runner on the real upstreams with the real CPU smoke: cold (empty
    runner caches: every mirror cloned) and warm (pip and mirror caches restored)."""
    from testing.upstream import probe
    if probe(os.environ) is not None:
        return ["Real upstreams: not measured (unreachable).", ""]
    from types import SimpleNamespace
    from testing.drift_job import Job
    src = tmp / "src"
    for rel in ("upstream.lock", "patches", "zimage_patcher/overlay"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / rel).is_dir() else shutil.copy2)(ROOT / rel, src / rel)
    gitconfig = os.environ.get("GIT_CONFIG_GLOBAL") or str(Path.home() / ".gitconfig")
    job = Job(SimpleNamespace(overlay=src, env={"GIT_CONFIG_GLOBAL": gitconfig}), tmp / "job")
    job.env["ZPATCH_SMOKE_PYTHON"] = sys.executable
    rows = []
    for label in ("cold (no runner cache: both mirrors cloned in each leg)", "warm (mirror caches restored)"):
        t0 = time.perf_counter()
        job.run()
        rows.append(f"| {label} | {time.perf_counter() - t0:.1f} s |")
    return ["The same on the real upstreams with the real CPU smoke (ComfyUI smoked at the pins, its head "
            "conflicting; ComfyUI-GGUF smoked at its head), jobs one after another as the runner runs them:", "",
            "| run | wall |", "|---|---:|", *rows, "",
            "Here the upstreams are local snapshots reached through `url.insteadOf`, so a cold clone costs "
            "little; on a GitHub runner the network clone of ComfyUI and the pip install of CPU torch (which "
            "the runner links here instead of running) are what the caches save.", ""]


def main() -> None:
    user_env = dict(os.environ)
    out = ["# zpatch drift benchmarks", "", "Command: `python -m bench.drift_bench`", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
           f"{subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.strip()}", ""]
    with tempfile.TemporaryDirectory(prefix="zpatch-dbench-") as t:
        os.environ["ZPATCH_CACHE"] = str(Path(t) / "cache")
        out += partial_advance(Path(t) / "pa")
    os.environ.clear()
    os.environ.update(user_env)
    out += real_warm()
    with tempfile.TemporaryDirectory(prefix="zpatch-dbench-") as t:
        out += daily_job(Path(t))
    os.environ.clear()
    os.environ.update(user_env)
    with tempfile.TemporaryDirectory(prefix="zpatch-dbench-") as t:
        out += real_job(Path(t))
    os.environ.clear()
    os.environ.update(user_env)
    text = "\n".join(out)
    (ROOT / "bench/results/drift.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
