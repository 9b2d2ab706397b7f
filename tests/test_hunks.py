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
    monkeypatch.setattr(zgit, "run", lambda args, *a, **kw: ran.append(args[0]) or real(args, *a, **kw))
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
