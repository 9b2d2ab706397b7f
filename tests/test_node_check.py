"""The node notices a broken overlay at ComfyUI start: it compares the patched files with zpatch's
record of the last apply (read-only, no git) and logs one warning naming the files and the command
that fixes it; it never raises. The warning's command, followed, puts the overlay back."""
from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from testing.fixtures import git

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "zimage_patcher" / "overlay" / "ComfyUI-ZImage-Fix"


def load(name: str, path: Path, **kw):
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = load("zimage_fix_overlay_check", NODE / "overlay_check.py")


def test_the_paths_it_knows_are_the_lock_s():
    lock = tomllib.loads((ROOT / "upstream.lock").read_text())
    assert check.UPSTREAM_PATHS == {name: u["path"] for name, u in lock["upstream"].items()}


def test_an_update_that_reverts_the_patches_is_named_and_the_fix_works(world, zpatch, checkout, tmp_path):
    assert check.warning(checkout) is None                      # not applied by zpatch: nothing to say
    zpatch("apply", checkout)
    assert check.warning(checkout) is None
    git("checkout", "--", "loader.py", cwd=checkout / "custom_nodes/ComfyUI-GGUF")    # what an update does
    text = check.warning(checkout)
    assert "custom_nodes/ComfyUI-GGUF/loader.py differs from what `zpatch apply` wrote" in text
    fix = text.rsplit("; ", 1)[1].split("`")[1]
    assert fix == f"zpatch apply {shlex.quote(str(checkout))}"
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(fix, shell=True, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, "ZPATCH_OVERLAY": str(world.overlay)})
    assert done.returncode == 0, done.stderr
    assert check.warning(checkout) is None


def test_a_damaged_record_or_odd_files_never_raise(world, zpatch, checkout):
    zpatch("apply", checkout)
    (checkout / "comfy/sd.py").unlink()
    (checkout / "custom_nodes/ComfyUI-GGUF/loader.py").unlink()
    (checkout / "custom_nodes/ComfyUI-GGUF/loader.py").symlink_to("/etc/hostname")
    assert check.differences(checkout) == ["comfy/sd.py", "custom_nodes/ComfyUI-GGUF/loader.py"]
    (checkout / ".git/zpatch/record.json").write_text("{not json")
    assert check.warning(checkout) is None
    check.check_at_start(checkout / "no" / "such")             # nothing there at all


def test_comfyui_importing_the_node_logs_the_warning(world, zpatch, checkout, tmp_path, caplog):
    zpatch("apply", checkout)
    git("checkout", "--", "comfy/sd.py", cwd=checkout)
    node = tmp_path / "real-node" / "custom_nodes" / "ComfyUI-ZImage-Fix"
    shutil.copytree(NODE, node, ignore=shutil.ignore_patterns("__pycache__"))
    # the node sits in the checkout as ComfyUI loads it: <checkout>/custom_nodes/<node>
    here = checkout / "custom_nodes" / "ComfyUI-ZImage-Fix-real"
    shutil.copytree(node, here)
    with caplog.at_level(logging.WARNING, logger="ComfyUI-ZImage-Fix"):
        pkg = load("zimage_fix_real", here / "__init__.py", submodule_search_locations=[str(here)])
    assert "LatentUnsqueeze" in pkg.NODE_CLASS_MAPPINGS
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "ComfyUI-ZImage-Fix"]
    assert "comfy/sd.py differs from what `zpatch apply` wrote" in msg


def _record(checkout: Path) -> Path:
    return checkout / ".git" / "zpatch" / "record.json"


def _warning_apart(checkout: Path) -> str | None:
    """The check's warning, from a process of its own: a hang (a read that never ends) fails the test
    at the timeout instead of holding the suite."""
    code = ("import sys, importlib.util as u, pathlib\n"
            f"s = u.spec_from_file_location('oc', {str(NODE / 'overlay_check.py')!r}); m = u.module_from_spec(s)\n"
            "s.loader.exec_module(m); print(repr(m.warning(pathlib.Path(sys.argv[1]))))")
    r = subprocess.run([sys.executable, "-c", code, os.fsencode(checkout)], capture_output=True, text=True,
                       timeout=120, errors="surrogateescape")
    assert r.returncode == 0, r.stderr
    return eval(r.stdout)


