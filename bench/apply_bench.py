"""Benchmarks of zpatch against the raw git commands that do the same work, in one run.

    python -m bench.apply_bench            # writes bench/results/apply.md

1. fresh checkout + apply from a warm cache   vs  git clone/checkout both pins + git apply + cp
2. re-apply when already applied              vs  git rev-parse HEAD + git status per repository
3. apply time for synthetic series of 1, 10, 100, 1000 patches  vs  one git apply of them
4. `zpatch --help`                            vs  `git --help` and `python -c pass`

The git processes of rows 1 and 2 are counted once (GIT_TRACE2_EVENT, git's own children included).

Uses the real upstreams when reachable (for example through url.insteadOf mirrors), otherwise
the synthetic repositories of the test fixtures; the report says which.
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
ZPATCH = [sys.executable, "-m", "zimage_patcher.cli"]
# BENCH_ZPATCH: another zpatch executable to measure (an older build, say)
ZPATCH_EXE = os.environ.get("BENCH_ZPATCH") or shutil.which("zpatch", path=str(Path(sys.executable).parent)) or None
RUNS = int(os.environ.get("BENCH_RUNS", "9"))


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"{cmd}: {r.stdout}{r.stderr}")
    return r


def file_system(path: Path) -> str:
    """The type of the file system PATH lies on (ext4, tmpfs, ...), from the mount table; "" elsewhere."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return ""
    path = str(Path(path).resolve())
    best = max((m for m in mounts if len(m) == 2 and (path == m[0] or path.startswith(m[0].rstrip("/") + "/"))),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else ""


def results_file(name: str, work: Path) -> Path:
    """bench/results/NAME.md, or NAME-tmpfs.md when the run's files were in RAM (TMPDIR=/dev/shm): there
    the device's speed drops out of both sides of the ratio, and the two are kept apart."""
    suffix = "-tmpfs" if file_system(work) == "tmpfs" else ""
    return ROOT / "bench" / "results" / f"{name}{suffix}.md"


class Median(float):
    """The median of ROUNDS (seconds), which it keeps for spread()."""
    rounds: list[float]

    def __new__(cls, rounds: list[float]):
        m = super().__new__(cls, statistics.median(rounds))
        m.rounds = rounds
        return m


def spread(raw: float, ours: float) -> str:
    """The middle half of the per-round ratios OURS/RAW: each round runs both back to back, so a disk or a
    neighbour that slows one round slows both sides of its ratio (on a shared disk the medians alone
    moved from 1.3x to 1.85x between two quiet runs)."""
    if not (isinstance(raw, Median) and isinstance(ours, Median)) or len(raw.rounds) < 2:
        return ""
    q = statistics.quantiles(sorted(o / r for r, o in zip(raw.rounds, ours.rounds)), n=4)
    return f"{q[0]:.2f}-{q[2]:.2f}x"


def timed_together(*fns, runs=RUNS, setup=None) -> list[Median]:
    """Median time of each FN, run interleaved so that drift in machine load hits all alike."""
    times = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [Median(t) for t in times]


def zp(*args, env):
    exe = [ZPATCH_EXE] if ZPATCH_EXE else ZPATCH
    return sh([*exe, *map(str, args)], env=env, cwd=ROOT)


def git_processes(fn, env: dict) -> int:
    """How many git processes FN starts (git's own children included), from git's trace2 events."""
    with tempfile.TemporaryDirectory(prefix="zpatch-trace-") as tmp:
        trace = Path(tmp) / "events"
        env["GIT_TRACE2_EVENT"] = str(trace)
        try:
            fn()
        finally:
            del env["GIT_TRACE2_EVENT"]
        return trace.read_text().count('"event":"start"') if trace.exists() else 0


def bench_checkout_apply(overlay: Path, env: dict, work: Path, real: bool) -> list[tuple]:
    import tomllib
    lock = tomllib.loads((overlay / "upstream.lock").read_text())
    ups = lock["upstream"]
    exclude = ["--exclude", "comfy/text_encoders/llama_tokenizer/tokenizer.json"] if real else []
    zp("checkout", work / "warm", *exclude, env=env)           # fills the cache
    shutil.rmtree(work / "warm")
    n = [0]

    def fresh_dir():
        n[0] += 1
        return work / f"d{n[0]}"

    def raw():
        d = fresh_dir()
        for name, u in sorted(ups.items(), key=lambda kv: kv[1]["path"] != "."):
            repo = d / u["path"]
            sh(["git", "clone", "-q", "--no-checkout", u["url"], str(repo)], env=env)
            if real and u["path"] == ".":
                sh(["git", "sparse-checkout", "set", "--no-cone", "/*", f"!/{exclude[1]}"], cwd=repo, env=env)
            sh(["git", "checkout", "-q", "--detach", u["commit"]], cwd=repo, env=env)
            series = (overlay / u["patches"] / "series").read_text().split()
            sh(["git", "apply", *[str(overlay / u["patches"] / s) for s in series if not s.startswith("#")]],
               cwd=repo, env=env)
        src = overlay / lock["overlay"]["source"]
        shutil.copytree(src, d / lock["overlay"]["path"], ignore=shutil.ignore_patterns("__pycache__"))

    def ours():
        d = fresh_dir()
        zp("checkout", d, *exclude, env=env)
        zp("apply", d, env=env)

    def ours_one_step():
        zp("checkout", fresh_dir(), *exclude, "--apply", env=env)

    def settle():
        # Delete the previous run's checkout and flush the page cache's dirty pages, so no run
        # pays for writing back another run's files.
        for old in work.glob("d*"):
            shutil.rmtree(old)
        os.sync()

    t_raw, t_ours, t_one = timed_together(raw, ours, ours_one_step, setup=settle)
    procs = [git_processes(fn, env) for fn in (raw, ours, ours_one_step)]
    d = fresh_dir()
    zp("checkout", d, *exclude, env=env)
    zp("apply", d, env=env)
    repos = [d / u["path"] for u in ups.values()]

    # The least a script must ask git to decide "already applied, leave it": HEAD and
    # the work tree state of each repository.
    def raw_reapply():
        for repo in repos:
            sh(["git", "rev-parse", "HEAD"], cwd=repo, env=env)
            sh(["git", "status", "--porcelain"], cwd=repo, env=env)

    t_raw2, t_ours2 = timed_together(raw_reapply, lambda: zp("apply", d, env=env), runs=max(RUNS, 21))
    procs2 = [git_processes(fn, env) for fn in (raw_reapply, lambda: zp("apply", d, env=env))]
    return [("fresh checkout + apply (warm cache), two commands", t_raw, t_ours, (procs[0], procs[1])),
            ("fresh checkout + apply (warm cache), `checkout --apply`", t_raw, t_one, (procs[0], procs[2])),
            ("re-apply, already applied (no-op)", t_raw2, t_ours2, tuple(procs2))]


def bench_start(env: dict) -> list[tuple]:
    """What starting zpatch costs: `zpatch --help` against git's own help and an empty Python."""
    t_git, t_py, t_help = timed_together(lambda: sh(["git", "--help"], env=env),
                                         lambda: sh([sys.executable, "-c", "pass"], env=env),
                                         lambda: zp("--help", env=env), runs=max(RUNS, 21))
    return [("`zpatch --help` vs `git --help`", t_git, t_help),
            ("`zpatch --help` vs `python -c pass` (the interpreter starting, nothing imported)", t_py, t_help)]


def bench_series(env: dict, work: Path) -> list[tuple]:
    """N patches, each changing one of N files, on a synthetic upstream."""
    from testing.fixtures import make_repo, write_lock
    rows = []
    up = work / "syn-upstream"
    files = {f"mod/f{i:04d}.py": "".join(f"v{i} line {j}\n" for j in range(12)) for i in range(1000)}
    pin = make_repo(up, files)
    for n in (1, 10, 100, 1000):
        ov = work / f"syn-overlay-{n}"
        pdir = ov / "patches" / "up"
        pdir.mkdir(parents=True)
        names = []
        for i in range(n):
            f = f"mod/f{i:04d}.py"
            name = f"{i + 1:04d}-change-f{i:04d}.patch"
            (pdir / name).write_text(
                f"From: bench\nSubject: [PATCH] change {f}\n\nOrigin: vendor\nForwarded: no\n"
                f"Last-Update: 2026-11-26\nUpstream-License: bench\n---\n"
                f"diff --git a/{f} b/{f}\n--- a/{f}\n+++ b/{f}\n@@ -5,3 +5,3 @@\n"
                f" v{i} line 4\n-v{i} line 5\n+v{i} line 5 patched\n v{i} line 6\n")
            names.append(name)
        (pdir / "series").write_text("".join(x + "\n" for x in names))
        write_lock(ov, [{"name": "up", "url": str(up), "commit": pin, "path": ".", "patches": "patches/up"}])
        target = work / f"syn-target-{n}"
        sh(["git", "clone", "-q", str(up), str(target)], env=env)
        paths = [str(pdir / x) for x in names]

        def reset():
            sh(["git", "checkout", "-q", "--", "."], cwd=target, env=env)
            shutil.rmtree(target / ".git" / "zpatch", ignore_errors=True)

        t_raw, t_ours = timed_together(lambda: sh(["git", "apply", *paths], cwd=target, env=env),
                                       lambda: zp("apply", target, "--overlay", ov, env=env), runs=3, setup=reset)
        rows.append((f"series of {n} patch(es)", t_raw, t_ours))
    return rows


def main() -> None:
    from testing.upstream import unreachable_reason
    # pip compiles an installed package to bytecode; do the same for this source tree, or every
    # zpatch start would pay for compiling it (PYTHONDONTWRITEBYTECODE is common in CI).
    sh([sys.executable, "-m", "compileall", "-q", str(ROOT / "zimage_patcher")])
    work = Path(tempfile.mkdtemp(prefix="zpatch-bench-"))
    env = dict(os.environ, ZPATCH_CACHE=str(work / "cache"), LC_ALL="C")
    load = [os.getloadavg()[0]]
    try:
        real = unreachable_reason() is None
        if real:
            overlay = ROOT
            source = "real pinned upstreams (ComfyUI, ComfyUI-GGUF) via the configured git URLs"
        else:
            from testing.fixtures import World
            w = World(work / "world")
            env.update(w.env, ZPATCH_CACHE=str(work / "cache"))
            overlay = w.overlay
            source = f"synthetic fixture repositories ({unreachable_reason()})"
        env["ZPATCH_OVERLAY"] = str(overlay)
        rows = bench_checkout_apply(overlay, env, work, real)
        rows += bench_start(env)
        env.pop("ZPATCH_OVERLAY")
        rows += bench_series(env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg()[0])
    lines = ["# zpatch apply benchmarks", "",
             f"Command: `python -m bench.apply_bench` (median of {RUNS} interleaved runs, {max(RUNS, 21)} for the "
             "no-op and --help rows; series rows: median of 3)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"{sh(['git', '--version']).stdout.strip()}; load average {load[0]:.1f} at the start, {load[1]:.1f} "
             "at the end (compare ratios from one run, not times across runs)", f"Upstreams: {source}",
             f"Work folder (both sides): {work.parent} ({file_system(work.parent) or 'file system unknown'})", "",
             "| case | raw git (s) | zpatch (s) | ratio | per-round ratios, middle half | git processes (raw / zpatch) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, raw, ours, *procs in rows:
        count = f"{procs[0][0]} / {procs[0][1]}" if procs else ""
        lines.append(f"| {name} | {raw:.3f} | {ours:.3f} | {ours / raw:.2f}x | {spread(raw, ours)} | {count} |")
    series = [r for r in rows if r[0].startswith("series")]
    if len(series) == 4:
        # Linear growth: the marginal cost per added patch stays flat from one size to the next.
        sizes = [int(r[0].split()[2]) for r in series]
        marg = [(series[i + 1][2] - series[i][2]) / (sizes[i + 1] - sizes[i]) * 1000 for i in range(3)]
        lines += ["", "zpatch marginal cost per added patch: " + ", ".join(
            f"{sizes[i]}->{sizes[i + 1]}: {m:.2f} ms" for i, m in enumerate(marg))
            + " (flat or falling means linear, not quadratic)"]
    text = "\n".join(lines) + "\n"
    out = Path(os.environ.get("BENCH_OUT") or results_file("apply", work.parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
