"""hunks.py against git: the same patches applied by `git apply --cached` and by hunks.apply_hunks to the
same files, over generated cases that move, break and duplicate the context (offsets, matches at the
beginning and the end, files without a last newline, lines that differ only in whitespace). Where
hunks.py applies a patch, git must apply it to the same bytes; where it does not, git must refuse too
(or the case is one it hands to git on purpose)."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from testing.fixtures import git
from zimage_patcher import git as zgit
from zimage_patcher import hunks

# few distinct lines, so that context repeats and a hunk can match in more than one place; some differ
# from others only in whitespace (apply.c hashes lines without it)
VOCAB = ["a\n", "b\n", "c\n", "a \n", "\tb\n", "x = 1\n", "\n", "def f():\n", "    return 2\n", "a  \n"]


def _text(rng: random.Random, n: int) -> str:
    lines = [rng.choice(VOCAB) for _ in range(n)]
    if lines and rng.random() < 0.25:
        lines[-1] = lines[-1].rstrip("\n") or "z"        # no newline at the end of the file
    return "".join(lines)


def _edit(rng: random.Random, text: str, ops: int) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(ops):
        at = rng.randrange(len(lines) + 1)
        op = rng.random()
        if op < 0.4 or not lines:
            lines.insert(at, rng.choice(VOCAB + ["new line\n", "other\n"]))
        elif op < 0.7 and at < len(lines):
            del lines[at]
        elif at < len(lines):
            lines[at] = rng.choice(VOCAB + ["changed\n"])
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if lines and rng.random() < 0.2:
        lines[-1] = lines[-1].rstrip("\n") or "y"
    return "".join(lines)


def _cases(seed: int, count: int):
    rng = random.Random(seed)
    for i in range(count):
        base = _text(rng, rng.randrange(0, 30))
        edited = _edit(rng, base, rng.randrange(1, 5))
        if edited == base:
            edited += "tail\n" if base.endswith("\n") or not base else "\ntail\n"
        roll = rng.random()
        target = base if roll < 0.3 else _edit(rng, base, rng.randrange(1, 4))   # moved, broken or both
        yield f"c{i:04d}.txt", base, edited, target


def _split(patch: bytes) -> dict[str, bytes]:
    """One mail per file diff of PATCH (its mail header kept), by path."""
    head, *diffs = patch.split(b"\ndiff --git ")
    out = {}
    for k, d in enumerate(diffs):
        d = b"diff --git " + d + (b"\n" if k + 1 < len(diffs) else b"")
        path = d.split(b"\n", 1)[0].split(b" b/", 1)[1].decode()
        out[path] = head + b"\n" + d
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_applies_what_git_applies_and_refuses_what_git_refuses(tmp_path, seed):
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    cases = list(_cases(seed, 400))
    for path, base, _e, _t in cases:
        (repo / path).write_text(base)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "base", cwd=repo)
    for path, _b, edited, _t in cases:
        (repo / path).write_text(edited)
    git("commit", "-q", "-a", "-m", "edited", cwd=repo)
    patches = _split(subprocess.run(["git", "format-patch", "--stdout", "--full-index", "-1", "HEAD"], cwd=repo,
                                    check=True, capture_output=True).stdout)
    for path, _b, _e, target in cases:
        (repo / path).write_text(target)
    git("commit", "-q", "-a", "-m", "target", cwd=repo)
    outcomes = {"applied": 0, "refused": 0, "moved": 0, "to git": 0}
    index = tmp_path / "index"
    env = {"GIT_INDEX_FILE": str(index)}
    subprocess.run(["git", "read-tree", "HEAD"], cwd=repo, env={**os.environ, **env}, check=True)
    for path, base, edited, target in cases:
        if path not in patches:
            continue
        (tmp_path / "p").write_bytes(patches[path])
        ok = subprocess.run(["git", "apply", "--cached", "--whitespace=nowarn", str(tmp_path / "p")], cwd=repo,
                            env={**os.environ, **env}, capture_output=True).returncode == 0
        diffs = hunks.parse(patches[path])
        assert diffs is not None and len(diffs) == 1, patches[path]
        ours = hunks.apply_hunks(target.encode(), diffs[0].hunks)
        if ok:
            theirs = subprocess.run(["git", "show", f":{path}"], cwd=repo, env={**os.environ, **env},
                                    capture_output=True, check=True).stdout
            if ours is None:          # handed to git on purpose: a line without its newline before the end
                assert any(h.post and not h.post[-1].endswith(b"\n") for h in diffs[0].hunks), (path, target)
                outcomes["to git"] += 1
                continue
            assert ours == theirs, (path, patches[path], target)
            outcomes["applied"] += 1
            outcomes["moved"] += target != base
        else:
            assert ours is None, (path, patches[path], target, ours)
            outcomes["refused"] += 1
    print(outcomes)
    assert min(outcomes["applied"], outcomes["refused"], outcomes["moved"]) > 20, outcomes
    assert outcomes["to git"] < 10, outcomes


@pytest.mark.parametrize("seed", [5, 6])
def test_line_authors_agree_with_git_blame(tmp_path, seed):
    """What status tells about a hand edit rests on line_authors: over generated files (repeated lines,
    no last newline) edited twice, the patch each line comes from is the commit git blame names."""
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    rng = random.Random(seed)
    cases = {f"c{i:03d}.txt": [_text(rng, rng.randrange(0, 25))] for i in range(120)}
    for step in range(3):
        for path, versions in cases.items():
            if step:
                versions.append(_edit(rng, versions[-1], rng.randrange(1, 4)))
            (repo / path).write_text(versions[-1])
        git("add", "-A", cwd=repo)
        git("commit", "-q", "--allow-empty", "-m", f"v{step}", cwd=repo)
    commits = git("rev-list", "--reverse", "HEAD", cwd=repo).split()
    patches = [_split(subprocess.run(["git", "format-patch", "--stdout", "--full-index", "-1", c], cwd=repo,
                                     check=True, capture_output=True).stdout) for c in commits[1:]]
    compared = 0
    for path, versions in cases.items():
        steps = []
        for k, found in enumerate(patches):
            diffs = hunks.parse(found[path]) if path in found else []
            if diffs is None:
                break                  # git's to apply (a line without its newline): not traced
            steps.append((commits[k + 1], diffs[0].hunks if diffs else []))
        else:
            traced = hunks.line_authors(versions[0].encode(), steps)
            if traced is None:
                continue
            assert traced[0] == versions[-1].encode()
            blame = subprocess.run(["git", "blame", "--porcelain", "HEAD", "--", path], cwd=repo, check=True,
                                   capture_output=True).stdout.decode()
            authors = [line.split()[0] for line in blame.splitlines() if len(line.split()) >= 3
                       and len(line.split()[0]) == 40 and line.split()[2].isdigit()]
            assert [a or commits[0] for a in traced[1]] == authors, (path, versions)
            compared += 1
    assert compared > 60, compared


def test_a_last_line_without_newline_matching_a_longer_line_is_left_to_git(tmp_path):
    """apply.c compares a hunk's bytes and each line's whitespace-blind hash: a last context line without
    its newline ("abc") then matches "abc\\n" in the middle of a file, and git joins it to the next
    line. hunks.py sees the match and hands that patch to git, which gives its own result."""
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    (repo / "f").write_text("1\n2\n3\nabc")
    git("add", "f", cwd=repo)
    git("commit", "-q", "-m", "base", cwd=repo)
    (repo / "f").write_text("1\n2\n3x\nabc")
    git("commit", "-q", "-a", "-m", "edit", cwd=repo)
    patch = subprocess.run(["git", "format-patch", "--stdout", "--full-index", "-1"], cwd=repo, check=True,
                           capture_output=True).stdout
    (tmp_path / "p").write_bytes(patch)
    git("checkout", "-q", "HEAD~1", cwd=repo)
    (repo / "f").write_text("1\n2\n3\nabc\nmore\n")
    git("commit", "-q", "-a", "-m", "target", cwd=repo)
    diffs = hunks.parse(patch)
    assert diffs and hunks.apply_hunks(b"1\n2\n3\nabc\nmore\n", diffs[0].hunks) is None
    idx = zgit.ScratchIndex(repo, str(tmp_path / "scratch"), read_only=True)
    idx.read_tree("HEAD")
    assert idx.apply([tmp_path / "p"]).ok
    (entry,) = idx.entries(["f"]).values()
    assert zgit.read_blob(repo, entry[1]) is None      # written to the scratch store, not the repository
    got = subprocess.run(["git", "cat-file", "blob", entry[1]], cwd=repo, env={**os.environ, **idx.env},
                         check=True, capture_output=True).stdout
    assert got == b"1\n2\n3x\nabcmore\n"          # what git does


def test_a_series_on_a_scratch_store_is_applied_without_git_apply_and_matches_git_am(world, tmp_path, monkeypatch):
    """The fixture's ComfyUI-GGUF series (changes, a new file) committed on the pin in a scratch store:
    no `git apply` process, and the trees are the ones `git am` makes in a clone."""
    patches = sorted((world.overlay / "patches/comfyui-gguf").glob("*.patch"))
    ran = []
    real = zgit.run
    monkeypatch.setattr(zgit, "run", lambda args, *a, **kw: ran.append(zgit._subcommand(args)) or real(args, *a, **kw))
    idx = zgit.ScratchIndex(world.gguf_up, str(tmp_path / "scratch"), read_only=True)
    commits = idx.commit_patches(world.gguf_pin, patches)
    assert "apply" not in ran and ran.count("cat-file") == 1, ran
    clone = tmp_path / "clone"
    git("clone", "-q", str(world.gguf_up), str(clone))
    git("checkout", "-q", "--detach", world.gguf_pin, cwd=clone)
    git("am", "-q", *map(str, patches), cwd=clone)
    theirs = git("log", "--format=%T", f"{world.gguf_pin}..HEAD", cwd=clone).split()[::-1]
    env = {**os.environ, **idx.env}
    ours = [subprocess.run(["git", "rev-parse", f"{c}^{{tree}}"], cwd=world.gguf_up, env=env, check=True,
                           capture_output=True, text=True).stdout.strip() for c in commits]
    assert ours == theirs


# ---------------------------------------------------------------- what an attack on hunks.py found
# Each case: a repository holding FILES at one commit, a patch, and an index config; git's
# `apply --cached` and ScratchIndex.apply on a scratch store must leave the same entries, or both refuse.

def _mail(body: bytes) -> bytes:
    return b"From 0 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n---\n" + body + b"-- \n2.39.5\n\n"


def _diff(path: str, hunk: bytes, *, old="1" * 40, new="2" * 40) -> bytes:
    """A modification of PATH whose index line names blobs OLD..NEW (by default made-up ids: as after
    upstream moved, where no postimage check applies)."""
    p = path.encode()
    return (b"diff --git a/%s b/%s\n" % (p, p) + b"index %s..%s 100644\n" % (old.encode(), new.encode())
            + b"--- a/%s\n+++ b/%s\n" % (p, p) + hunk)


def _new(path: bytes, content: bytes, index_mode=b"") -> bytes:
    oid = zgit.hash_object_bytes(content).encode()
    lines = content.splitlines(keepends=True)
    hunk = b"@@ -0,0 +1,%d @@\n" % len(lines) + b"".join(b"+" + x for x in lines)
    return (b"diff --git a/%s b/%s\nnew file mode 100644\nindex %s..%s%s\n--- /dev/null\n+++ b/%s\n"
            % (path, path, b"0" * 40, oid, b" " + index_mode if index_mode else b"", path) + hunk)


def _entries(repo, env) -> dict:
    out = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=repo, env=env, check=True, capture_output=True).stdout
    found = {}
    for e in out.split(b"\0"):
        if e:
            meta, path = e.split(b"\t", 1)
            mode, oid, _stage = meta.split()
            data = subprocess.run(["git", "cat-file", "blob", oid], cwd=repo, env=env, capture_output=True).stdout
            found[path] = (mode, data)
    return found


def _both(tmp_path, files: dict[str, bytes], patch: bytes, config: dict | None = None):
    """(git's entries, ScratchIndex.apply's entries) after applying PATCH to FILES; False for a refusal."""
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    for k, v in (config or {}).items():
        git("config", k, v, cwd=repo)
    for path, data in files.items():
        (repo / path).write_bytes(data)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "base", cwd=repo)
    (tmp_path / "p").write_bytes(_mail(patch))
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "git-index")}
    subprocess.run(["git", "read-tree", "HEAD"], cwd=repo, env=env, check=True)
    theirs = subprocess.run(["git", "apply", "--cached", "--whitespace=nowarn", str(tmp_path / "p")], cwd=repo,
                            env=env, capture_output=True).returncode == 0 and _entries(repo, env)
    idx = zgit.ScratchIndex(repo, str(tmp_path / "scratch"), read_only=True)
    idx.read_tree("HEAD")
    ours = idx.apply([tmp_path / "p"]).ok and _entries(repo, {**os.environ, **idx.env})
    return theirs, ours


CASES = {
    # git's isspace leaves out vertical tab and form feed: "foo" (no newline) does not match "foo\v\n"
    "vertical tab": ({"f": b"a\nfoo\v\n"}, _diff("f", b"@@ -1,2 +1,2 @@\n-a\n+b\n foo\n\\ No newline at end of file\n")),
    # a short "\ " line after the counted lines: git takes it when over 12 bytes of the patch follow
    "short marker": ({"f": b"x\na\n"}, _diff("f", b"@@ -1,2 +1,2 @@\n x\n-a\n+b\n\\ \n")),
    # apply.c keeps line numbers in an int: 2**32 + 2 is line 2 there
    "huge line number": ({"f": b"s0\nctx\nA\nctx2\ns1\ns2\ns3\ns4\ns5\ns6\ns7\nctx\nA\nctx2\ns8\n"},
                         _diff("f", b"@@ -9,3 +4294967298,3 @@\n ctx\n-A\n+B\n ctx2\n")),
    # on a new file, the index line's mode is the old one: git takes "new file mode"
    "new file, mode on the index line": ({"f": b"x\n"}, _new(b"n", b"hi\n", index_mode=b"100755")),
    # names git refuses (core.protectNTFS is on by default)
    "git~1": ({"f": b"x\n"}, _new(b"git~1/x", b"hi\n")),
    ".git.": ({"f": b"x\n"}, _new(b"a/.git./b", b"hi\n")),
}


@pytest.mark.parametrize("case", CASES)
def test_what_the_attack_found_agrees_with_git(tmp_path, case):
    files, patch = CASES[case]
    theirs, ours = _both(tmp_path, files, patch)
    assert ours == theirs


def test_a_name_with_a_control_byte_is_left_to_git():
    """git stops a name at a NUL; an index entry holding one would make a tree git cannot read."""
    for name in (b"x\0y", b"x\x01y", b"a b", b"\xc3\xbc"):
        assert hunks.parse(_mail(_new(name, b"hi\n"))) is None, name
    assert hunks.parse(_mail(_new(b"plain-name_1.py", b"hi\n")))


@pytest.mark.parametrize("config", [{"apply.ignoreWhitespace": "change"}, {"apply.ignoreWhitespace": "bogus"},
                                    {"apply.whitespace": "bogus"}, {"apply.whitespace": "fix"}])
def test_the_users_apply_config_changes_neither_git_nor_this(tmp_path, config):
    """zpatch runs git apply with apply.whitespace and apply.ignoreWhitespace set on its command line, so
    the overlay's patches apply as hunks.py applies them, whatever a maintainer's config says."""
    base = {"f": b"a\nc  tx\nX\nctx2\nb\nc\nd\nc tx\nX\nctx2\n"}
    patch = _diff("f", b"@@ -2,3 +2,3 @@\n c tx\n-X\n+Y\n ctx2\n")
    _plain, ours = _both(tmp_path / "plain", base, patch)
    assert ours and ours[b"f"][1] == b"a\nc  tx\nX\nctx2\nb\nc\nd\nc tx\nY\nctx2\n"
    _theirs, ours_cfg = _both(tmp_path / "cfg", base, patch, config)
    assert ours_cfg == ours
    # and git as zpatch runs it, on the same index, agrees
    repo = tmp_path / "cfg" / "r"
    idx = zgit.ScratchIndex(repo, str(tmp_path / "git-run"), read_only=True)
    idx.read_tree("HEAD")
    assert idx.run(["apply", "--cached", "--whitespace=nowarn", str(tmp_path / "cfg" / "p")],
                   check=False).ok
    assert _entries(repo, {**os.environ, **idx.env}) == ours


def test_an_entry_with_a_flag_a_rewrite_would_drop_is_left_to_git(tmp_path):
    """A skip-worktree bit on an entry the patch does not touch: the index is git's to rewrite."""
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    (repo / "f").write_text("a\n")
    (repo / "g").write_text("g\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "base", cwd=repo)
    idx = zgit.ScratchIndex(repo, str(tmp_path / "scratch"), read_only=True)
    idx.read_tree("HEAD")
    idx.run(["update-index", "--skip-worktree", "g"])
    (tmp_path / "p").write_bytes(_mail(_diff("f", b"@@ -1 +1 @@\n-a\n+b\n", old=zgit.hash_object_bytes(b"a\n"),
                                             new=zgit.hash_object_bytes(b"b\n"))))
    assert not idx._apply_here([tmp_path / "p"])
    assert idx.apply([tmp_path / "p"]).ok
    flags = subprocess.run(["git", "ls-files", "-t"], cwd=repo, env={**os.environ, **idx.env}, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    assert "S g" in flags and "H f" in flags
