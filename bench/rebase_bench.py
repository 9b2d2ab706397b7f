"""Benchmarks of `zpatch rebase` and `zpatch export` against the git commands that do the same work.

    python -m bench.rebase_bench            # writes bench/results/rebase.md

1. a 10-patch series carried over 500 upstream commits (some touching the patched file, so the
   patches move): `zpatch rebase --onto` (it also classifies every patch, formats it back and
   relocks) vs `git rebase --onto` of the same 10 commits in a clone, interleaved in one run
2. `zpatch export` of an unchanged series from an edit-mode checkout (writes nothing)
3. `zpatch rebase --dry-run` of the real series onto the newest commits of the configured upstreams
   (when they are reachable), per upstream
"""
from __future__ import annotations

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
from bench.apply_bench import file_system, results_file, sh  # noqa: E402  (helpers shared by the benches)

ZPATCH = [sys.executable, "-m", "zimage_patcher.cli"]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def ten_patch_world(tmp: Path):
    """A World whose GGUF series is 10 patches on a 400-line loader.py (every 40th line + 20);
    returns it and the loader's lines. The environment is set to the World's git config and cache."""
    from testing.fixtures import World, commit, make_patches
    w = World(tmp)
    os.environ.update(w.env)
    lines = [f"# loader line {i}\n" for i in range(1, 401)]
    w.gguf_pin = commit(w.gguf_up, {"loader.py": "".join(lines)}, "a longer loader")
    edits, text = [], "".join(lines)
    for i in range(10):
        text = text.replace(f"# loader line {40 * i + 20}\n", f"# loader line {40 * i + 20} patched\n")
        edits.append((f"patch {i + 1}", {"loader.py": text}))
    shutil.rmtree(w.overlay / "patches/comfyui-gguf")
    make_patches(w.gguf_up, w.gguf_pin, edits, w.overlay / "patches/comfyui-gguf")
    w.relock()
    return w, lines


def synthetic(tmp: Path):
    """A World whose GGUF upstream then moves 500 commits; its series is 10 patches on one file."""
    from testing.fixtures import git
    w, lines = ten_patch_world(tmp)
    # 500 upstream commits; every 50th inserts a line at the top of loader.py (the patches must move)
    cur = "".join(lines)
    for n in range(500):
        if n % 50 == 0:
            cur = f"# upstream line {n}\n" + cur
            (w.gguf_up / "loader.py").write_text(cur)
        else:
            (w.gguf_up / f"f{n % 20}.py").write_text(f"x = {n}\n")
        git("add", "-A", cwd=w.gguf_up)
        git("commit", "-q", "-m", f"upstream {n}", cwd=w.gguf_up)
    return w, git


