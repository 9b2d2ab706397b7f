"""The node's overlay check at ComfyUI start (zimage_patcher/overlay/ComfyUI-ZImage-Fix/overlay_check.py)
on a real checkout of the pinned upstreams with the overlay applied, against `git status` of the same
files, the cheapest git command that would tell the same: the goal is under 50 ms.

    python -m bench.node_check_bench      # writes bench/results/node-check.md
"""
from __future__ import annotations

import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 21


def main() -> None:
    spec = importlib.util.spec_from_file_location(
        "overlay_check", ROOT / "zimage_patcher/overlay/ComfyUI-ZImage-Fix/overlay_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    with tempfile.TemporaryDirectory(prefix="zpatch-bench-") as tmp:
        co = Path(tmp) / "ComfyUI"
        subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "checkout", str(co), "--apply", "-q",
                        "--exclude", "comfy/text_encoders/llama_tokenizer/tokenizer.json"], check=True, cwd=tmp)
        files = ["comfy/sd.py"]
        ours, raw = [], []
        for _ in range(RUNS):               # interleaved, so a busy neighbour hits both alike
            t = time.perf_counter()
            assert check.warning(co) is None
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(["git", "-C", str(co), "status", "--porcelain", "--", *files], check=True,
                           capture_output=True)
            subprocess.run(["git", "-C", str(co / "custom_nodes/ComfyUI-GGUF"), "status", "--porcelain",
                            "--", "loader.py"], check=True, capture_output=True)
            raw.append(time.perf_counter() - t)
    o, r = statistics.median(ours), statistics.median(raw)
    text = (f"# The node's overlay check at ComfyUI start\n\nCommand: `python -m bench.node_check_bench` "
            f"(median of {RUNS} interleaved runs)\n\nMachine: {platform.machine()}, Python {platform.python_version()}\n\n"
            "| case | git status of the patched files (s) | the node's check (s) | ratio |\n|---|---:|---:|---:|\n"
            f"| real pinned checkout, overlay applied | {r:.4f} | {o:.4f} | {o / r:.2f}x |\n\n"
            f"Goal: under 0.050 s. Measured: {o * 1000:.1f} ms.\n")
    (ROOT / "bench/results/node-check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
