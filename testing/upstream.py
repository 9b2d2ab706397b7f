"""Is the real upstream reachable (GitHub, or a url.insteadOf mirror)? One cached answer per run."""
from __future__ import annotations

import functools
import os
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCLUDE = "comfy/text_encoders/llama_tokenizer/tokenizer.json"   # not on the Z-Image path; >4 MiB


def lock() -> dict:
    return tomllib.loads((ROOT / "upstream.lock").read_text())


@functools.lru_cache(maxsize=None)
def unreachable_reason() -> str | None:
    return probe(os.environ)


def probe(environ, urls: dict[str, str] | None = None) -> str | None:
    """None when every upstream URL answers through git as the user configured it: the whole
    environment passes through (GIT_CONFIG_GLOBAL, HOME, an insteadOf rule), as it does for zpatch."""
    env = {k: v for k, v in environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    for name, url in (urls or {n: u["url"] for n, u in lock()["upstream"].items()}).items():
        try:
            r = subprocess.run(["git", "ls-remote", "--exit-code", url, "HEAD"], capture_output=True,
                               text=True, timeout=30, env=env)
        except subprocess.TimeoutExpired:
            return f"upstream {name} ({url}) did not answer in 30 s"
        if r.returncode != 0:
            return f"upstream {name} ({url}) unreachable; configure a url.insteadOf mirror to run this"
    return None
