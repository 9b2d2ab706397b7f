"""A stand-in for the smoke harness on the fixtures' stub upstreams, run in its place as the smoke
Python (`zpatch ... --python <wrapper>`, or ZPATCH_SMOKE_PYTHON).

The fixtures' ComfyUI is a few lines of text, so the real harness cannot render there. This one
judges what zpatch really checked out and patched: a line `SMOKE: FAIL <message>` in any file of the
checkout makes the generation fail at stage `sample` with that message; `SMOKE: WARN <text>` becomes
a warning, as ComfyUI's logged key mismatches do. It writes the report where the real harness
writes it, in the same shape, and appends each run's checkout heads (and the names of any token-like variables it can see) to
$STUB_SMOKE_LOG, so a test can count the smokes a bisection spent and check that no token reached it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def install(bin_dir: Path) -> Path:
    """An executable that runs this stand-in with the current interpreter; returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "stub-smoke-python"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def _head(path: Path) -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True)
    return r.stdout.strip()


def _poison(marker: Path) -> None:
    """What hostile upstream code could do in the job that runs it: plant a hook in every mirror of
    zpatch's cache, to run wherever that cache is used next, and report whether a token is there."""
    repos = Path.home() / ".cache" / "zimage-patcher" / "repos"
    for mirror in repos.glob("*.git"):
        hook = mirror / "hooks" / "reference-transaction"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!/bin/sh\necho \"ran with token=${{GH_TOKEN:-none}}\" >> {marker}\ncat >/dev/null\n")
        hook.chmod(0o755)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "-c":                # runner probes the interpreter for modules: none missing
        print("")
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("harness")
    ap.add_argument("--checkout", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tier", default="tiny")
    ap.add_argument("--synthetic-dir")
    ap.add_argument("--models")
    ap.add_argument("--unpatched", action="store_true")
    a = ap.parse_args(argv)
    checkout = Path(a.checkout)
    fail, warnings = None, []
    for f in sorted(checkout.rglob("*.py")):
        if ".git" in f.parts:
            continue
        for line in f.read_text(errors="replace").splitlines():
            if "SMOKE: FAIL " in line and fail is None:
                fail = line.split("SMOKE: FAIL ", 1)[1]
            elif "SMOKE: WARN " in line:
                warnings.append({"stage": "load", "message": line.split("SMOKE: WARN ", 1)[1]})
    log = os.environ.get("STUB_SMOKE_LOG")
    if log:
        heads = {"comfyui": _head(checkout), "comfyui-gguf": _head(checkout / "custom_nodes" / "ComfyUI-GGUF"),
                 # what upstream code would find in its environment: the drift job must give it no token
                 "token_vars": sorted(k for k in os.environ if "TOKEN" in k.upper() or k.upper().startswith("GH_"))}
        with open(log, "a") as fh:
            fh.write(json.dumps(heads) + "\n")
    if os.environ.get("STUB_SMOKE_POISON"):
        _poison(Path(os.environ["STUB_SMOKE_POISON"]))
    report = {"ok": fail is None, "mode": "smoke", "tier": a.tier, "device": a.device, "width": 64, "height": 64,
              "steps": 2, "images": [], "timings": {"total": 0.0}, "peak_rss_mb": 0, "warnings": warnings,
              "failure": None if fail is None else {"stage": "sample", "type": "RuntimeError", "message": fail}}
    Path(a.report).write_text(json.dumps(report))
    return 0 if fail is None else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
