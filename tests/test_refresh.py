"""`zpatch refresh`: a hand edit in an applied checkout goes home to the patch that owns its lines (or
where --into / --new say), and a fresh checkout + apply then gives the same bytes. Every refusal's
advice is followed literally; a kill at every write point is finished by the next refresh."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import pytest

from testing import run
from testing.fixtures import LOADER_PY, error_line, git, overlay_snapshot, replace_line

GGUF = "custom_nodes/ComfyUI-GGUF"
PATCHES = "patches/comfyui-gguf"


def edit(path, old: str, new: str) -> None:
    text = path.read_bytes().decode()
    assert old in text
    path.write_bytes(text.replace(old, new, 1).encode())


def files(co) -> dict[str, bytes]:
    """Every work-tree file of a checkout (outside .git), by path."""
    return {p.relative_to(co).as_posix(): p.read_bytes() for p in sorted(co.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(co).parts}


def reproduces(world, zpatch, co, tmp_path, name="fresh") -> None:
    """A fresh checkout of the pins + apply of the overlay as it is now gives CO's bytes, file for file;
    the overlay passes `check`; CO's status is clean."""
    fresh = world.clone_checkout(tmp_path / name)
    zpatch("apply", fresh)
    assert files(fresh) == files(co)
    zpatch("check")
    assert zpatch.json("status", co)["clean"]


def hint_commands(r) -> list[str]:
    """The commands of an error's hint, as the user would copy them (alternatives split on '   or   ')."""
    hint = next(line for line in r.output.splitlines() if line.startswith("hint: "))[len("hint: "):]
    return hint.split("   or   ")


def follow(world, command: str, cwd) -> subprocess.CompletedProcess:
    return run.follow(command, cwd, world.env)


def test_statuss_other_way_home_run_literally_keeps_every_edit_and_applies_again(world, zpatch, checkout, tmp_path):
    """Besides refresh, status offers to keep a copy of each file edited after apply (patched files of
    both upstreams, the node's files) in ~ and let apply write zpatch's bytes again. Followed literally,
    twice over (the same files edited again), no copy is written over and the checkout ends as applied."""
    zpatch("apply", checkout)
    applied = files(checkout)
    home = tmp_path / "home"
    home.mkdir()
    edits = {"comfy/sd.py": b"# tweak one\n", f"{GGUF}/loader.py": b"# tweak two\r\n",
             "custom_nodes/ComfyUI-ZImage-Fix/nodes.py": b"# tweak three\n",
             "custom_nodes/ComfyUI-ZImage-Fix/scratch.txt": b"mine\n"}        # a file of the user's in it
    saved = []
    for times in (1, 2):
        for rel, extra in edits.items():
            p = checkout / rel
            p.write_bytes((p.read_bytes() if p.exists() else b"") + extra * times)
            saved.append(p.read_bytes())
        text = zpatch("status", checkout, expect=1).output
        assert "node custom_nodes/ComfyUI-ZImage-Fix: modified (nodes.py, scratch.txt added)" in text
        line = next(x for x in text.splitlines() if "let apply write it again" in x)
        r = follow(world, line.split("`")[-2], home)
        assert r.returncode == 0, r.stdout + r.stderr
        assert files(checkout) == applied
        assert zpatch.json("status", checkout)["clean"]
    assert sorted(p.read_bytes() for p in home.iterdir()) == sorted(saved)


