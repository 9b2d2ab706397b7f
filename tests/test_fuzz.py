"""A seeded fuzz of every parser of untrusted input (lock, series, patch, record, journal) and of
the CLI over mutated overlays: the only failure allowed is a ZpatchError, i.e. a one-line message
and a documented exit code, never a traceback (exit 9)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from zimage_patcher import lock, operation, patchfile, record, series
from zimage_patcher.errors import Exit, ZpatchError

SEED = 20261126
NASTY = [b"\x00", b"\xff", b"\x1b[2J", b"\r", b"\n", b'"', b"\\", b"[", b"]", b"=", b"..", b"/", b"\t",
         b"\xc3", b"\xe2\x80\xae", b"-", b"+", b"@@ -1 +1 @@", b"diff --git a/x b/x", b"mode 120000", b"#"]


def mutants(seed_bytes: bytes, n: int, rng: random.Random):
    for _ in range(n):
        data = bytearray(seed_bytes)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.choice(NASTY)
            elif op == 2:
                del data[pos:pos + rng.randint(1, 40)]
            elif op == 3:
                chunk = data[pos:pos + rng.randint(1, 80)]
                data[pos:pos] = chunk * rng.randint(1, 3)
            else:
                data = data[:pos]
        yield bytes(data)


def _only_zpatch_errors(fn, cases):
    survived = failed = 0
    for case in cases:
        try:
            fn(case)
            survived += 1
        except ZpatchError as e:
            assert e.exit_code in (Exit.BAD_OVERLAY, Exit.BAD_CHECKOUT), e.message
            assert "\n" not in e.message, e.message      # one line, whatever the input held
            failed += 1
    assert survived + failed == len(cases)
    return survived, failed


@pytest.fixture
def overlay_files(world):
    ov = world.overlay
    return {"lock": (ov / "upstream.lock").read_bytes(),
            "series": (ov / "patches/comfyui-gguf/series").read_bytes(),
            "patch": next((ov / "patches/comfyui-gguf").glob("0003-*.patch")).read_bytes()}


def test_fuzz_lock_parser(overlay_files, tmp_path):
    path = tmp_path / "upstream.lock"
    cases = list(mutants(overlay_files["lock"], 800, random.Random(SEED)))

    def parse(data):
        path.write_bytes(data)
        lk = lock.parse(path)
        lock.parse_text(path, lock.dumps(lk))     # what parses must also write back readably
    _only_zpatch_errors(parse, cases)


def test_fuzz_series_parser(overlay_files, tmp_path):
    path = tmp_path / "series"
    cases = list(mutants(overlay_files["series"], 800, random.Random(SEED + 1)))

    def parse(data):
        path.write_bytes(data)
        series.parse(path)
    _only_zpatch_errors(parse, cases)


def test_fuzz_patch_parser(overlay_files):
    cases = list(mutants(overlay_files["patch"], 1500, random.Random(SEED + 2)))

    def parse(data):
        p = patchfile.parse("fuzz.patch", data)
        for f in p.files:     # whatever parses names only safe relative paths
            assert not f.startswith("/") and ".." not in f.split("/") and ".git" not in f.lower().split("/")
    _only_zpatch_errors(parse, cases)


def test_fuzz_record_and_journal(world, tmp_path):
    rec = record.Record({"comfyui": record.UpstreamRecord("a" * 40, [record.PatchRef("0001-x.patch", "b" * 64)],
                                                          {"comfy/sd.py": "c" * 40, "new.py": None})},
                        record.NodeRecord("custom_nodes/N", {"__init__.py": "d" * 64}, ["custom_nodes/N"]))
    rng = random.Random(SEED + 3)
    _only_zpatch_errors(lambda d: record.parse(tmp_path / "record.json", d),
                        list(mutants(rec.to_bytes(), 800, rng)))
    journal = json.dumps({"version": 1, "op": "apply", "pid": 1, "record_after": None, "dirs": ["a"],
                          "changes": [{"root": ".", "store": ".", "path": "comfy/sd.py", "before": "c" * 40,
                                       "after": None, "executable": False, "prune": True}]}).encode()
    zdir = tmp_path / "z"
    zdir.mkdir()

    def pend(data):
        (zdir / operation.JOURNAL_NAME).write_bytes(data)
        operation.pending(zdir / operation.JOURNAL_NAME)
    _only_zpatch_errors(pend, list(mutants(journal, 800, rng)))
    overlay_journal = json.dumps({"version": 2, "op": "rebase", "pid": 1, "commit_after": "e" * 64, "dirs": [],
                                  "changes": [{"root": ".", "store": None, "path": "patches/x/0001-x.patch",
                                               "before": "c" * 40, "after": "d" * 40, "executable": False,
                                               "prune": False}]}).encode()
    _only_zpatch_errors(pend, list(mutants(overlay_journal, 500, rng)))


def test_fuzz_rebase_state(world, zpatch, tmp_path):
    """A rebase stopped at a conflict, its op.json mutated: --abort, --continue and check answer with
    a documented code (a damaged state is named, with the way out), never a traceback."""
    from testing.fixtures import LOADER_PY, commit, replace_line
    from zimage_patcher import overlay_write
    commit(world.gguf_up, {"loader.py": replace_line(LOADER_PY, "loader line 20\n", "loader line 20 UPSTREAM\n")},
           "upstream edits the patched line")
    files = {f: f.read_bytes() for f in world.overlay.rglob("*") if f.is_file() and ".git" not in f.parts}
    zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    state = overlay_write.state_path(world.overlay)
    original = state.read_bytes()
    rng = random.Random(SEED + 5)
    codes = {}
    for data in mutants(original, 120, rng):
        state.write_bytes(data)
        for args in (("rebase", "--continue"), ("rebase", "--skip"), ("check", "--no-apply")):   # check only warns
            r = zpatch(*args, expect=None)
            assert r.exit_code in ((0,) if args[0] == "check" else (0, 1, 2, 3, 4, 5)), (args, r.exit_code, r.output)
            codes[r.exit_code] = codes.get(r.exit_code, 0) + 1
            if args[0] == "rebase" and r.exit_code == 0:
                break                         # a harmless mutant finished the rebase: start again
        if not state.exists():                # the mutant let the rebase finish: start it again
            for f, data in files.items():
                f.write_bytes(data)
            zpatch("rebase", "comfyui-gguf", "--onto", "main", expect=5)
    assert 4 in codes, codes                  # damaged states were met, and named
    zpatch("rebase", "--abort", expect=None)


def test_fuzz_cli_over_mutated_overlays(world, zpatch, tmp_path):
    """Mutated lock / series / patch files through `check` and `apply`: documented codes only."""
    co = world.clone_checkout(tmp_path / "ComfyUI")
    rng = random.Random(SEED + 4)
    targets = [world.overlay / "upstream.lock", world.overlay / "patches/comfyui-gguf/series",
               next((world.overlay / "patches/comfyui-gguf").glob("0002-*.patch"))]
    originals = {p: p.read_bytes() for p in targets}
    codes = {}
    for i in range(150):
        victim = targets[i % 3]
        victim.write_bytes(next(mutants(originals[victim], 1, rng)))
        if victim.name != "upstream.lock":
            try:
                world.relock()            # past the hash check, into the parsers and git
            except (OSError, UnicodeDecodeError):
                pass                      # the fixture's writer cannot read it: zpatch still must
        for cmd in (("check", "--no-apply"), ("apply", co)):
            r = zpatch(*cmd, expect=None)
            assert r.exit_code in (0, 1, 3, 4, 5), (i, cmd, r.output)
            assert "Traceback" not in r.output
            codes[r.exit_code] = codes.get(r.exit_code, 0) + 1
        zpatch("unapply", co, expect=None)
        for p, data in originals.items():
            p.write_bytes(data)
        world.relock()
    assert codes.get(3) and codes.get(0), codes
    print("exit codes seen:", codes)


def test_fuzz_probes():
    """Probe lines and the upstream sources a `defines` probe parses are both untrusted."""
    from types import SimpleNamespace
    from zimage_patcher import probes
    rng = random.Random(SEED + 5)
    source = Path(probes.__file__).read_bytes()
    sources = list(mutants(source, 300, rng)) + [b"(" * 200_000, b"x = 1\x00", b"\xff\xfe", b"def f(:"]
    names = ["Probe.fires(repo)", "defines", "Probe.kind", "_binding", "ast"]
    answers = []

    def read(src):
        answers.append(probes.defines(src, rng.choice(names), where="fuzzed.py"))
    _only_zpatch_errors(read, sources)
    assert True in answers and False in answers        # the mutants still define some names, not all
    line = b"defines comfy/sd.py 'VAE.decode(vae_options)'"
    lines = list(mutants(line, 400, rng)) + list(mutants(b"grep loader.py '\"gemma3\"'", 400, rng))

    def parse(data):
        text = data.decode("utf-8", "replace")
        for p in probes.parse(SimpleNamespace(name="0001-x.patch", probes=[text])):
            assert p.kind in ("grep", "missing", "defines") and ".." not in p.path.split("/")
    _only_zpatch_errors(parse, lines)
