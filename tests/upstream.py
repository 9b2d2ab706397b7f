"""Is the real upstream reachable (GitHub, or a url.insteadOf mirror)? One cached answer per run."""
from __future__ import annotations

import functools
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCLUDE = "comfy/text_encoders/llama_tokenizer/tokenizer.json"   # not on the Z-Image path; >4 MiB


def lock() -> dict:
    return tomllib.loads((ROOT / "upstream.lock").read_text())


@functools.lru_cache(maxsize=None)
def unreachable_reason() -> str | None:
    for name, u in lock()["upstream"].items():
        try:
            r = subprocess.run(["git", "ls-remote", "--exit-code", u["url"], "HEAD"], capture_output=True,
                               text=True, timeout=30, env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin",
                                                           "HOME": str(Path.home())})
        except subprocess.TimeoutExpired:
            return f"upstream {name} ({u['url']}) did not answer in 30 s"
        if r.returncode != 0:
            return f"upstream {name} ({u['url']}) unreachable; configure a url.insteadOf mirror to run this"
    return None