def test_an_edit_goes_into_the_patch_that_owns_its_lines(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    g = checkout / GGUF
    edit(g / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, fixed by hand\n")
    st = zpatch.json("status", checkout, expect=1)
    # status names the patch whose line it is and the file (not the two others that change loader.py)
    assert [(p["name"], p["state"], p["edited"]) for p in st["upstreams"][1]["patches"]] == [
        ("0001-loader-gemma3.patch", "applied", []), ("0002-loader-tokenizer.patch", "modified", ["loader.py"]),
        ("0003-loader-external-tokenizer.patch", "applied", [])]
    text = zpatch("status", checkout, expect=1).output
    assert "zpatch refresh" in text and "loader.py" in text
    before = overlay_snapshot(world)
    res = zpatch.json("refresh", checkout)
    u = res["upstreams"][1]
    assert u["hunks"] == [{"path": "loader.py", "lines": [20, 20], "patch": "0002-loader-tokenizer.patch"}]
    assert [p["state"] for p in u["patches"]] == ["unchanged", "changed", "changed"]
    after = overlay_snapshot(world)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == [f"{PATCHES}/0002-loader-tokenizer.patch", f"{PATCHES}/0003-loader-external-tokenizer.patch",
                       "upstream.lock"]
    # patch 3 only names its new preimage blob (git apply --3way looks it up); its change is the same
    three = f"{PATCHES}/0003-loader-external-tokenizer.patch"
    differ = [(a, b) for a, b in zip(before[three].splitlines(), after[three].splitlines()) if a != b]
    assert differ and all(a.startswith((b"index ", b"Last-Update:")) for a, _b in differ)
    assert b"+# loader line 20 tokenizer, fixed by hand" in (world.overlay / PATCHES / "0002-loader-tokenizer.patch").read_bytes()
    assert res["upstreams"][0] == {"name": "comfyui", "rerecorded": False, "hunks": [],
                                   "patches": [{"name": "0001-sd-accept-4-D-latents.patch", "state": "unchanged"}]}
    reproduces(world, zpatch, checkout, tmp_path)
    assert "Nothing to refresh" in zpatch("refresh", checkout).output


@pytest.mark.parametrize("old, new, owners", [
    ("loader line 5 gemma3\n", "loader line 5 gemma3\n# two more\n", ["0001-loader-gemma3.patch"]),   # insertion
    ("loader line 35 external\n", "", ["0003-loader-external-tokenizer.patch"]),                        # deletion
    ("loader line 10\n", "loader line 10 by hand\n", None),                          # upstream's: every patch of it
], ids=["insertion", "deletion", "upstream-lines"])
def test_status_names_the_patch_refresh_would_fold_the_edit_into(world, zpatch, checkout, old, new, owners):
    """Status marked every patch of an edited file as modified; it now names the patch whose lines the
    edit changes, the one refresh folds it into (refresh --dry-run, asked the same)."""
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", old, new)
    st = zpatch.json("status", checkout, expect=1)
    modified = [p["name"] for p in st["upstreams"][1]["patches"] if p["state"] == "modified"]
    if owners is None:      # refresh asks where it goes; status keeps every patch of the file and says so
        assert len(modified) == 3 and st["upstreams"][1]["unowned_edits"] == ["loader.py"]
        assert "upstream's own" in error_line(zpatch("refresh", "--dry-run", checkout, expect=5))
        line = next(a for a in st["advice"] if a.startswith("edited after apply"))
        into = next(c for c in re.findall(r"`([^`]+)`", line) if "--into" in c)
        done = follow(world, into, checkout.parent)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "line 10 by hand" in (world.overlay / PATCHES / "0003-loader-external-tokenizer.patch").read_text()
        return
    assert modified == owners
    folded = zpatch.json("refresh", "--dry-run", checkout)["upstreams"][1]["hunks"]
    assert sorted({h["patch"] for h in folded}) == owners


def test_a_deleted_patched_file_gets_advice_that_works_as_printed(world, zpatch, checkout, tmp_path):
    """A trial: with loader.py deleted, status's advice began `cp -- .../loader.py ~/...` (no such file)
    and offered a refresh that refuses. It says no patch owns the edit, and its keep-a-copy way, run
    literally, puts the file back applied."""
    zpatch("apply", checkout)
    applied = files(checkout)
    (checkout / GGUF / "loader.py").unlink()
    st = zpatch.json("status", checkout, expect=1)
    assert st["upstreams"][1]["unowned_edits"] == ["loader.py"]
    line = next(a for a in st["advice"] if a.startswith("edited after apply"))
    assert "no single patch owns the edit of loader.py" in line
    done = follow(world, re.findall(r"`([^`]+)`", line)[-1], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert files(checkout) == applied and zpatch.json("status", checkout)["clean"]
    # refresh folded the deletion into 0001 (a patch deleting loader.py) without being told: it asks now
    before = overlay_snapshot(world)
    for gone in ("loader.py", "tokenizer_util.py"):             # upstream's file, and one a patch created
        (checkout / GGUF / gone).unlink()
        r = zpatch("refresh", checkout, expect=5)
        assert "deleted; refresh folds a deletion of a whole file only when told where" in error_line(r)
        assert overlay_snapshot(world) == before
        done = follow(world, hint_commands(r)[0].split("`")[1], tmp_path)          # put it back patched
        assert done.returncode == 0, done.stdout + done.stderr
        assert files(checkout) == applied and zpatch.json("status", checkout)["clean"]


def test_unowned_edits_in_both_upstreams_get_the_one_way_that_takes_both(world, zpatch, checkout, tmp_path):
    """A trial: with edits of upstream's lines in both upstreams, status offered `--into` a patch of one,
    and refresh then refused the other's. Only --new takes both; status says that way, which works."""
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 10\n", "loader line 10 by hand\n")
    edit(checkout / "comfy/sd.py", "line 30 of sd.py\n", "line 30 of sd.py by hand\n")
    st = zpatch.json("status", checkout, expect=1)
    line = next(a for a in st["advice"] if a.startswith("edited after apply"))
    assert "--into" not in line
    new = next(c for c in re.findall(r"`([^`]+)`", line) if "--new" in c)
    done = follow(world, new, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    reproduces(world, zpatch, checkout, tmp_path)


def test_an_edit_status_cannot_trace_gets_the_dry_run_not_a_promise(world, zpatch, checkout, tmp_path):
    """A trial: with a patch that only git applies (a file name with a space), status could not trace an
    edit yet promised that `zpatch refresh` folds it; refresh then refused (upstream's lines). It says
    so, and points at the dry run, which tells."""
    l1 = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n")
    world.build_overlay(gguf_edits=[("loader: odd", {"loader.py": l1, "sp ace.py": "x\n"})])
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 30\n", "loader line 30 by hand\n")
    st = zpatch.json("status", checkout, expect=1)
    assert st["upstreams"][1]["untraced_edits"] == ["loader.py"] and st["upstreams"][1]["unowned_edits"] == []
    line = next(a for a in st["advice"] if a.startswith("edited after apply"))
    dry = re.findall(r"`([^`]+)`", line)[0]
    assert "--dry-run" in dry and "folds the edits into their patches" not in line
    done = follow(world, dry, tmp_path)
    assert done.returncode == 5 and "upstream's own" in done.stderr, done.stdout + done.stderr   # it tells


def test_status_traces_an_edit_through_the_patches_applied_not_the_overlays_newer_ones(world, zpatch, checkout,
                                                                                       tmp_path):
    """A trial: after the overlay rewrote 0002 (a refresh from another checkout), an edit of 0002's line
    here marked 0001, which nobody touched, `modified`. The edit is traced through the copies zpatch
    applied: 0001 stays applied, 0002 is outdated with the edit named."""
    zpatch("apply", checkout)
    other = world.clone_checkout(tmp_path / "other")
    zpatch("apply", other)
    edit(other / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer OTHER\n")
    zpatch("refresh", other)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer MINE\n")
    st = zpatch.json("status", checkout, expect=1)
    states = {p["name"]: (p["state"], p["edited"]) for p in st["upstreams"][1]["patches"]}
    assert states["0001-loader-gemma3.patch"] == ("applied", [])
    assert states["0002-loader-tokenizer.patch"] == ("outdated", ["loader.py"])


def test_inserted_lines_move_the_later_patches_and_apply_fresh(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    g = checkout / GGUF
    edit(g / "loader.py", "loader line 5 gemma3\n", "loader line 5 gemma3\n# two more\n# lines\n")
    res = zpatch.json("refresh", checkout)
    states = {p["name"]: p["state"] for p in res["upstreams"][1]["patches"]}
    assert states["0001-loader-gemma3.patch"] == "changed"
    assert states["0002-loader-tokenizer.patch"] == "changed"       # its line numbers moved by two
    reproduces(world, zpatch, checkout, tmp_path)
    # each patch holds only its own change: patch 1 alone gives the insertion, not patch 2's line
    one = world.clone_checkout(tmp_path / "one")
    subprocess.run(["git", "apply", str(world.overlay / PATCHES / "0001-loader-gemma3.patch")], cwd=one / GGUF,
                   check=True)
    text = (one / GGUF / "loader.py").read_text()
    assert "# two more\n# lines\n" in text and "tokenizer" not in text


@pytest.mark.parametrize("way", [0, 1], ids=["into-the-last-patch", "a-new-patch"])
def test_an_edit_of_upstream_lines_says_where_it_can_go_and_both_ways_work(world, zpatch, checkout, tmp_path, way):
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 10\n", "loader line 10 by hand\n")
    before = overlay_snapshot(world)
    r = zpatch("refresh", checkout, expect=5)
    assert "lines 10-10 are upstream's own" in error_line(r)
    assert overlay_snapshot(world) == before
    ways = hint_commands(r)
    assert len(ways) == 2 and "--into 0003-loader-external-tokenizer.patch" in ways[0] and "--new" in ways[1]
    done = follow(world, ways[way], tmp_path)
    assert done.returncode == 0, done.stderr
    if way == 1:
        series = (world.overlay / PATCHES / "series").read_text().split()
        assert series[-1] == "0004-Subject.patch" and len(series) == 4
        new = (world.overlay / PATCHES / "0004-Subject.patch").read_text()
        assert "Origin:" in new and "Upstream-License:" in new and "Forwarded: no" in new
    reproduces(world, zpatch, checkout, tmp_path)


def test_a_later_patch_in_the_way_is_named_and_its_hint_works(world, zpatch, checkout, tmp_path):
    l1 = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n")
    l2 = replace_line(l1, "loader line 6\n", "loader line 6 next to it\n")
    world.build_overlay(gguf_edits=[("loader: gemma3", {"loader.py": l1}), ("loader: close by", {"loader.py": l2})])
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 5 gemma3\n", "loader line 5 gemma3 fixed\n")
    before = overlay_snapshot(world)
    r = zpatch("refresh", checkout, expect=5)
    assert "belongs to 0001-loader-gemma3.patch, but 0002-loader-close-by.patch after it" in error_line(r)
    assert overlay_snapshot(world) == before
    done = follow(world, hint_commands(r)[0].split(": ", 1)[1], tmp_path)
    assert done.returncode == 0, done.stderr
    reproduces(world, zpatch, checkout, tmp_path)


def test_edits_in_both_upstreams_and_the_node_go_home_at_once(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    edit(checkout / "comfy/sd.py", "line 10 PATCHED\n", "line 10 PATCHED twice\n")
    edit(checkout / GGUF / "tokenizer_util.py", "UTIL = 1\n", "UTIL = 2\n")       # a file a patch creates
    node = checkout / "custom_nodes/ComfyUI-ZImage-Fix/nodes.py"
    node.write_text("X = 2\n")
    res = zpatch.json("refresh", checkout)
    assert res["node_files"] == ["nodes.py"]
    assert (world.overlay / "node/ComfyUI-ZImage-Fix/nodes.py").read_text() == "X = 2\n"
    assert [h["patch"] for u in res["upstreams"] for h in u["hunks"]] == [
        "0001-sd-accept-4-D-latents.patch", "0003-loader-external-tokenizer.patch"]
    reproduces(world, zpatch, checkout, tmp_path)


def test_dry_run_and_the_refusals_change_nothing(world, zpatch, checkout, tmp_path):
    r = zpatch("refresh", checkout, expect=4)                      # nothing applied
    assert "not applied here" in error_line(r) and "zpatch apply" in r.output
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    before, work = overlay_snapshot(world), files(checkout)
    res = zpatch.json("refresh", checkout, "--dry-run")
    assert res["changed"] and res["upstreams"][1]["hunks"][0]["patch"] == "0002-loader-tokenizer.patch"
    assert "Dry run: nothing written" in zpatch("refresh", checkout, "--dry-run").output
    assert zpatch("refresh", checkout, "--into", "nope.patch", expect=2)
    assert zpatch("refresh", checkout, "--into", "0001-sd-accept-4-D-latents.patch", expect=2)   # another upstream's
    assert overlay_snapshot(world) == before and files(checkout) == work


def test_an_edit_on_an_older_series_is_refused_and_its_hint_carries_it_over(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    # the overlay moves on meanwhile (a teammate's change to patch 1, pulled into the overlay)
    l1 = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3 v2\n")
    l2 = replace_line(l1, "loader line 20\n", "loader line 20 tokenizer\n")
    l3 = replace_line(l2, "loader line 35\n", "loader line 35 external\n")
    world.build_overlay(gguf_edits=[("loader: gemma3", {"loader.py": l1}), ("loader: tokenizer", {"loader.py": l2}),
                                    ("loader: external tokenizer", {"loader.py": l3, "tokenizer_util.py": "UTIL = 1\n"})])
    before = overlay_snapshot(world)
    r = zpatch("refresh", checkout, expect=4)
    assert "series changed since this checkout was applied" in error_line(r)
    assert overlay_snapshot(world) == before
    hint = hint_commands(r)[0]
    chain = hint.split("apply the new series: ", 1)[1].split("; then redo", 1)[0]
    done = follow(world, chain, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = shlex.split(chain.split(" > ", 1)[1])[0]
    assert saved.startswith("~/")
    assert "+# loader line 20 tokenizer!" in (tmp_path / saved[2:]).read_text()     # the edit is kept
    assert "gemma3 v2" in (checkout / GGUF / "loader.py").read_text()     # the new series is applied
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")   # redone
    assert "zpatch refresh" in hint.split("; then redo", 1)[1]
    zpatch("refresh", checkout)
    reproduces(world, zpatch, checkout, tmp_path)


def test_crlf_files_come_back_byte_for_byte(world, zpatch, checkout, tmp_path):
    crlf = world.make_gguf_crlf()
    git("fetch", "-q", "origin", cwd=checkout / GGUF)
    git("checkout", "-q", "--detach", world.gguf_pin, cwd=checkout / GGUF)
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "line 20 x\r\n", "line 20 x by hand\r\n")
    assert b"by hand\r\n" in (checkout / GGUF / "loader.py").read_bytes() and crlf
    zpatch("refresh", checkout)
    reproduces(world, zpatch, checkout, tmp_path)


def test_edit_mode_is_refused(world, zpatch, checkout):
    zpatch("edit", checkout)
    r = zpatch("refresh", checkout, expect=4)
    assert "edit mode" in error_line(r)


def test_a_kill_at_every_write_point_is_finished_by_the_next_refresh(world, zpatch, checkout, tmp_path):
    """Killed anywhere, the overlay holds either the old series or the refreshed one (never a mix), the
    edit is still in the checkout, and the next refresh leaves the same overlay and checkout an
    uninterrupted run leaves."""
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    node = checkout / "custom_nodes/ComfyUI-ZImage-Fix/nodes.py"
    node.write_text("X = 3\n")
    overlay0 = tmp_path / "overlay0"
    shutil.copytree(world.overlay, overlay0, symlinks=True)
    co0 = tmp_path / "co0"
    shutil.copytree(checkout, co0, symlinks=True)
    zpatch("refresh", checkout)
    want_overlay, want_files = overlay_snapshot(world), files(checkout)
    n = 0
    while True:
        n += 1
        shutil.rmtree(world.overlay)
        shutil.copytree(overlay0, world.overlay, symlinks=True)
        co = tmp_path / f"k{n}"
        shutil.copytree(co0, co, symlinks=True)
        r = run.zpatch("refresh", "--overlay", world.overlay, co, kill_at=n)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        assert files(co) == want_files                      # the user's edit is never lost
        done = run.zpatch("refresh", "--overlay", world.overlay, co)
        assert done.returncode == 0, f"kill point {n}: {done.stderr}"
        assert overlay_snapshot(world) == want_overlay, f"kill point {n}"
        assert files(co) == want_files
        assert zpatch.json("status", co)["clean"], f"kill point {n}"
        shutil.rmtree(co)
    assert n > 5


def test_a_refresh_in_the_middle_of_its_writes_makes_the_others_wait(world, zpatch, checkout):
    """Held after planning (both locks taken), a refresh keeps apply, export, lock and another refresh
    out (exit 10, nothing changed), then finishes as if alone."""
    from testing.pause import Held, zpatch_cmd
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    before, work = overlay_snapshot(world), files(checkout)
    held = Held(zpatch_cmd(world.overlay, "refresh", checkout), "overlay-planned")
    try:
        for args in (("apply", checkout), ("refresh", checkout), ("lock",), ("unapply", checkout)):
            r = run.zpatch(args[0], "--overlay", world.overlay, *args[1:])
            assert r.returncode == 10, (args, r.stderr)
        assert overlay_snapshot(world) == before and files(checkout) == work
    finally:
        done = held.release()
    assert done.returncode == 0, done.stderr
    assert b"tokenizer!" in (world.overlay / PATCHES / "0002-loader-tokenizer.patch").read_bytes()
    assert zpatch.json("status", checkout)["clean"]


def test_an_interrupted_refresh_names_its_own_command_line_and_following_it_finishes(world, zpatch, checkout,
                                                                                    tmp_path):
    """A trial: Ctrl-C in the middle of refresh's writes said "rerun `zpatch refresh --overlay OV`", no
    checkout; run from a folder of several checkouts, that folded another checkout's edit. The hint is
    now the command as it was run, its checkout in full; rerun anywhere, it finishes this checkout's refresh."""
    import signal
    from testing.pause import Held, zpatch_cmd
    zpatch("apply", checkout)
    other = world.clone_checkout(tmp_path / "aa-other")          # sorts first beside the checkout
    zpatch("apply", other)
    edit(other / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 SOMEONE ELSE\n")
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, mine\n")
    held = Held(zpatch_cmd(world.overlay, "refresh", checkout.name), "journal-written", cwd=tmp_path)
    held.proc.send_signal(signal.SIGINT)
    r = held.release()
    assert r.returncode == 130, r.stderr
    hint = next(x for x in r.stderr.splitlines() if x.startswith("hint: "))
    cmd = hint.split("`")[1]
    assert cmd == f"zpatch refresh --overlay {world.overlay} {checkout}", hint     # the checkout in full
    (tmp_path / "elsewhere").mkdir()
    done = follow(world, cmd, tmp_path / "elsewhere")            # so it works from anywhere
    assert done.returncode == 0, done.stdout + done.stderr
    patch = (world.overlay / PATCHES / "0002-loader-tokenizer.patch").read_text()
    assert "tokenizer, mine" in patch and "SOMEONE ELSE" not in patch
    assert zpatch.json("status", checkout)["clean"]


def test_inside_a_checkout_zpatch_finds_the_overlay_that_applied_it(world, zpatch, checkout, tmp_path):
    """A trial: applied from one overlay, `zpatch status` run inside the checkout took the overlay found
    beside zpatch (its own source tree) and advised `zpatch refresh --overlay <that tree>`, which would
    have folded the edit into the wrong overlay. The record names the overlay that applied it; status
    and refresh run inside the checkout use that one, and the advice names it."""
    from pathlib import Path
    import zimage_patcher
    own = Path(zimage_patcher.__file__).resolve().parent.parent      # the overlay beside zpatch
    before = {p: p.read_bytes() for p in sorted((own / "patches").rglob("*")) if p.is_file()}
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, mine\n")
    inside = checkout / GGUF
    r = run.zpatch("status", cwd=inside)
    assert r.returncode == 1 and f"zpatch refresh --overlay {world.overlay} " in r.stdout, r.stdout + r.stderr
    r = run.zpatch("refresh", cwd=inside)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tokenizer, mine" in (world.overlay / PATCHES / "0002-loader-tokenizer.patch").read_text()
    assert {p: p.read_bytes() for p in sorted((own / "patches").rglob("*")) if p.is_file()} == before
    assert zpatch.json("status", checkout)["clean"]


def test_the_overlay_a_checkout_last_used_is_kept_through_edit_mode_switches_and_its_loss(world, zpatch, checkout,
                                                                                         tmp_path):
    """A sixth trial: edit mode dropped the record, so zpatch inside the checkout fell back to its own
    source tree (advice: `export --overlay <that tree>`); a moved overlay fell back silently; an overlay
    taken from the current directory was left out of printed commands; switching between two copies of
    the overlay re-applied. Each is now as the user meant."""
    import shutil
    from pathlib import Path
    import zimage_patcher
    own = Path(zimage_patcher.__file__).resolve().parent.parent
    before = {p: p.read_bytes() for p in sorted((own / "patches").rglob("*")) if p.is_file()}
    inside = checkout / GGUF
    # switching to a copy of the overlay records it, without re-applying anything
    copy = tmp_path / "copy of overlay"
    shutil.copytree(world.overlay, copy)
    zpatch("apply", checkout)
    res = run.zpatch("apply", "--overlay", copy, checkout, "--json")
    assert json.loads(res.stdout)["changed"] is False, res.stdout
    assert json.loads(run.zpatch("status", "--json", cwd=inside).stdout)["clean"]     # the copy, as applied
    zpatch("apply", checkout)                                        # and back: not re-applied either
    # from inside another overlay's folder, printed commands name the overlay in use
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, mine\n")
    out = run.zpatch("status", checkout, cwd=copy).stdout          # the copy, from its folder: say so
    assert f"zpatch refresh --overlay '{copy}' " in out, out
    run.zpatch("apply", "--overlay", world.overlay, checkout)        # refused (edited): the pointer stays
    git("checkout", "--", "loader.py", cwd=inside)
    zpatch("apply", checkout)
    # edit mode: status, and export from the nested repository, use the overlay edit ran with
    zpatch("edit", checkout)
    assert f"zpatch unapply --overlay {world.overlay} " in run.zpatch("status", cwd=inside).stdout
    (inside / "nodes.py").write_text("GGUF = 'edited'\n")
    git("commit", "-q", "-am", "nodes: edited\n\nOrigin: vendor\nForwarded: no\nLast-Update: 2026-12-05\n"
        "Upstream-License: Apache-2.0", cwd=inside)
    r = run.zpatch("export", cwd=inside)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any("GGUF = 'edited'" in p.read_text() for p in (world.overlay / PATCHES).glob("*.patch"))
    zpatch("unapply", checkout)
    # the overlay moved away: a warning, and a writer refuses rather than taking zpatch's own tree
    moved = tmp_path / "moved"
    world.overlay.rename(moved)
    try:
        r = run.zpatch("status", cwd=inside)
        assert "the overlay that last applied this checkout is gone" in r.stderr, r.stderr
        r = run.zpatch("refresh", cwd=inside)
        assert r.returncode == 3 and f"{world.overlay}, is gone" in r.stderr and str(own) not in r.stderr, r.stderr
    finally:
        moved.rename(world.overlay)
    assert {p: p.read_bytes() for p in sorted((own / "patches").rglob("*")) if p.is_file()} == before


def test_a_pointer_never_leads_a_write_or_its_advice_to_an_overlay_the_user_did_not_name(world, zpatch, checkout,
                                                                                         tmp_path):
    """A seventh trial: with the checkout's overlay moved, status and `refresh --dry-run` advised
    `refresh --overlay <zpatch's own tree>`; a checkout made from outside any overlay pointed at zpatch's
    own tree, and writers then took it; a FIFO as the pointer hung every command."""
    import os
    from pathlib import Path
    import zimage_patcher
    own = Path(zimage_patcher.__file__).resolve().parent.parent
    before = {p: p.read_bytes() for p in sorted((own / "patches").rglob("*")) if p.is_file()}
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, mine\n")
    inside = checkout / GGUF
    moved = tmp_path / "moved"
    world.overlay.rename(moved)
    try:
        for args in (("status",), ("refresh", "--dry-run"), ("refresh",)):
            r = run.zpatch(*args, cwd=inside)
            assert r.returncode == 3 and "the overlay that last applied this checkout is gone" in r.stderr, r.stderr
            assert str(own) not in r.stdout + r.stderr
    finally:
        moved.rename(world.overlay)
    pointer = checkout / ".git/zpatch/overlay"
    pointer.write_text(f"{own}\n")                  # as a checkout made with the overlay beside zpatch leaves it
    for args in (("refresh", "--dry-run"), ("refresh",)):
        r = run.zpatch(*args, cwd=inside)
        assert r.returncode == 3, r.stdout + r.stderr   # never taken by a writer unless named
    pointer.unlink()
    os.mkfifo(pointer)                                 # a FIFO hung zpatch reading it
    r = run.zpatch("status", checkout, "--overlay", world.overlay)
    assert r.returncode == 1, r.stderr
    assert {p: p.read_bytes() for p in sorted((own / "patches").rglob("*")) if p.is_file()} == before


def test_a_folder_of_several_checkouts_is_not_taken_for_one_of_them(world, zpatch, tmp_path):
    """The hint for a folder around checkouts named the first of them; with several, it names them all
    and picks none (acting on one the user did not mean would fold or apply the wrong checkout)."""
    for name in ("aa", "bb"):
        world.clone_checkout(tmp_path / "parent" / name)
    r = zpatch("status", tmp_path / "parent", expect=4)
    hint = next(x for x in r.output.splitlines() if x.startswith("hint: "))
    assert "it holds 2: " in hint and str(tmp_path / "parent" / "aa") in hint and str(tmp_path / "parent" / "bb") in hint
    assert "`" not in hint                                       # no command to follow: the user picks


# ---- what an attack on refresh found (each was a defect; each test failed before its fix)

def test_an_edit_that_is_not_utf8_is_refused_before_anything_is_written(world, zpatch, checkout):
    zpatch("apply", checkout)
    p = checkout / GGUF / "loader.py"
    p.write_bytes(p.read_bytes().replace(b"loader line 20 tokenizer\n", b"loader line 20 tokenizer \xff\xe9\n"))
    before = overlay_snapshot(world)
    r = zpatch("refresh", checkout, expect=4)
    assert "not UTF-8 text after the edit" in error_line(r)
    assert overlay_snapshot(world) == before
    zpatch("status", checkout, expect=1)          # the overlay still reads


def test_an_edit_that_undoes_a_whole_patch_drops_it(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20\n")
    res = zpatch.json("refresh", checkout)
    assert {p["name"]: p["state"] for p in res["upstreams"][1]["patches"]}["0002-loader-tokenizer.patch"] == "dropped"
    assert not (world.overlay / PATCHES / "0002-loader-tokenizer.patch").exists()
    assert "0002-loader-tokenizer.patch" not in (world.overlay / PATCHES / "series").read_text()
    reproduces(world, zpatch, checkout, tmp_path)


def test_a_node_the_maintainer_relocked_since_apply_keeps_its_hashes(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    (world.overlay / "node/ComfyUI-ZImage-Fix/nodes.py").write_text("X = 'maintainer'\n")
    zpatch("lock")
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    zpatch("refresh", checkout)
    assert zpatch.json("check", "--no-apply")["clean"]
    assert (world.overlay / "node/ComfyUI-ZImage-Fix/nodes.py").read_text() == "X = 'maintainer'\n"


def test_a_patch_the_overlay_dropped_since_apply_is_not_taken_for_applied(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    edit(checkout / GGUF / "tokenizer_util.py", "UTIL = 1\n", "UTIL = 'mine'\n")
    series = world.overlay / PATCHES / "series"
    series.write_text(series.read_text().replace("0003-loader-external-tokenizer.patch\n", ""))
    (world.overlay / PATCHES / "0003-loader-external-tokenizer.patch").unlink()
    world.relock()
    r = zpatch("refresh", checkout, expect=4)
    assert "series changed since this checkout was applied" in error_line(r)
    zpatch("unapply", checkout, expect=4)                                   # the edit is never thrown away
    assert (checkout / GGUF / "tokenizer_util.py").read_text() == "UTIL = 'mine'\n"


def test_an_edit_in_a_file_of_look_alike_lines_lands_where_it_was_made(world, zpatch, checkout, tmp_path):
    base = "p0\n" * 60
    l1 = "".join("p\n" if 10 <= i <= 30 else "p0\n" for i in range(1, 61))
    l2 = "top\n" * 5 + l1
    git("checkout", "-q", "-b", "side", cwd=world.gguf_up)
    from testing.fixtures import commit as commit_files
    world.gguf_pin = commit_files(world.gguf_up, {"same.py": base}, "look-alike lines")
    world.build_overlay(gguf_edits=[("same: p", {"same.py": l1}), ("same: top", {"same.py": l2})])
    git("fetch", "-q", "origin", cwd=checkout / GGUF)
    git("checkout", "-q", "--detach", world.gguf_pin, cwd=checkout / GGUF)
    zpatch("apply", checkout)
    lines = (checkout / GGUF / "same.py").read_text().split("\n")
    at = [i for i, x in enumerate(lines) if x == "p"][11]          # after the 12th p
    lines.insert(at + 1, "X")
    (checkout / GGUF / "same.py").write_text("\n".join(lines))
    res = zpatch.json("refresh", checkout)
    assert [h["patch"] for h in res["upstreams"][1]["hunks"]] == ["0001-same-p.patch"]
    two = (world.overlay / PATCHES / "0002-same-top.patch").read_text()
    assert "+X" not in two and "-X" not in two                      # patch 2 holds only its own change
    one = world.clone_checkout(tmp_path / "one")
    git("fetch", "-q", "origin", cwd=one / GGUF)
    git("checkout", "-q", "--detach", world.gguf_pin, cwd=one / GGUF)
    subprocess.run(["git", "apply", str(world.overlay / PATCHES / "0001-same-p.patch")], cwd=one / GGUF, check=True)
    got = (one / GGUF / "same.py").read_text().split("\n")
    assert got.index("X") == [i for i, x in enumerate(got) if x == "p"][11] + 1
    reproduces(world, zpatch, checkout, tmp_path)


def test_changes_outside_the_patches_are_named_and_folded_only_when_told_where(world, zpatch, checkout, tmp_path):
    zpatch("apply", checkout)
    g = checkout / GGUF
    (g / "nodes.py").write_text("GGUF = 'mine'\n")                     # a file no patch changes
    (g / "notes.txt").write_text("untracked\n")
    (g / "loader.py").chmod(0o755)
    (checkout / "custom_nodes/ComfyUI-ZImage-Fix/extra.py").write_text("EXTRA = 1\n")   # a new node file
    r = zpatch("refresh", checkout, expect=1)
    out = r.output
    assert "not folded: custom_nodes/ComfyUI-GGUF/nodes.py (no patch changes this file" in out
    assert "not folded: custom_nodes/ComfyUI-GGUF/notes.txt (untracked" in out
    assert "not folded: custom_nodes/ComfyUI-GGUF/loader.py (mode change" in out
    assert (world.overlay / "node/ComfyUI-ZImage-Fix/extra.py").read_text() == "EXTRA = 1\n"   # the node took it
    (g / "loader.py").chmod(0o644)
    (g / "notes.txt").unlink()
    res = zpatch.json("refresh", checkout, "--new", "Bump GGUF")
    assert [h["patch"] for h in res["upstreams"][1]["hunks"]] == ["0004-Bump-GGUF.patch"] and not res["left_out"]
    reproduces(world, zpatch, checkout, tmp_path)


def test_the_ways_for_an_unowned_edit_say_they_take_the_other_changed_files_too(world, zpatch, checkout):
    """A trial: `--into P`, suggested for an edit of upstream's lines, also folded a change to a file no
    patch touches into P; the dry run showed it, the hint did not. The hint says so now."""
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 10\n", "loader line 10 by hand\n")
    (checkout / GGUF / "nodes.py").write_text("GGUF = 'mine'\n")
    r = zpatch("refresh", "--dry-run", checkout, expect=5)
    assert "(either takes your change to custom_nodes/ComfyUI-GGUF/nodes.py too)" in r.output
    into = zpatch.json("refresh", "--dry-run", "--into", "0003-loader-external-tokenizer.patch", checkout)
    assert {h["path"] for h in into["upstreams"][1]["hunks"]} == {"loader.py", "nodes.py"}      # as it says


@pytest.mark.parametrize("subject", ["   ", "two\nlines", "x\nFrom: evil <e@x>"])
def test_a_new_subject_is_one_line_of_text(world, zpatch, checkout, subject):
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 10\n", "loader line 10!\n")
    before = overlay_snapshot(world)
    assert "a subject is one line of text" in error_line(zpatch("refresh", checkout, "--new", subject, expect=2))
    assert overlay_snapshot(world) == before


def test_a_file_a_partial_mirror_left_out_is_never_folded_as_a_deletion(world, zpatch, tmp_path):
    """A newcomer on a partial mirror: the checkout lacks a file whose blob the source does not have, and
    refresh offered to fold that 'deletion' into a new patch with --new. It is no edit: refresh says why
    it leaves it out, and --new takes nothing from it."""
    blob = git("rev-parse", f"{world.comfy_pin}:nodes.py", cwd=world.comfy_up)
    (world.comfy_up / ".git/objects" / blob[:2] / blob[2:]).unlink()
    co = tmp_path / "ComfyUI"
    assert zpatch.json("checkout", co, "--apply")["missing_objects"] == ["nodes.py"]
    res = zpatch.json("refresh", co, "--dry-run", expect=None)
    [left] = [x for x in res["left_out"] if x["path"] == "nodes.py"]
    assert "partial mirror" in left["why"] and "--new" not in left["why"]
    before = overlay_snapshot(world)
    res = zpatch.json("refresh", co, "--new", "Take everything", expect=None)
    assert overlay_snapshot(world) == before             # nothing to fold: no patch deleting nodes.py
    assert any(x["path"] == "nodes.py" for x in res["left_out"])


def test_after_the_overlays_pin_moved_refresh_sends_the_edit_forward_not_the_overlay_back(world, zpatch, checkout,
                                                                                          tmp_path):
    """A second trial: after a rebase moved the overlay's pin, refresh on a checkout still at the old pin
    advised `zpatch rebase ... --onto <the old pin>`, undoing the rebase. Its advice now keeps a copy of
    the edit and moves the checkout to the new pin; run literally, nothing of the overlay moves back."""
    from testing.fixtures import commit
    zpatch("apply", checkout)
    g = checkout / GGUF
    moved = commit(world.gguf_up, {"README.md": "moved\n"}, "upstream moves on")
    zpatch("rebase", "comfyui-gguf", "--onto", moved)
    edit(g / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, fixed by hand\n")
    mine = (g / "loader.py").read_bytes()
    lock = (world.overlay / "upstream.lock").read_bytes()
    r = zpatch("refresh", checkout, expect=4)
    assert "moved comfyui-gguf's pin" in error_line(r) and "--onto" not in r.stderr
    home = tmp_path / "home"
    home.mkdir()
    done = follow(world, next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1], home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert git("rev-parse", "HEAD", cwd=g) == moved and zpatch.json("status", checkout)["clean"]
    assert [p.read_bytes() for p in home.iterdir()] == [mine]
    assert (world.overlay / "upstream.lock").read_bytes() == lock


def test_into_takes_its_own_upstreams_edits_and_a_dry_runs_advice_stays_a_dry_run(world, zpatch, checkout, tmp_path):
    """A second trial: with edits in both upstreams, refresh's advice `--into <a ComfyUI patch>` failed on
    the ComfyUI-GGUF edit ("belongs to another upstream"), and advice after --dry-run dropped --dry-run."""
    zpatch("apply", checkout)
    edit(checkout / "comfy/sd.py", "line 11 of sd.py\n", "line 11 MINE\n")          # upstream's own line
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, fixed\n")
    before = overlay_snapshot(world)
    r = zpatch("refresh", checkout, "--dry-run", expect=5)
    ways = hint_commands(r)
    assert ways[0].startswith("zpatch refresh --overlay") and all("--dry-run" in w for w in ways)
    done = follow(world, ways[0], tmp_path)
    assert done.returncode == 0 and overlay_snapshot(world) == before, done.stdout + done.stderr
    done = follow(world, ways[0].replace(" --dry-run", ""), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    reproduces(world, zpatch, checkout, tmp_path)


def test_refresh_never_writes_an_older_copy_of_the_node_over_a_newer_one(world, zpatch, tmp_path):
    """A third trial: checkout A refreshed an edit of the node into the overlay; checkout B, applied before
    that, then refreshed its own edit of the same file over it, silently. B is refused; its advice, run
    literally, keeps B's edit in ~ and installs the overlay's newer node."""
    a, b = world.clone_checkout(tmp_path / "A"), world.clone_checkout(tmp_path / "B")
    zpatch("apply", a)
    zpatch("apply", b)
    node = "custom_nodes/ComfyUI-ZImage-Fix/nodes.py"
    (a / node).write_bytes((a / node).read_bytes() + b"# FROM A\n")
    zpatch("refresh", a)
    newer = (a / node).read_bytes()
    (b / node).write_bytes((b / node).read_bytes() + b"# MINE IN B\n")
    mine = (b / node).read_bytes()
    before = overlay_snapshot(world)
    r = zpatch("refresh", b, expect=4)
    assert "the overlay's node changed since this checkout was applied" in error_line(r)
    assert overlay_snapshot(world) == before
    home = tmp_path / "home"
    home.mkdir()
    done = follow(world, next(x for x in r.stderr.splitlines() if x.startswith("hint: ")).split("`")[1], home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (b / node).read_bytes() == newer and zpatch.json("status", b)["clean"]
    assert [p.read_bytes() for p in home.iterdir()] == [mine]


def test_status_on_a_checkout_whose_node_the_overlay_changed_says_apply_and_that_works(world, zpatch, tmp_path):
    """A third trial: status called a node the user never touched "modified" (the overlay's had changed)
    and advised refresh, which found nothing. It is outdated, and apply, as advised, brings it up to date."""
    a, b = world.clone_checkout(tmp_path / "A"), world.clone_checkout(tmp_path / "B")
    zpatch("apply", a)
    zpatch("apply", b)
    node = "custom_nodes/ComfyUI-ZImage-Fix/nodes.py"
    (a / node).write_bytes((a / node).read_bytes() + b"# FROM A\n")
    zpatch("refresh", a)
    st = zpatch.json("status", b, expect=1)
    assert st["node"]["state"] == "outdated" and st["node"]["files"]["nodes.py"] == "outdated"
    text = zpatch("status", b, expect=1).output
    assert "refresh" not in text
    line = next(x for x in text.splitlines() if "apply what is missing or outdated" in x)
    done = follow(world, line.split("`")[1], tmp_path)
    assert done.returncode == 0 and zpatch.json("status", b)["clean"], done.stdout + done.stderr


def test_status_after_unapply_left_a_users_file_in_the_node_folder_gives_the_folder_hint(world, zpatch, checkout,
                                                                                        tmp_path):
    """A third trial: status said `zpatch apply` (node missing), which then refused the folder unapply had
    left for the user's file. Its advice is apply's own for that folder, and runs as printed."""
    zpatch("apply", checkout)
    (checkout / "custom_nodes/ComfyUI-ZImage-Fix/my_own.txt").write_text("mine\n")
    zpatch("unapply", checkout)
    text = zpatch("status", checkout, expect=1).output
    line = next(x for x in text.splitlines() if "the node's folder holds files" in x)
    home = tmp_path / "home"
    home.mkdir()
    done = follow(world, line.split("`")[1], home)
    assert done.returncode == 0 and zpatch.json("status", checkout)["clean"], done.stdout + done.stderr
    assert [p.read_text() for p in home.glob("*/my_own.txt")] == ["mine\n"]


def test_a_dry_runs_next_command_names_the_overlay_and_runs_from_elsewhere(world, zpatch, checkout, tmp_path):
    """A third trial: `zpatch --overlay OV refresh --dry-run` printed "Fold them with: zpatch refresh CO",
    which failed where the user was (exit 3, no overlay there). Every printed command names it."""
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer, fixed by hand\n")
    text = zpatch("refresh", checkout, "--dry-run").output
    cmd = next(x for x in text.splitlines() if x.startswith("Dry run: nothing written. Fold them with: ")).split(": ")[-1]
    assert cmd == f"zpatch refresh --overlay {world.overlay} {checkout}"
    done = follow(world, cmd, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    reproduces(world, zpatch, checkout, tmp_path)


def test_an_outdated_series_refusal_names_the_upstream_holding_the_edit(world, zpatch, checkout, tmp_path):
    """A third trial: with both series moved on and an edit only in ComfyUI-GGUF, refresh's refusal named
    ComfyUI and advised resetting comfy/sd.py, where nothing was edited; apply then refused loader.py."""
    from testing.fixtures import SD_PY
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    l1 = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3 v2\n")
    l2 = replace_line(l1, "loader line 20\n", "loader line 20 tokenizer\n")
    l3 = replace_line(l2, "loader line 35\n", "loader line 35 external\n")
    world.build_overlay(comfy_edits=[("sd: accept 4-D latents v2",
                                      {"comfy/sd.py": replace_line(SD_PY, "line 10 of sd.py\n", "line 10 PATCHED v2\n")})],
                        gguf_edits=[("loader: gemma3", {"loader.py": l1}), ("loader: tokenizer", {"loader.py": l2}),
                                    ("loader: external tokenizer", {"loader.py": l3, "tokenizer_util.py": "UTIL = 1\n"})])
    r = zpatch("refresh", checkout, expect=4)
    assert "comfyui-gguf series changed" in error_line(r) and "sd.py" not in r.stderr
    chain = hint_commands(r)[0].split("apply the new series: ", 1)[1].split("; then redo", 1)[0]
    done = follow(world, chain, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "line 10 PATCHED v2" in (checkout / "comfy/sd.py").read_text()


def test_status_on_an_edit_over_an_older_series_advises_what_apply_then_accepts(world, zpatch, checkout, tmp_path):
    """A third trial: a hand edit on a checkout whose series the overlay had changed showed as `outdated`
    only, and status advised `zpatch apply`, which refused the edit. The edit is named, and the advice
    keeps a copy and applies the new series, run literally."""
    zpatch("apply", checkout)
    edit(checkout / GGUF / "loader.py", "loader line 20 tokenizer\n", "loader line 20 tokenizer!\n")
    mine = (checkout / GGUF / "loader.py").read_bytes()
    l1 = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3 v2\n")
    world.build_overlay(gguf_edits=[("loader: gemma3", {"loader.py": l1})])
    text = zpatch("status", checkout, expect=1).output
    assert "outdated  0001-loader-gemma3.patch (loader.py)" in text and "to apply what is missing" not in text
    line = next(x for x in text.splitlines() if "let apply write it again" in x)
    assert "(edited after apply: keep a copy of each" in line          # no refresh (it refuses), no stray "or"
    home = tmp_path / "home"
    home.mkdir()
    done = follow(world, line.split("`")[-2], home)
    assert done.returncode == 0 and zpatch.json("status", checkout)["clean"], done.stdout + done.stderr
    assert [p.read_bytes() for p in home.iterdir()] == [mine]


def test_status_advice_quotes_every_name_so_a_hostile_file_name_runs_nothing(world, zpatch, tmp_path):
    """A fourth trial: a file of the user's named `n;touch INJECTED;.txt` in the node's folder became a
    command in status's advice (the copy's name was not quoted), and `my notes.txt` broke the chain. In
    a checkout whose path holds a space, every name is quoted: run literally, the advice copies each
    file whole and runs nothing else."""
    co = world.clone_checkout(tmp_path / "my co")
    zpatch("apply", co)
    node = co / "custom_nodes/ComfyUI-ZImage-Fix"
    names = ["n;touch INJECTED;.txt", "my notes.txt", "$(touch INJECTED2).txt"]
    for n in names:
        (node / n).write_text(f"{n}\n")
    text = zpatch("status", co, expect=1).output
    line = next(x for x in text.splitlines() if "let apply write it again" in x)
    home = tmp_path / "home"
    home.mkdir()
    done = follow(world, line.split("`")[-2], home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(tmp_path.rglob("INJECTED*"))
    assert sorted(p.read_text() for p in home.iterdir()) == sorted(f"{n}\n" for n in names)
    assert zpatch.json("status", co)["clean"]
    done = follow(world, line.split("`")[1], home)          # the other way: refresh, with the spaced path
    assert done.returncode == 0, done.stdout + done.stderr