def test_no_file_it_meets_can_hold_comfyui_s_start(world, zpatch, checkout, tmp_path):
    """A FIFO, a device, a huge file or a link to one, as the record or as a patched file: the check
    answers at once (never reads them), and never reads outside the checkout."""
    zpatch("apply", checkout)
    record = _record(checkout)
    good = record.read_bytes()
    loader = checkout / "custom_nodes/ComfyUI-GGUF/loader.py"
    record.unlink()
    for make in (lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero"),
                 lambda p: p.write_bytes(b"x" * (check.RECORD_LIMIT + 1))):
        make(record)
        assert _warning_apart(checkout) is None                  # not zpatch's record: nothing said, nothing raised
        check.check_at_start(checkout / "custom_nodes" / "ComfyUI-ZImage-Fix")
        record.unlink()
    record.write_bytes(good)
    loader.unlink()
    for make in (lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero"),
                 lambda p: p.write_bytes(b"y" * (check.FILE_LIMIT + 1))):
        make(loader)
        text = _warning_apart(checkout)          # a FIFO without a writer, /dev/zero: no read may start
        assert "custom_nodes/ComfyUI-GGUF/loader.py differs" in text, text
        loader.unlink()
    git("checkout", "--", "loader.py", cwd=checkout / "custom_nodes/ComfyUI-GGUF")


def test_a_record_naming_files_outside_the_checkout_is_not_trusted(world, zpatch, checkout):
    import json
    zpatch("apply", checkout)
    record = _record(checkout)
    data = json.loads(record.read_text())
    for bad in ("../../../etc/passwd", "/etc/shadow", "a/../../x", "", "a//b"):
        hacked = json.loads(json.dumps(data))
        hacked["upstreams"]["comfyui"]["files"][bad] = "0" * 40
        record.write_text(json.dumps(hacked))
        assert check.warning(checkout) is None, bad              # not zpatch's record: nothing said


def test_the_warning_escapes_what_a_terminal_would_obey_and_its_command_pastes_back(world, zpatch, tmp_path):
    """A checkout path with an escape sequence and a byte that is not UTF-8, and a log handler that
    encodes strictly, as ComfyUI's LogInterceptor does: the node still loads, one escaped line."""
    odd = tmp_path / os.fsdecode(b"Comfy \x1b[31mRED\xff")
    checkout = world.clone_checkout(odd)
    zpatch("apply", checkout)
    git("checkout", "--", "comfy/sd.py", cwd=checkout)
    text = check.warning(checkout)
    assert "\x1b" not in text and "\\x1b[31mRED\\xff" in text and text.isprintable()
    fix = text.rsplit("; ", 1)[1].split("`")[1]
    assert fix == "zpatch apply $'" + os.fsencode(str(checkout)).decode("latin-1").replace("\x1b", "\\x1b").replace(
        "\xff", "\\xff") + "'"
    r = subprocess.run(["bash", "-c", f"printf %s {fix.split(' ', 2)[2]}"], capture_output=True)
    assert r.stdout == os.fsencode(str(checkout))               # pasted into bash, the exact path

    import io
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    handler = logging.StreamHandler(strict)
    check.LOG.addHandler(handler)
    try:
        check.check_at_start(checkout / "custom_nodes" / "ComfyUI-ZImage-Fix")   # never raises
        handler.flush()
        logged = strict.buffer.getvalue().decode()
    finally:
        check.LOG.removeHandler(handler)
    assert logged.count("ComfyUI-ZImage-Fix: the Z-Image overlay is no longer in place") == 1


def test_a_linked_folder_on_the_way_is_a_change_and_is_never_followed(world, zpatch, checkout, tmp_path):
    """zpatch writes through real folders only: a symlinked folder on the way to a patched file (to a
    copy elsewhere, to /dev, to /proc/self) is named as a change without a read behind it, and a record
    name no file system takes (a lone surrogate) is one too, never an exception."""
    import json
    zpatch("apply", checkout)
    gguf = checkout / "custom_nodes/ComfyUI-GGUF"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(gguf, elsewhere)
    for target in (elsewhere, Path("/dev"), Path("/proc/self")):
        gguf.symlink_to(target)
        text = _warning_apart(checkout)
        assert "custom_nodes/ComfyUI-GGUF/loader.py" in text, (target, text)
        gguf.unlink()
    shutil.move(elsewhere, gguf)
    assert check.warning(checkout) is None
    record = _record(checkout)
    data = json.loads(record.read_text())
    data["upstreams"]["comfyui"]["files"]["comfy/\ud800x.py"] = "0" * 40
    record.write_text(json.dumps(data))
    text = check.warning(checkout)
    assert text is not None and "comfy/\\ud800x.py differs" in text and text.isprintable()
