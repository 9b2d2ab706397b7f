"""Commits zpatch writes itself (git.commit_object, git.write_loose_object) are byte for byte the ones
`git commit-tree` writes, for every patch of this overlay and for authors and dates of every shape;
what git would change on the way (crud around a name, a date in another spelling, a message that is
not UTF-8) is left to git, and the result is still git's."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from testing.fixtures import git
from zimage_patcher import git as zgit

ROOT = Path(__file__).resolve().parents[1]
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    git("init", "-q", str(r))
    git("commit", "-q", "--allow-empty", "-m", "base", cwd=r)
    assert git("hash-object", "-t", "tree", "-w", "/dev/null", cwd=r) == EMPTY_TREE   # as an object, for commit-tree
    return r


def by_git(repo: Path, tree: str, parent: str, info: dict, msg: str) -> str:
    env = {"GIT_AUTHOR_NAME": info["author"], "GIT_AUTHOR_EMAIL": info["email"], "GIT_AUTHOR_DATE": info["date"],
           "GIT_COMMITTER_DATE": info["date"], "GIT_COMMITTER_NAME": zgit.COMMITTER[0],
           "GIT_COMMITTER_EMAIL": zgit.COMMITTER[1]}
    return zgit.run(["commit-tree", "--no-gpg-sign", tree, "-p", parent, "-F", "-"], cwd=repo, env=env,
                    input=msg).stdout.strip()


def by_zpatch(repo: Path, tree: str, parent: str, info: dict, msg: str) -> str | None:
    body = zgit.commit_object(tree, parent, info, msg)
    if body is None:
        return None
    oid = zgit.write_loose_object(str(repo / ".git" / "objects"), "commit", body)
    # git reads it back as the same object (a valid loose object: zlib, header, id)
    assert git("cat-file", "-t", oid, cwd=repo) == "commit"
    assert subprocess.run(["git", "cat-file", "commit", oid], cwd=repo, capture_output=True).stdout == body
    return oid


def test_every_patch_of_the_overlay_gives_git_s_own_commit(repo):
    parent = git("rev-parse", "HEAD", cwd=repo)
    patches = sorted(ROOT.glob("patches/*/*.patch"))
    assert len(patches) >= 5
    for p in patches:
        info, msg = zgit.patch_message(repo, p)
        mine = by_zpatch(repo, EMPTY_TREE, parent, info, msg)
        assert mine is not None, f"{p.name}: left to git ({info.get('author')!r}, {info.get('date')!r})"
        assert mine == by_git(repo, EMPTY_TREE, parent, info, msg), p.name
        parent = mine


def test_dates_of_every_month_zone_and_hour_and_non_ascii_names(repo):
    parent = git("rev-parse", "HEAD", cwd=repo)
    rnd = random.Random(7)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    for i in range(40):
        sign = rnd.choice("+-")
        tz = f"{sign}{rnd.randrange(0, 15):02d}{rnd.choice((0, 30, 45)):02d}"
        if tz == "-0000":
            tz = "+0000"
        date = (f"{rnd.choice(days) + ', ' if i % 3 else ''}{rnd.randrange(1, 29)} {rnd.choice(zgit._MONTHS)} "
                f"{rnd.randrange(1971, 2100)} {rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d} {tz}")
        info = {"author": rnd.choice(["Ann Example", "Jörg Müller", "山田 太郎", "O'Brien Pat"]),
                "email": rnd.choice(["ann@example.org", "jörg@example.de", "x+y@z.io"]), "date": date}
        msg = rnd.choice(["Subject\n", "Subject\n\nBody line\n\nSigned-off-by: A <a@b>\n", "Ünïcode ✓\n", ""])
        mine = by_zpatch(repo, EMPTY_TREE, parent, info, msg)
        assert mine is not None, info
        assert mine == by_git(repo, EMPTY_TREE, parent, info, msg), (info, msg)


@pytest.mark.parametrize("info, msg", [
    ({"author": "J. R. R. Tolkien.", "email": "jrr@example.org", "date": "Thu, 4 Dec 2025 10:00:00 +0100"}, "x\n"),
    ({"author": " Ann", "email": "ann@example.org", "date": "Thu, 4 Dec 2025 10:00:00 +0100"}, "x\n"),
    ({"author": "Ann", "email": "<ann@example.org>", "date": "Thu, 4 Dec 2025 10:00:00 +0100"}, "x\n"),
    ({"author": "Ann", "email": "ann@example.org", "date": "Thu, 4 Dec 2025 10:00:00 -0000"}, "x\n"),
    ({"author": "Ann", "email": "ann@example.org", "date": "2025-12-04 10:00:00 +0100"}, "x\n"),
    ({"author": "Ann", "email": "ann@example.org", "date": "1764838800 +0100"}, "x\n"),
    ({"author": "Ann", "email": "ann@example.org", "date": "Thu, 4 Dec 2025 10:00:00 +0100"},
     b"caf\xe9 in Latin-1\n".decode("utf-8", "surrogateescape")),
], ids=["crud-at-the-end", "space-first", "brackets", "minus-zero", "iso-date", "raw-date", "not-utf8"])
def test_what_git_would_change_is_left_to_git_and_the_commit_is_still_git_s(repo, tmp_path, info, msg):
    assert zgit.commit_object(EMPTY_TREE, git("rev-parse", "HEAD", cwd=repo), info, msg) is None
    # through ScratchIndex.commit_tree in a scratch store, as rebase makes its commits
    patch = tmp_path / "0001-x.patch"
    patch.write_bytes(b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
                      + f"From: {info['author']} <{info['email']}>\nDate: {info['date']}\n".encode()
                      + b"Subject: [PATCH] " + msg.encode("utf-8", "surrogateescape").split(b"\n")[0]
                      + b"\n\n---\n")
    idx = zgit.ScratchIndex(repo, str(tmp_path / "scratch"), read_only=True)
    parent = git("rev-parse", "HEAD", cwd=repo)
    got = idx.commit_tree(EMPTY_TREE, parent, patch)
    pinfo, pmsg = zgit.patch_message(repo, patch)
    assert got == idx.run(["commit-tree", "--no-gpg-sign", EMPTY_TREE, "-p", parent, "-F", "-"], input=pmsg,
                          env={"GIT_AUTHOR_NAME": pinfo["author"], "GIT_AUTHOR_EMAIL": pinfo["email"],
                               "GIT_AUTHOR_DATE": pinfo["date"], "GIT_COMMITTER_DATE": pinfo["date"],
                               **zgit._IDENTITY}).stdout.strip()
