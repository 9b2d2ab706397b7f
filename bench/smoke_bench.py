"""Benchmark of the CPU tiny-tier smoke generation, end to end, including ComfyUI's import.

    python -m bench.smoke_bench [--checkout PATCHED_COMFYUI] [--runs 3]   # writes bench/results/smoke.md

Each run is what `zpatch smoke CHECKOUT` does: runner.run_smoke starts harness.py in a fresh
interpreter (ComfyUI import, custom nodes, GGUF loaders, encode, 2 sampling steps, two VAE
decodes, PNGs). Wall time is measured around run_smoke; peak RSS is the harness process's
(resource.getrusage in the report). The synthetic models are written once before the timed
runs (that time is reported apart). Goal: < 15 s wall and < 2 GB peak RSS per run.

Without --checkout, a patched checkout is made with zpatch's own checkout and apply at the pins
of upstream.lock, which needs the upstreams reachable (a url.insteadOf mirror works). The smoke Python is $ZPATCH_SMOKE_PYTHON, else this interpreter.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from zimage_patcher.smoke import runner  # noqa: E402

GOAL_WALL_S, GOAL_RSS_MB = 15.0, 2048.0
STAGES = ("environment", "import", "load", "encode", "sample", "decode", "save")


def build_patched(dest: Path) -> Path:
    from testing.smoke_support import apply_overlay, build_checkout, unreachable_reason
    reason = unreachable_reason()
    if reason:
        raise SystemExit(f"cannot build a patched checkout: {reason} (pass --checkout)")
    return apply_overlay(build_checkout(dest))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkout", type=Path, help="an existing patched ComfyUI checkout")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python", default=os.environ.get(runner.ENV_PYTHON) or sys.executable)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "smoke.md")
    ns = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="zpatch-smoke-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        checkout = ns.checkout.resolve() if ns.checkout else build_patched(tmp / "ComfyUI")
        t_checkout = time.perf_counter() - t0
        models = tmp / "models"
        t0 = time.perf_counter()
        subprocess.run([ns.python, str(ROOT / "zimage_patcher" / "smoke" / "writers.py"), "--out", str(models),
                        "--tier", "tiny"], check=True, capture_output=True)
        t_models = time.perf_counter() - t0
        runs = []
        for i in range(ns.runs):
            t0 = time.perf_counter()
            rep = runner.run_smoke(checkout, tmp / f"run{i}", python=ns.python, device="cpu", tier="tiny",
                                   synthetic_dir=models, timeout=600)
            wall = time.perf_counter() - t0
            runs.append({"wall": wall, "rss": rep["peak_rss_mb"], "harness_total": rep["timings"]["total"],
                         **{s: rep["timings"].get(s) or 0.0 for s in STAGES}})
            print(f"run {i + 1}: {wall:.2f} s wall, peak RSS {rep['peak_rss_mb']:.0f} MB", file=sys.stderr)
        versions = rep["versions"]
        commits = {k: (v.get("commit") or "?")[:12] for k, v in rep["commits"].items()}
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    worst_wall, worst_rss = max(r["wall"] for r in runs), max(r["rss"] for r in runs)
    ok = worst_wall < GOAL_WALL_S and worst_rss < GOAL_RSS_MB
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Smoke generation benchmark (CPU, tiny tier)",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), Linux {platform.release()}; no GPU used. "
        f"Python {versions.get('python')}, torch {versions.get('torch')}, gguf {versions.get('gguf')}; "
        f"ComfyUI {commits.get('comfyui')}, ComfyUI-GGUF {commits.get('comfyui-gguf')} (pins + overlay).",
        "",
        f"Each run: `runner.run_smoke(checkout, out, device='cpu', tier='tiny')` in a fresh harness process: "
        f"ComfyUI import + custom nodes, GGUF loaders, CLIPTextEncode, EmptySD3LatentImage 64x64, KSampler "
        f"2 steps, VAEDecode twice (with and without LatentUnsqueeze), SaveImage. "
        f"Synthetic models written once before the runs: {t_models:.2f} s"
        + (f"; patched checkout made by zpatch checkout + apply in {t_checkout:.1f} s." if not ns.checkout else "."),
        "",
        "| run | wall (s) | harness total (s) | " + " | ".join(STAGES) + " | peak RSS (MB) |",
        "|---|---|---|" + "---|" * len(STAGES) + "---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['wall']:.2f} | {r['harness_total']:.2f} | "
                     + " | ".join(f"{r[s]:.2f}" for s in STAGES) + f" | {r['rss']:.0f} |")
    lines.append(f"| median | {med['wall']:.2f} | {med['harness_total']:.2f} | "
                 + " | ".join(f"{med[s]:.2f}" for s in STAGES) + f" | {med['rss']:.0f} |")
    lines += [
        "",
        f"Goal: < {GOAL_WALL_S:.0f} s wall and < {GOAL_RSS_MB / 1024:.0f} GB peak RSS per run. "
        f"Worst run: {worst_wall:.2f} s, {worst_rss:.0f} MB: **{'met' if ok else 'NOT met'}**.",
        "",
        "Wall includes starting the interpreter and importing torch (`environment`) and ComfyUI "
        "(`import`), which dominate; the model work itself (load + encode + sample + decode) is "
        "the rest. Peak RSS is the harness process's maximum resident set (getrusage).",
        "",
    ]
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