def main() -> None:
    user_env = dict(os.environ)          # the synthetic world replaces the git config; the real part needs it
    load = os.getloadavg()[0]
    scratch = Path(tempfile.gettempdir())
    out = []
    with tempfile.TemporaryDirectory(prefix="zpatch-rbench-") as t:
        tmp = Path(t)
        w, git = synthetic(tmp)
        ov = w.overlay
        snap = {p: p.read_bytes() for p in ov.rglob("*") if p.is_file()}
        sh([*ZPATCH, "rebase", "--overlay", str(ov), "comfyui-gguf", "--onto", "main", "--dry-run"])  # warm cache
        # raw git: the 10 commits on the pin, rebased onto main in a clone
        clone = tmp / "clone"
        git("clone", "-q", str(w.gguf_up), str(clone))
        git("checkout", "-q", "--detach", w.gguf_pin, cwd=clone)
        patches = sorted((ov / "patches/comfyui-gguf").glob("*.patch"))
        git("am", "-q", *map(str, patches), cwd=clone)
        series_tip = git("rev-parse", "HEAD", cwd=clone)

        def reset():
            for p in list(ov.rglob("*")):
                if p.is_file() and p not in snap:
                    p.unlink()
            for p, data in snap.items():
                p.write_bytes(data)
            git("checkout", "-q", "--detach", series_tip, cwd=clone)

        def zpatch_rebase(*extra, env=None):
            r = subprocess.run([*ZPATCH, "rebase", "--overlay", str(ov), "comfyui-gguf", "--onto", "main", *extra],
                               capture_output=True, text=True, env=env)
            assert r.returncode == 0, r.stderr

        def zpatch_dry_run(env=None):
            zpatch_rebase("--dry-run", env=env)

        who = {**os.environ, "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}

        def git_rebase(env=None):
            subprocess.run(["git", "rebase", "-q", "--onto", "main", w.gguf_pin], cwd=clone, check=True,
                           capture_output=True, env={**who, **(env or {})})

        pipeline = tmp / "pipeline"
        git("clone", "-q", "--no-checkout", str(w.gguf_up), str(pipeline))

        def git_same_job(env=None):
            """What zpatch does, as raw git commands in a clone: the old series as commits on the pin,
            rebased onto the target, formatted back into patch files, and the range-diff."""
            def run(*args):
                subprocess.run(["git", *args], cwd=pipeline, check=True, capture_output=True,
                               env={**who, **(env or {})})
            run("checkout", "-q", "--detach", w.gguf_pin)
            run("am", "-q", "--keep-cr", *map(str, patches))
            run("tag", "-f", "old-tip")
            run("rebase", "-q", "--onto", "main", w.gguf_pin)
            shutil.rmtree(tmp / "formatted", ignore_errors=True)
            run("format-patch", "-q", "-o", str(tmp / "formatted"), "--zero-commit", "--full-index", "--no-stat",
                "main..HEAD")
            run("range-diff", f"{w.gguf_pin}..old-tip", "main..HEAD")

        def zpatch_start():
            subprocess.run([*ZPATCH, "rebase", "--help"], check=True, capture_output=True)

        series = Path(os.environ["ZPATCH_CACHE"]) / "series"       # the old series kept between runs

        jobs = (("zpatch", zpatch_rebase), ("dry", zpatch_dry_run), ("git", git_rebase), ("pipeline", git_same_job),
                ("cold", zpatch_rebase), ("start", zpatch_start))
        times = {name: [] for name, _ in jobs}
        for _ in range(RUNS):
            for name, fn in jobs:
                reset()
                if name == "cold":
                    shutil.rmtree(series, ignore_errors=True)
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        procs = {}          # git processes of one run of each (git's own children included)
        for name, fn in jobs[:5]:
            reset()
            if name == "cold":
                shutil.rmtree(series, ignore_errors=True)
            with tempfile.TemporaryDirectory(prefix="zpatch-trace-") as tr:
                fn(env={**os.environ, "GIT_TRACE2_EVENT": f"{tr}/events"})
                procs[name] = Path(tr, "events").read_text().count('"event":"start"')
        z, dr, g, pl, co, st = (statistics.median(times[k]) for k in ("zpatch", "dry", "git", "pipeline", "cold", "start"))
        out += ["| case | git (s) | zpatch (s) | ratio | git processes (git / zpatch) |", "|---|---:|---:|---:|---:|",
                f"| 10 patches over 500 upstream commits (`git rebase --onto` vs `zpatch rebase --onto`) "
                f"| {g:.3f} | {z:.3f} | {z / g:.2f}x | {procs['git']} / {procs['zpatch']} |",
                f"| the same job as raw git commands (`am` on the pin, `rebase --onto`, `format-patch`, `range-diff`) "
                f"vs `zpatch rebase --onto` | {pl:.3f} | {z:.3f} | {z / pl:.2f}x | {procs['pipeline']} / {procs['zpatch']} |",
                f"| the same job vs `zpatch rebase --onto`, the first time this series is rebased (its commits on the "
                f"old pin not yet in `$ZPATCH_CACHE/series`) | {pl:.3f} | {co:.3f} | {co / pl:.2f}x | "
                f"{procs['pipeline']} / {procs['cold']} |",
                f"| the same job vs `zpatch rebase --onto --dry-run` (writes nothing) "
                f"| {pl:.3f} | {dr:.3f} | {dr / pl:.2f}x | {procs['pipeline']} / {procs['dry']} |",
                f"| zpatch's floor: `zpatch rebase --help` (Python, click and the CLI's imports) vs `git rebase --onto` "
                f"| {g:.3f} | {st:.3f} | {st / g:.2f}x | |"]
        # export of an unchanged series
        reset()
        co = w.clone_checkout(tmp / "co")
        git("checkout", "-q", "--detach", w.gguf_pin, cwd=co / "custom_nodes/ComfyUI-GGUF")
        sh([*ZPATCH, "edit", "--overlay", str(ov), str(co)])
        ex = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            r = sh([*ZPATCH, "export", "--overlay", str(ov), str(co), "--json"])
            ex.append(time.perf_counter() - t0)
            assert '"changed": false' in r.stdout
        out.append(f"| export of an unchanged 11-patch series (nothing rewritten) | | "
                   f"{statistics.median(ex):.3f} | | |")
    # the real series, when the upstreams are reachable
    from testing.upstream import probe
    os.environ.clear()
    os.environ.update(user_env)
    if probe(os.environ) is None:
        out += ["", "Real series, dry run onto the newest commits of the configured upstreams:", "",
                "| upstream | target | commits ahead | time (s) | patches |", "|---|---|---:|---:|---|"]
        for name, ref in (("comfyui", "origin/master"), ("comfyui-gguf", "origin/main")):
            t0 = time.perf_counter()
            r = subprocess.run([*ZPATCH, "rebase", name, "--onto", ref, "--dry-run", "--json", "--overlay", str(ROOT)],
                               capture_output=True, text=True, cwd=ROOT)
            dt = time.perf_counter() - t0
            import json
            res = json.loads(r.stdout)
            states = ", ".join(f"{p['name'][:4]} {p['state']}" for p in res["patches"])
            out.append(f"| {name} | {res['onto'][:12]} ({ref}) | {res['ahead']} | {dt:.2f} | {states} |")
    else:
        out += ["", "Real series: not measured (upstreams unreachable)."]
    head = ["# zpatch rebase and export benchmarks", "",
            f"Command: `python -m bench.rebase_bench` (median of {RUNS} interleaved runs)", "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.strip()}; load average "
            f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (compare ratios from one run, not times "
            "across runs)", f"Work folder (both sides): {scratch} ({file_system(scratch) or 'file system unknown'})", ""]
    text = "\n".join(head + out) + "\n"
    results_file("rebase", scratch).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
