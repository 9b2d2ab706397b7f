"""zpatch rebase on synthetic upstream histories, one per case, through the CLI."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from testing import run
from testing.fixtures import LOADER_PY, commit, error_line, gone, overlay_snapshot, replace_line


def states(res) -> list[tuple[str, str]]:
    return [(p["name"], p["state"]) for p in res["patches"]]


def gguf_dir(world):
    return world.overlay / "patches/comfyui-gguf"


def pin(world, name="comfyui-gguf") -> str:
    import tomllib
    return tomllib.loads((world.overlay / "upstream.lock").read_text())["upstream"][name]["commit"]


def test_clean_move_keeps_every_patch_byte_for_byte_and_moves_the_pin(zpatch, world):
    new = commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    before = overlay_snapshot(world)
    dry = zpatch.json("rebase", "comfyui-gguf", "--onto", "origin/main", "--dry-run")
    assert [s for _, s in states(dry)] == ["unchanged"] * 3 and dry["ahead"] == 1
    assert overlay_snapshot(world) == before
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "origin/main")
    assert [s for _, s in states(res)] == ["unchanged"] * 3
    after = overlay_snapshot(world)
    assert {k for k in after if after[k] != before.get(k)} == {"upstream.lock"}
    assert pin(world) == new
    assert zpatch.json("check")["clean"]


def test_context_shift_refreshes_and_dates_the_patches(zpatch, world):
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    dry = zpatch("rebase", "comfyui-gguf", "--onto", "main", "--dry-run").stdout
    assert "Dry run: nothing written." in dry and "range-diff" not in dry     # -v shows it on a dry run
    out = zpatch("rebase", "comfyui-gguf", "--onto", "main").stdout
    # a per-patch summary, then git's range-diff of the series before and after
    assert [l.split()[0] for l in out.splitlines() if l.startswith("  ") and ".patch" in l] == ["refreshed"] * 3
    assert "moved the pin" in out and "(git range-diff):" in out
    assert sum(1 for l in out.splitlines() if re.match(r"\d+:  [0-9a-f]+ [=!] \d+:  [0-9a-f]+ ", l)) == 3
    p1 = (gguf_dir(world) / "0001-loader-gemma3.patch").read_text()
    assert "@@ -3,7 +3,7 @@" in p1 or "@@ -2," in p1 or "@@ -3," in p1
    import datetime
    assert f"Last-Update: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}" in p1
    assert zpatch.json("check")["clean"]


def _rebased_copy(world, tmp_path) -> dict:
    """The overlay as an uninterrupted `rebase comfyui-gguf --onto main` leaves it, made on a copy."""
    import shutil
    reference = tmp_path / "reference"
    shutil.copytree(world.overlay, reference)
    r = run.zpatch("rebase", "--overlay", reference, "comfyui-gguf", "--onto", "main")
    assert r.returncode == 0, r.stderr
    return {p.relative_to(reference).as_posix(): p.read_bytes() for p in sorted(reference.rglob("*"))
            if p.is_file() and ".zpatch" not in p.relative_to(reference).parts}


def _conflicting_upstream(world):
    return commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
                  "upstream rewrites line 20")


def test_conflict_stops_then_continue_after_resolving(zpatch, world):
    _conflicting_upstream(world)
    r = zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    assert "CONFLICT in 0002-loader-tokenizer.patch" in r.stdout and "upstream rewrites line 20" in r.stdout
    res = zpatch.json("rebase", "--abort")
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    res = json.loads(zpatch("rebase", "--continue", "--json", expect=5).stdout)   # markers still there
    assert res["ok"] is False and "still has conflict markers" in res["error"]
    from zimage_patcher.overlay_write import area as _area
    work = _area(world.overlay) / "rebase" / "work"
    text = (work / "loader.py").read_text()
    assert "<<<<<<<" in text
    resolved = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n")
    resolved = replace_line(resolved, "loader line 20\n", "loader line 20 UPSTREAM tokenizer\n")
    (work / "loader.py").write_text(resolved)
    r = zpatch("rebase", "--continue")
    assert "moved the pin of comfyui-gguf" in r.stdout
    assert "loader line 20 UPSTREAM tokenizer" in (gguf_dir(world) / "0002-loader-tokenizer.patch").read_text()
    res = zpatch.json("check")
    assert res["clean"], res["problems"]
    assert zpatch.json("export", "--check")["changed"] is False


def test_a_conflict_names_the_hunk_and_only_the_upstream_commits_that_touched_its_lines(zpatch, world):
    text = replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")
    commit(world.gguf_up, {"loader.py": text}, "upstream rewrites line 20")
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + text}, "upstream inserts a first line")
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + replace_line(text, "loader line 38\n", "x\n")},
           "upstream rewrites line 38, far from the patch's hunk")
    commit(world.gguf_up, {"other.py": "y\n"}, "unrelated upstream work")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", expect=5)
    p2 = next(p for p in res["patches"] if p["name"] == "0002-loader-tokenizer.patch")
    assert p2["state"] == "conflict"
    [hunk] = p2["hunks"]
    assert hunk["file"] == "loader.py" and hunk["hunk"] == 1
    lo, hi = hunk["lines"]
    assert lo <= 21 <= hi and hi - lo <= 8          # line 20 of the pin is line 21 on the target
    assert [c.split(" ", 1)[1] for c in hunk["upstream_commits"]] == ["upstream rewrites line 20"]
    assert [c.split(" ", 1)[1] for c in p2["upstream_commits"]] == ["upstream rewrites line 20"]
    out = zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5).stdout
    assert "hunk #1 of loader.py (lines " in out and "upstream rewrites line 20" in out
    assert "line 38" not in out and "inserts a first line" not in out


def test_skip_drops_the_patch_and_abort_restores_byte_for_byte(zpatch, world):
    _conflicting_upstream(world)
    before = overlay_snapshot(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    zpatch.json("rebase", "--abort")
    assert overlay_snapshot(world) == before
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    res = zpatch.json("rebase", "--skip")
    assert ("0002-loader-tokenizer.patch", "skipped") in states(res)
    assert (gguf_dir(world) / "series").read_text().split() == ["0001-loader-gemma3.patch",
                                                               "0003-loader-external-tokenizer.patch"]
    assert not (gguf_dir(world) / "0002-loader-tokenizer.patch").exists()


def test_upstream_merged_our_exact_patch(zpatch, world):
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n")},
           "upstream takes our gemma3 change")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main")
    assert states(res)[0] == ("0001-loader-gemma3.patch", "upstreamed")
    # upstream now is the old pin plus patch 1, exactly what patches 2 and 3 were made on: same bytes
    assert [s for _, s in states(res)[1:]] == ["unchanged", "unchanged"]
    assert "0001-loader-gemma3.patch" not in (gguf_dir(world) / "series").read_text()
    assert zpatch.json("check")["clean"]


def test_a_probe_fires_when_upstream_does_the_job_differently(zpatch, world):
    p = gguf_dir(world) / "0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace("Forwarded: no\n", "Forwarded: no\nObsolete-If: grep loader.py 'native tokenizer'\n"))
    world.relock()
    assert zpatch.json("check")["clean"]                          # silent on the pin
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "native tokenizer here\n")},
           "upstream builds the tokenizer itself")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", expect=None)
    entry = dict(states(res))
    assert entry["0002-loader-tokenizer.patch"] == "obsolete"       # although it also conflicts
    assert next(x for x in res["patches"] if x["name"] == "0002-loader-tokenizer.patch")["fired"]


def test_a_defines_probe_reads_upstreams_python_without_running_it(zpatch, world):
    p = gguf_dir(world) / "0002-loader-tokenizer.patch"
    p.write_text(p.read_text().replace(
        "Forwarded: no\n", "Forwarded: no\nObsolete-If: defines loader.py 'Loader.tokenizer(reader)'\n"))
    world.relock()
    assert zpatch.json("check")["clean"]                          # silent on the pin
    # upstream grows the class, but not yet the parameter: still silent (and the code would raise if run)
    body = "raise SystemExit('upstream code ran')\nclass Loader:\n    def tokenizer(self, path):\n        pass\n"
    commit(world.gguf_up, {"loader.py": LOADER_PY + body}, "upstream adds a tokenizer method")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", expect=None)
    assert dict(states(res))["0002-loader-tokenizer.patch"] != "obsolete"
    commit(world.gguf_up, {"loader.py": LOADER_PY + body.replace("(self, path)", "(self, path, *, reader=None)")},
           "upstream's tokenizer takes an open reader")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", expect=None)
    entry = next(x for x in res["patches"] if x["name"] == "0002-loader-tokenizer.patch")
    assert entry["state"] == "obsolete" and entry["fired"] == ["defines loader.py 'Loader.tokenizer(reader)'"]
    # an upstream file this Python cannot parse: named with the patch, which is carried on regardless
    commit(world.gguf_up, {"loader.py": LOADER_PY + "def broken(:\n"}, "upstream breaks its syntax")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", expect=None)
    entry = next(x for x in res["patches"] if x["name"] == "0002-loader-tokenizer.patch")
    assert entry["state"] == "refreshed" and "does not parse" in entry["probe_errors"][0], entry
    out = zpatch("rebase", "comfyui-gguf", "--onto", "main").stdout
    assert "warning: probe not read: Obsolete-If: defines 'Loader.tokenizer(reader)': upstream's loader.py" in out \
        or "warning: probe not read: Obsolete-If: defines: upstream's loader.py at" in out, out
    assert "moved the pin" in out
    assert "does not parse" in zpatch.json("check", expect=1)["problems"][0]["message"]     # on the new pin


def _with_probe(world, probe: str, patch="0002-loader-tokenizer.patch"):
    p = gguf_dir(world) / patch
    p.write_text(p.read_text().replace("Forwarded: no\n", f"Forwarded: no\nObsolete-If: {probe}\n"))
    world.relock()


def _entry(res, name="0002-loader-tokenizer.patch"):
    return next(x for x in res["patches"] if x["name"] == name)


def test_probes_read_files_not_links_folders_or_missing_blobs(zpatch, world):
    """Found by an attack: a symlink's blob is its target text (`evil.py -> Loader=1` made the patch
    obsolete), a blob the cache lacks read as "not defined"; both now say why the probe was not read."""
    _with_probe(world, "defines evil.py Loader")
    os.symlink("Loader=1", world.gguf_up / "evil.py")
    commit(world.gguf_up, {"other.py": "x = 1\n"}, "upstream adds a link whose target text is Python")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run")
    assert _entry(res)["state"] == "unchanged" and "is a symlink" in _entry(res)["probe_errors"][0]
    # a folder named like the module is not a module file: silent, no error
    (world.gguf_up / "evil.py").unlink()
    commit(world.gguf_up, {"evil.py/__init__.py": "Loader = 1\n"}, "upstream makes it a folder")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run")
    assert _entry(res)["state"] == "unchanged" and "probe_errors" not in _entry(res)
    # the blob is gone from the cache's mirror (as in a partial clone): said, not taken for "not defined"
    commit(world.gguf_up, {"mod.py": "Loader = 1\n"}, "upstream adds mod.py")
    _with_probe(world, "defines mod.py Loader", patch="0001-loader-gemma3.patch")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run")     # fills the cache: it fires
    assert _entry(res, "0001-loader-gemma3.patch")["state"] == "obsolete"
    from zimage_patcher import cache
    from testing.fixtures import GGUF_URL
    mirror = cache.mirror_path(GGUF_URL)
    blob = subprocess.run(["git", "rev-parse", "main:mod.py"], cwd=world.gguf_up, capture_output=True, text=True,
                          check=True).stdout.strip()
    run = lambda *a, **k: subprocess.run(["git", *a], cwd=mirror, capture_output=True, text=True, check=True, **k)
    run("repack", "-a", "-d", "-q")
    objects = [l.split()[0] for l in run("rev-list", "--objects", "--all").stdout.splitlines()]
    old = list((mirror / "objects/pack").glob("pack-*"))
    run("pack-objects", "-q", str(mirror / "objects/pack/pack"), input="".join(o + "\n" for o in objects if o != blob))
    for f in old:
        f.unlink()
    assert subprocess.run(["git", "cat-file", "-e", blob], cwd=mirror).returncode != 0
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", "--offline")
    e = _entry(res, "0001-loader-gemma3.patch")
    assert e["state"] != "obsolete" and "is not in the cache (a partial clone lacks its content)" in e["probe_errors"][0]


def test_a_rebase_killed_at_its_first_write_leaves_nothing_after_abort(world):
    from zimage_patcher.overlay_write import area as _area
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    for kill_at in (1, 2, 3):      # the first write point that leaves the area (the lock is taken before)
        r = _cli(world, "rebase", "comfyui-gguf", "--onto", "main", kill_at=kill_at)
        assert r.returncode == -9
        if (_area(world.overlay) / "rebase").exists():
            break
    assert (_area(world.overlay) / "rebase").exists()
    r = _cli(world, "rebase", "--abort")
    assert r.returncode == 2 and "no rebase in progress" in r.stderr
    assert not (_area(world.overlay) / "rebase").exists()


def test_a_symlinked_folder_above_a_probed_path_is_an_error_not_an_answer(zpatch, world):
    """Found by an attack: upstream moved pkg/ to impl/ and left a link pkg -> impl; `missing pkg/mod.py`
    fired (the patch would have been dropped) although the module still imports through the link."""
    commit(world.gguf_up, {"pkg/mod.py": "Loader = 1\n"}, "upstream adds pkg")
    subprocess.run(["git", "mv", "pkg", "impl"], cwd=world.gguf_up, check=True)
    os.symlink("impl", world.gguf_up / "pkg")
    commit(world.gguf_up, {}, "upstream moves pkg to impl, keeps a link")
    for probe in ("missing pkg/mod.py", "defines pkg/mod.py Loader", "grep pkg/mod.py Loader"):
        p = gguf_dir(world) / "0002-loader-tokenizer.patch"
        p.write_text(re.sub(r"Obsolete-If: .*\n", "", p.read_text()))
        _with_probe(world, probe)
        e = _entry(zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run"))
        assert e["state"] != "obsolete" and "pkg at" in e["probe_errors"][0] and "is a symlink" in e["probe_errors"][0]


def test_defines_answers_what_importing_would():
    from zimage_patcher.probes import defines
    src = (b"from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n    from x import Reader\n"
           b"else:\n    Other = 1\nif typing.TYPE_CHECKING:\n    import y\n"
           b"class C:\n    GEMMA3: int\n    B: int = 2\nREADER: object\n")
    assert [n for n in ("Reader", "Other", "y", "C.GEMMA3", "C.B", "READER", "TYPE_CHECKING")
            if defines(src, n)] == ["Other", "C.B", "TYPE_CHECKING"]


def test_dep3_fields_are_read_as_written_and_never_below_the_cut_line():
    """Found by an attack: matching every field in any case took prose ("origin: of the bug") for a
    header, and a probe below `---` (which git am drops) was still read."""
    from zimage_patcher import patchfile
    head = ("From 0 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\norigin: of the bug is NumPy 2.\n"
            "obsolete-if: grep a.py 'x'\nObsolete-If:grep a.py 'y'\n---\nObsolete-If: grep a.py 'z'\n"
            " a.py | 1 +\n\n")
    diff = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-a\n+b\n"
    p = patchfile.parse("t.patch", (head + diff).encode())
    assert "Origin" not in p.headers
    assert p.probes == ["grep a.py 'x'", "grep a.py 'y'"]


def test_last_update_is_stamped_however_the_field_is_spaced(zpatch, world):
    p = gguf_dir(world) / "0001-loader-gemma3.patch"
    p.write_text(re.sub(r"Last-Update: .*", "Last-Update:2020-01-01", p.read_text()))
    world.relock()
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    zpatch("rebase", "comfyui-gguf", "--onto", "main")
    import datetime
    text = p.read_text()
    assert f"Last-Update: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}" in text and "2020-01-01" not in text


def test_a_long_elif_chain_is_read_not_a_crash(zpatch, world):
    """Found by an attack: a definition after some thousand elif branches (which nest a level each)."""
    _with_probe(world, "defines mod.py Loader")
    commit(world.gguf_up, {"mod.py": "if a:\n    pass\n" + "elif a:\n    pass\n" * 1500 + "Loader = 1\n"},
           "upstream writes a long dispatch")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run")
    assert _entry(res)["state"] == "obsolete" and _entry(res)["fired"] == ["defines mod.py Loader"]


def test_a_rebase_that_fails_before_writing_leaves_nothing_in_progress(zpatch, world, monkeypatch):
    from zimage_patcher import rebase
    from zimage_patcher.errors import Exit, ZpatchError
    commit(world.gguf_up, {"other.py": "x\n"}, "unrelated upstream work")
    before = overlay_snapshot(world)

    def fail(*a, **k):
        raise ZpatchError("injected failure while carrying a patch", Exit.ENVIRONMENT)
    with monkeypatch.context() as m:
        m.setattr(rebase, "_carry", fail)
        r = zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=8)
    assert "injected failure" in error_line(r) and overlay_snapshot(world) == before
    assert "no rebase in progress" in error_line(zpatch("rebase", "--abort", expect=2))
    assert [s for _, s in states(zpatch.json("rebase", "comfyui-gguf", "--onto", "main"))] == ["unchanged"] * 3


@pytest.mark.parametrize("spelling", ["Obsolete-If: ", "obsolete-if: ", "Obsolete-If:"])
def test_a_probe_that_fires_on_the_pin_is_a_check_problem(zpatch, world, spelling):
    """However the field name is cased (DEP-3 ignores case), with or without a space: an attack found
    lower-case probes silently ignored."""
    p = gguf_dir(world) / "0001-loader-gemma3.patch"
    p.write_text(p.read_text().replace("Forwarded: no\n", f"Forwarded: no\n{spelling}grep loader.py 'loader line 7'\n"))
    world.relock()
    res = zpatch.json("check", expect=1)
    assert [x["kind"] for x in res["problems"]] == ["probe"]


def test_refusals(zpatch, world):
    r = zpatch("rebase", "comfyui-gguf", "--onto", "no-such-ref", expect=2)
    assert "no-such-ref: no such commit, branch or tag" in error_line(r)
    r = zpatch("rebase", "nope", "--onto", "main", expect=2)
    assert "nope: no such upstream" in error_line(r)
    r = zpatch("rebase", "--continue", expect=2)
    assert "no rebase in progress" in error_line(r)
    # a target that does not descend from the pin
    from testing.fixtures import git
    git("checkout", "-q", "--orphan", "other", cwd=world.gguf_up)
    git("commit", "-q", "--allow-empty", "-m", "unrelated root", cwd=world.gguf_up)
    r = zpatch("rebase", "comfyui-gguf", "--onto", "other", expect=2)
    assert "does not descend from the pin" in error_line(r) and "--allow-unrelated" in r.stderr
    git("checkout", "-q", "main", cwd=world.gguf_up)
    _conflicting_upstream(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    r = zpatch("rebase", "comfyui", "--onto", "main", expect=10)
    assert "is in progress" in error_line(r)
    assert "a rebase of comfyui-gguf" in zpatch("check", "--no-apply").stderr   # every command says so


@pytest.mark.slow
@pytest.mark.parametrize("finish", ["--abort", "--continue"])
def test_killed_at_every_write_point_then_abort_or_continue(world, tmp_path, finish):
    """SIGKILL at each write point in turn (its state, the formatted patches, the transaction over
    the overlay, the lock): --abort gives the overlay back byte for byte unless the kill came after the
    commit point (then the rebase is complete), and --continue ends exactly where an uninterrupted
    rebase ends."""
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    before = overlay_snapshot(world)
    want = _rebased_copy(world, tmp_path)
    assert want != before
    for kill_at in range(1, 200):
        r = _cli(world, "rebase", "comfyui-gguf", "--onto", "main", kill_at=kill_at)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        r = _cli(world, "rebase", finish)
        nothing = r.returncode == 2 and "no rebase in progress" in r.stderr    # killed before its state existed
        assert nothing or r.returncode == 0, (kill_at, r.stderr)
        assert not list(world.overlay.rglob("*.tmp")), kill_at
        now = overlay_snapshot(world)
        if finish == "--abort" or nothing:
            assert now in (before, want), kill_at
        else:
            assert now == want, kill_at
        assert "in progress" not in _cli(world, "check", "--no-apply").stderr, kill_at
        for rel, data in before.items():        # the next trial starts from the old overlay again
            (world.overlay / rel).write_bytes(data)
        for rel in set(now) - set(before):
            (world.overlay / rel).unlink()
    else:
        raise AssertionError("the rebase never completed")
    assert kill_at > 15, "the rebase should have many write points"
    assert overlay_snapshot(world) == want


def test_upstream_deleted_or_renamed_the_patched_file_is_a_conflict_naming_the_commit(zpatch, world):
    from testing.fixtures import git
    git("mv", "loader.py", "gguf_loader.py", cwd=world.gguf_up)
    git("commit", "-q", "-m", "upstream renames loader.py", cwd=world.gguf_up)
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main", "--dry-run", expect=5)
    first = res["patches"][0]
    assert first["state"] == "conflict" and first["files"] == ["loader.py"]
    assert any("upstream renames loader.py" in c for c in first["upstream_commits"])


def test_crlf_series_is_refreshed_byte_exactly(zpatch, world):
    crlf = world.make_gguf_crlf()
    commit(world.gguf_up, {"loader.py": "# new first line\r\n" + crlf}, "upstream inserts a CRLF line")
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main")
    assert [s for _, s in states(res)] == ["refreshed"]
    data = next(gguf_dir(world).glob("0001-*.patch")).read_bytes()
    assert b"+# loader line 20 x\r\n" in data and b" # loader line 21\r\n" in data
    assert zpatch.json("check")["clean"] and zpatch.json("export", "--check")["changed"] is False


def test_a_source_missing_blobs_outside_the_series_still_rebases(zpatch, world):
    """DESIGN section 7: a partial mirror (the ComfyUI snapshot lacks one large blob) must rebase
    when the series does not touch the missing file."""
    from testing.fixtures import git
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    blob = git("rev-parse", f"{world.gguf_pin}:nodes.py", cwd=world.gguf_up)
    (world.gguf_up / ".git/objects" / blob[:2] / blob[2:]).unlink()
    res = zpatch.json("rebase", "comfyui-gguf", "--onto", "main")
    assert [s for _, s in states(res)] == ["refreshed"] * 3
    assert pin(world) == git("rev-parse", "main", cwd=world.gguf_up)


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.45, 0.6, 0.8])
def test_killed_at_a_random_moment_then_continue_or_abort(world, tmp_path, delay):
    """Whatever the moment: --abort gives the overlay back byte for byte, and --continue (or a rerun)
    ends exactly where an uninterrupted rebase ends."""
    import signal
    import time
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    before = overlay_snapshot(world)
    cmd = [sys.executable, "-m", "zimage_patcher.cli", "rebase", "--overlay", str(world.overlay)]
    want = _rebased_copy(world, tmp_path)
    for finish in ("--abort", "--continue"):
        p = subprocess.Popen([*cmd, "comfyui-gguf", "--onto", "main"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        gone(p.pid)
        r = subprocess.run([*cmd, finish], capture_output=True, text=True)
        if r.returncode == 2 and "no rebase in progress" in r.stderr:
            pass                                  # it had finished (or not begun) before the kill
        else:
            assert r.returncode == 0, r.stderr
        now = overlay_snapshot(world)
        if finish == "--abort":
            assert now in (before, want)
            if now == want:                      # it had finished: put the overlay back for --continue
                for rel, data in before.items():
                    (world.overlay / rel).write_bytes(data)
        else:
            if now == before:                    # killed before it wrote its state: run it again
                subprocess.run([*cmd, "comfyui-gguf", "--onto", "main"], check=True, capture_output=True)
                now = overlay_snapshot(world)
            assert now == want


# ---------------------------------------------------------------- found by the attack on edit/export/rebase

def test_action_flags_take_no_other_option(zpatch, world):
    _conflicting_upstream(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    before = overlay_snapshot(world)
    for extra in (("--dry-run",), ("--offline",), ("comfyui-gguf",)):
        r = zpatch("rebase", "--continue", *extra, expect=2)
        assert "take no other argument or option" in error_line(r)
    assert overlay_snapshot(world) == before


def test_a_second_rebase_command_waits_its_turn(zpatch, world):
    import fcntl
    from zimage_patcher.overlay_write import area as _area
    lock = _area(world.overlay) / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=10)
        assert "is writing this overlay" in error_line(r)
    finally:
        os.close(fd)


def test_continue_refuses_when_git_could_not_even_merge_and_nothing_was_resolved(zpatch, world):
    from testing.fixtures import git
    git("rm", "-q", "loader.py", cwd=world.gguf_up)
    git("commit", "-q", "-m", "upstream deletes loader.py", cwd=world.gguf_up)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    r = zpatch("rebase", "--continue", expect=5)
    assert "nothing to continue with" in error_line(r)
    assert "--skip" in r.stderr


@pytest.mark.parametrize("probe, why", [("grep loader.py 'a\x00b'", "control characters"),
                                        ("grep loader.py '" + "a" * 600 + "'", "too long"),
                                        ("missing ./loader.py", "not a path inside"),
                                        ("grep ':(top)loader.py' x", "not a path inside"),
                                        ("defines loader.txt Loader", "takes a .py file"),
                                        ("defines loader.py 'Loader.__import__(\"os\")'", "dotted name"),
                                        ("defines loader.py 'a..b'", "dotted name"),
                                        ("defines ../loader.py a", "not a path inside")])
def test_hostile_probes_are_refused(zpatch, world, probe, why):
    p = gguf_dir(world) / "0001-loader-gemma3.patch"
    p.write_text(p.read_text().replace("Forwarded: no\n", f"Forwarded: no\nObsolete-If: {probe}\n"))
    world.relock()
    res = zpatch.json("check", expect=1)
    assert any(why in x["message"] for x in res["problems"]), res["problems"]


def test_a_series_changed_while_the_rebase_is_stopped_is_named_not_guessed(zpatch, world):
    _conflicting_upstream(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    series = gguf_dir(world) / "series"
    kept = series.read_bytes()
    series.write_bytes(b"".join(l + b"\n" for l in reversed(kept.split(b"\n")) if l))     # reordered
    r = zpatch("rebase", "--continue", expect=4)
    assert "another series of comfyui-gguf" in error_line(r) and "--abort" in r.output
    series.write_bytes(kept)
    zpatch("rebase", "--skip")


def test_a_symlinked_keep_folder_in_the_rebase_area_is_refused(zpatch, world, tmp_path):
    from zimage_patcher.overlay_write import area as _area
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    before = overlay_snapshot(world)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for kill_at in range(1, 8):     # the first kill that leaves its state saved
        r = _cli(world, "rebase", "comfyui-gguf", "--onto", "main", kill_at=kill_at)
        assert r.returncode == -9
        if (_area(world.overlay) / "rebase" / "op.json").is_file():
            break
    assert (_area(world.overlay) / "rebase" / "op.json").is_file()
    (_area(world.overlay) / "before").symlink_to(elsewhere)
    r = zpatch("rebase", "--continue", expect=4)
    assert "is a symlink" in error_line(r)
    assert not list(elsewhere.iterdir()) and overlay_snapshot(world) == before
    zpatch("rebase", "--abort")
    assert overlay_snapshot(world) == before


# ---------------------------------------------------------------- found by the attack on the shared transaction

def _cli(world, *args, kill_at=None):
    return run.zpatch(args[0], "--overlay", world.overlay, *args[1:], kill_at=kill_at or None)


def test_an_edit_to_a_carried_patch_while_stopped_is_never_overwritten(zpatch, world):
    _conflicting_upstream(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    p1 = gguf_dir(world) / "0001-loader-gemma3.patch"
    p1.write_bytes(p1.read_bytes() + b"USER NOTE\n")
    zpatch("rebase", "--skip", expect=4)
    assert b"USER NOTE" in p1.read_bytes()
    zpatch("rebase", "--abort")
    assert b"USER NOTE" in p1.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("adopts", [False, True])
def test_a_rebase_killed_while_writing_the_overlay_is_finished_by_the_next_writer(world, tmp_path, adopts):
    """Half-written, the overlay looks tampered. `check` (a reader) must not send the user to `zpatch
    lock` (which would bless the half-written state) or to restoring a patch by hand (an attack found
    that hint when upstream adopts a patch, whose file the rebase removes). The next writer, whichever
    it is, first rolls the write back or forward (the front door), then refuses while the rebase is in
    progress (exit 10); --abort then leaves the overlay as it was, or as the finished rebase made it."""
    text = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n") if adopts else LOADER_PY
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + text}, "upstream inserts a line")
    before = overlay_snapshot(world)
    after = _rebased_copy(world, tmp_path)
    from zimage_patcher.overlay_write import area as _area
    hinted = False
    for kill_at in range(8, 80):
        if _cli(world, "rebase", "comfyui-gguf", "--onto", "main", kill_at=kill_at).returncode == 0:
            break
        if not (_area(world.overlay) / "journal.json").exists():
            _cli(world, "rebase", "--abort")
            continue
        r = _cli(world, "check", "--json")     # reads on, but sends the user to the rebase, not to `lock`
        res = json.loads(r.stdout)
        hints = [p["hint"] for p in res["problems"]]
        assert res["rebase_in_progress"] is True
        assert not any("zpatch lock" in (h or "") or "restore" in (h or "") for h in hints), (kill_at, hints)
        hinted |= any("zpatch rebase --continue, or --abort" in (h or "") for h in hints)
        for args in (("lock",), ("rebase", "comfyui-gguf", "--onto", "main")):
            r = _cli(world, *args)
            assert r.returncode == 10 and "in progress" in r.stderr, (kill_at, args, r.stderr)
            assert not (_area(world.overlay) / "journal.json").exists()
            assert overlay_snapshot(world) in (before, after), kill_at     # never a mix
        r = _cli(world, "rebase", "--abort")
        assert r.returncode == 0 and overlay_snapshot(world) in (before, after), (kill_at, r.stderr)
        _restore(world, before)
    assert hinted, "no kill left a half-written overlay"


@pytest.mark.slow
def test_killed_recoveries_leave_no_temp_file_in_the_overlay(world, tmp_path):
    commit(world.gguf_up, {"loader.py": "# a new first line\n" + LOADER_PY}, "upstream inserts a line")
    before = overlay_snapshot(world)
    want = _rebased_copy(world, tmp_path)
    for kill_at in range(1, 60):
        if _cli(world, "rebase", "comfyui-gguf", "--onto", "main", kill_at=kill_at).returncode == 0:
            break
        for m in (1, 2):
            _cli(world, "rebase", "--abort", kill_at=m)
        r = _cli(world, "rebase", "--abort")
        assert r.returncode in (0, 2), r.stderr
        now = overlay_snapshot(world)
        assert not [k for k in now if ".zpatch-tmp" in k or k.endswith(".tmp")], (kill_at, sorted(now))
        assert now in (before, want), kill_at       # after the commit point the rebase is complete
        _restore(world, before)
    assert kill_at > 15


def _restore(world, snap: dict) -> None:
    for p in [p for p in world.overlay.rglob("*") if p.is_file() and ".git" not in p.parts
              and ".zpatch" not in p.parts]:
        if p.relative_to(world.overlay).as_posix() not in snap:
            p.unlink()
    for rel, data in snap.items():
        (world.overlay / rel).write_bytes(data)


def test_a_half_made_scratch_clone_is_made_again(zpatch, world):
    from zimage_patcher.overlay_write import area as _area
    _conflicting_upstream(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    # as a kill inside `git clone` leaves it: a partial clone, and no conflict saved in the state yet
    work = _area(world.overlay) / "rebase" / "work"
    import shutil
    shutil.rmtree(work)
    (work.with_name("work.partial") / ".git").mkdir(parents=True)
    state = _area(world.overlay) / "rebase" / "op.json"
    op = json.loads(state.read_text())
    del op["current"]
    state.write_text(json.dumps(op))
    r = zpatch("rebase", "--continue", expect=5)                     # meets the conflict again
    assert "CONFLICT in 0002-loader-tokenizer.patch" in r.stdout
    assert "<<<<<<<" in (work / "loader.py").read_text() and not work.with_name("work.partial").exists()
    zpatch("rebase", "--skip")


def test_a_damaged_state_can_always_be_aborted_and_names_missing_commits(zpatch, world):
    from zimage_patcher.overlay_write import area as _area
    OP_NAME = "op.json"
    _conflicting_upstream(world)
    before = overlay_snapshot(world)
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    state = _area(world.overlay) / "rebase" / OP_NAME
    op = json.loads(state.read_text())
    op["tip"] = "2" * 40
    state.write_text(json.dumps(op))
    r = zpatch("rebase", "--skip", expect=4)
    assert "names commits that do not exist" in error_line(r)
    state.write_text("{")
    r = zpatch("rebase", "--continue", expect=4)
    assert "is damaged" in error_line(r) and "--abort" in r.output
    zpatch("rebase", "--abort")
    assert not state.exists() and overlay_snapshot(world) == before


def test_a_rebase_stopped_at_a_conflict_says_so_in_its_json(zpatch, world):
    """Found by a newcomer: exit 5 with `ok: true`, no exit code and `counts: {}`."""
    _conflicting_upstream(world)
    r = zpatch("rebase", "comfyui-gguf", "--onto", "main", "--json", expect=5)
    res = json.loads(r.stdout)
    assert res["ok"] is False and res["exit_code"] == 5 and res["stopped"] is True
    assert res["counts"].get("conflict") == 1 and sum(res["counts"].values()) == len(res["patches"])
    zpatch("rebase", "--abort")
    assert zpatch.json("check", "--no-apply")["exit_code"] == 0
