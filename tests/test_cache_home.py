"""ZPATCH_CACHE moves everything zpatch writes outside a checkout and an overlay: the upstream
mirrors, the smoke venv and models, the traceback of an internal error. With it set, nothing lands in
$XDG_CACHE_HOME or $HOME, whatever the command; a rebase stopped and aborted leaves nothing behind."""
from __future__ import annotations

import os

from testing.fixtures import SD_PY, commit, replace_line


def files_under(d) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) if d.exists() else []


def test_one_setting_moves_everything(world, zpatch, tmp_path, monkeypatch):
    from zimage_patcher import apply
    from zimage_patcher.smoke import runner
    home, xdg, cache = tmp_path / "home", tmp_path / "xdg", tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert os.environ["ZPATCH_CACHE"] == str(cache) and os.environ["XDG_CACHE_HOME"] == str(xdg)
    co = tmp_path / "ComfyUI"
    zpatch("checkout", co, "--apply")
    (co / "comfy/sd.py").write_text((co / "comfy/sd.py").read_text().replace("PATCHED\n", "PATCHED!\n"))
    zpatch("refresh", co)
    # a rebase that stops on a conflict, then is aborted
    commit(world.comfy_up, {"comfy/sd.py": replace_line(SD_PY, "line 10 of sd.py\n", "line 10 upstream\n")}, "move")
    zpatch("rebase", "comfyui", "--onto", "origin/main", expect=5)
    zpatch("rebase", "--abort")
    assert files_under(world.overlay / ".zpatch") == [".gitignore", "lock"]      # no rebase state, no litter
    # an internal error keeps its traceback in the cache
    monkeypatch.setattr(apply, "apply", lambda *a, **k: 1 / 0)
    r = zpatch("apply", co, expect=9)
    assert str(cache / "last-error.log") in r.output and (cache / "last-error.log").is_file()
    assert runner.managed_venv_dir() == cache / "smoke-venv"
    assert runner.managed_models_dir("tiny") == cache / "smoke-models" / "tiny"
    assert [p.name for p in (cache / "repos").iterdir()]        # the mirrors
    assert files_under(xdg) == [] and files_under(home) == []
