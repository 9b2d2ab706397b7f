"""The old series kept between runs (zimage_patcher/series_cache.py): a second rebase skips committing
it again and answers exactly as the first; a damaged or deleted entry is made again, never an error;
a stopped rebase does not depend on the cache once it has started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from testing.fixtures import LOADER_PY, commit, replace_line
from zimage_patcher import git, series_cache


def _git_calls(stderr: str) -> list[str]:
    return [git._subcommand(line.split()[2:]) for line in stderr.splitlines() if line.startswith("zpatch: git ")]


def rebase(world, *args) -> tuple[dict | None, list[str], int]:
    """zpatch rebase comfyui-gguf ARGS in a process of its own (nothing remembered in memory), traced."""
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "rebase", "--overlay", str(world.overlay),
                        "--json", *args], capture_output=True, text=True, env={**os.environ, "ZPATCH_TRACE": "1"})
    return (json.loads(r.stdout) if r.stdout.strip() else None), _git_calls(r.stderr), r.returncode


def entries() -> list[Path]:
    root = Path(os.environ["ZPATCH_CACHE"]) / "series"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def test_a_second_dry_run_reuses_the_series_and_answers_the_same(world):
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    first, calls1, rc1 = rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")
    assert rc1 == 0 and len(entries()) == 1
    second, calls2, rc2 = rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")
    assert rc2 == 0 and second == first
    n = len(first["patches"])
    assert calls1.count("mailinfo") == n and calls2.count("mailinfo") == 0
    # the old series committed once (its mailinfo), then taken from the cache; plain patches on the
    # scratch store are applied without a git process (hunks.py), both series, both times
    assert "apply" not in calls1 + calls2
    real, _, rc = rebase(world, "comfyui-gguf", "--onto", "main")
    assert rc == 0 and [p["state"] for p in real["patches"]] == [p["state"] for p in first["patches"]]


def test_a_damaged_entry_is_made_again_and_the_answer_does_not_change(world):
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    first, _, _ = rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")
    (entry,) = entries()
    obj = next(p for p in (entry / "objects").rglob("*") if p.is_file())
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-3])                      # a truncated object
    again, calls, rc = rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")
    assert rc == 0 and again == first and "mailinfo" in calls   # made again, not trusted
    (meta := entry / "series.json").write_text("{not json")
    assert rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")[0] == first
    assert json.loads(meta.read_text())["format"] == series_cache.FORMAT     # and kept again, whole


def test_a_stopped_rebase_continues_after_the_cache_is_gone(world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream rewrites line 20")                               # conflicts with 0002
    rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")          # fills the cache
    stopped, _, rc = rebase(world, "comfyui-gguf", "--onto", "main")
    assert rc == 5 and stopped["stopped"], stopped
    shutil.rmtree(Path(os.environ["ZPATCH_CACHE"]) / "series")
    skipped, _, rc = rebase(world, "--skip")
    assert rc == 0, skipped
    assert skipped["range_diff"]                              # the old series' commits are still there


def _meta(entry: Path) -> tuple[Path, dict]:
    path = entry / "series.json"
    return path, json.loads(path.read_text())


def test_an_entry_whose_commits_or_messages_do_not_agree_is_not_used(world):
    """An entry is used only when it holds exactly the commits zpatch would make: a message changed, the
    commits swapped, or a commit missing, and the entry is dropped and made again; the answer and the
    written patches are those of a run without a cache."""
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    first, _, _ = rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")
    for tamper in (lambda m: m["messages"][next(iter(m["messages"]))].__setitem__(1, "EVIL subject\n"),
                   lambda m: m["commits"].reverse(),
                   lambda m: m["commits"].__setitem__(-1, "1" * 40)):
        (entry,) = entries()
        path, meta = _meta(entry)
        tamper(meta)
        path.write_text(json.dumps(meta))
        again, calls, rc = rebase(world, "comfyui-gguf", "--onto", "main", "--dry-run")
        assert rc == 0 and again == first and "mailinfo" in calls      # not trusted: made again
    before = {p.name: p.read_bytes() for p in (world.overlay / "patches/comfyui-gguf").glob("*.patch")}
    (entry,) = entries()
    path, meta = _meta(entry)
    meta["messages"][next(iter(meta["messages"]))][1] = "EVIL subject\n"
    path.write_text(json.dumps(meta))
    real, _, rc = rebase(world, "comfyui-gguf", "--onto", "main")
    assert rc == 0
    after = {p.name: p.read_bytes() for p in (world.overlay / "patches/comfyui-gguf").glob("*.patch")}
    assert not any(b"EVIL" in data for data in after.values())
    assert [s for _, s in ((p["name"], p["state"]) for p in real["patches"])] == \
           [p["state"] for p in first["patches"]] and set(after) == set(before)
