"""The scratch indexes zpatch writes and reads itself (git.ScratchIndex.start, entries, write_tree).
apply and unapply start from HEAD's entries of the touched paths, the folders above them and their
.gitattributes: git must read that index as its own, entry for entry, the attributes in it must shape
the bytes apply writes as `git checkout` would, and a file or submodule where a patch needs a folder
must still clash. Trees hashed here must be git's; a split index is left to git; and file names are
never read as pathspec magic or globs."""
from __future__ import annotations

import os
from pathlib import Path

from testing.fixtures import commit, git
from zimage_patcher import git as zgit


def _entries_by_git(repo: Path, index: Path) -> list[str]:
    return zgit.run(["ls-files", "-s", "-z"], cwd=repo, env={"GIT_INDEX_FILE": str(index)}).stdout.split("\0")


def test_the_index_written_here_is_the_one_git_writes(tmp_path):
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    names = ["a.py", "a/b.py", "a-b.py", "a.b/c.py", "deep/er/still/x.txt", "Z.py", "é.py", "x" * 200]
    commit(repo, {n: f"{n}\n" for n in names}, "files")
    (repo / "run.sh").write_text("echo\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("a.py", repo / "link")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "exec and link", cwd=repo)
    paths = [*names, "run.sh", "link", "absent.py"]
    head = zgit.tree_entries(repo, "HEAD", paths)
    assert {m for m, _ in head.values()} == {"100644", "100755", "120000"}

    ours = zgit.ScratchIndex(repo, str(tmp_path), index="ours")
    ours.start("HEAD", head)
    assert ours._own
    theirs = tmp_path / "theirs"
    zgit.run(["update-index", "--add", "--index-info"], cwd=repo, env={"GIT_INDEX_FILE": str(theirs)},
             input="".join(f"{m} {b}\t{p}\n" for p, (m, b) in head.items()))
    assert _entries_by_git(repo, tmp_path / "ours") == _entries_by_git(repo, theirs)
    # read back as git lists it, and git's own index read the same way
    listed = {p: (m, b, 0) for p, (m, b) in head.items()}
    assert ours.entries(paths) == listed
    assert {p: (m, b, s) for p, m, b, s in zgit._read_index(str(theirs))} == listed
    # and git takes it as the tree it stands for
    tree = zgit.run(["write-tree"], cwd=repo, env=ours.env).stdout.strip()
    assert tree == zgit.run(["write-tree"], cwd=repo, env={"GIT_INDEX_FILE": str(theirs)}).stdout.strip()


def test_what_this_writer_does_not_know_goes_to_git(tmp_path):
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    commit(repo, {"d/f.py": "x\n"}, "one")
    idx = zgit.ScratchIndex(repo, str(tmp_path))
    idx.start("HEAD", zgit.tree_entries(repo, "HEAD", ["d"]))       # a folder: read-tree, as before
    assert not idx._own and idx.entries(["d/f.py"])["d/f.py"][0] == "100644"
    assert zgit._index_bytes({"f": ("100644", "ab" * 32)}) is None         # a SHA-256 id
    assert zgit._read_index(str(tmp_path / "no-such-index")) is None


def test_attributes_over_a_patched_file_shape_what_apply_writes(world, zpatch, tmp_path):
    """comfy/.gitattributes asks CRLF for sd.py: apply writes the patched file with CRLF, byte for byte
    what git checks out for the patched blob, and unapply puts back what git checked out at the pin.
    The attributes come from the index, as in a checkout: with the file gone from the work tree they
    still hold."""
    world.comfy_pin = commit(world.comfy_up, {"comfy/.gitattributes": "sd.py eol=crlf\n"}, "attributes")
    world.build_overlay()
    co = world.clone_checkout(tmp_path / "C")
    sd = co / "comfy/sd.py"
    pristine = sd.read_bytes()
    assert pristine.count(b"\r\n") == 40
    attributes = (co / "comfy/.gitattributes").read_bytes()
    (co / "comfy/.gitattributes").unlink()
    zpatch("apply", co)
    (co / "comfy/.gitattributes").write_bytes(attributes)
    patched = sd.read_bytes()
    assert b"line 10 PATCHED\r\n" in patched and patched.count(b"\r\n") == 40
    # what git itself makes of the patched blob in that folder
    twin = tmp_path / "twin"
    git("clone", "-q", str(world.comfy_up), str(twin))
    git("checkout", "-q", "--detach", world.comfy_pin, cwd=twin)
    git("apply", str(next((world.overlay / "patches/comfyui").glob("0001-*.patch"))), cwd=twin)
    assert (twin / "comfy/sd.py").read_bytes() == patched
    assert zpatch.json("status", co)["clean"] is True
    zpatch("unapply", co)
    assert sd.read_bytes() == pristine


def test_trees_written_here_are_the_ones_git_writes(tmp_path):
    """ScratchIndex.write_tree in a scratch store: the same tree ids as `git write-tree`, for names whose
    byte order and git's folder order differ, links, executables, gitlinks and an empty index."""
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    names = ["a", "a.b", "a-b/x", "ab/c/d", "a0", "b/a", "b.c/y", "é/ü.py", "sp ace/q'uote", "Z"]
    commit(repo, {n if n != "a" else "a/in": f"{n}\n" for n in names}, "files")
    (repo / "run.sh").write_text("echo\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("a.b", repo / "link")
    git("add", "-A", cwd=repo)
    git("update-index", "--add", "--cacheinfo", f"160000,{git('rev-parse', 'HEAD', cwd=repo)},gitlink", cwd=repo)
    git("commit", "-q", "-m", "more", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    idx = zgit.ScratchIndex(repo, str(tmp_path / "scratch"), read_only=True)
    for rev, edit in ((head, None), (f"{head}~1", "a/in"), (head, "b/a")):
        idx.read_tree(rev)
        if edit:        # a changed blob deep in the tree, as a patch makes it
            blob = zgit.run(["hash-object", "-w", "--stdin"], cwd=repo, env=idx.env, input="changed\n").stdout.strip()
            idx.set_blobs({edit: ("100644", blob)})
        written = len(idx._trees)
        ours = idx.write_tree(sha1=True)
        assert len(idx._trees) > written or not edit       # hashed here, not by git
        assert ours == idx.run(["write-tree", "--missing-ok"]).stdout.strip()
        assert zgit.run(["cat-file", "-t", ours], cwd=repo, env=idx.env).stdout.strip() == "tree"
    zgit.run(["read-tree", "--empty"], cwd=repo, env=idx.env)
    assert idx.write_tree(sha1=True) == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def test_a_split_index_is_read_by_git_never_taken_for_an_empty_one(world, zpatch, tmp_path, monkeypatch):
    """core.splitIndex: git rewrites a scratch index as a link to a shared file. Read here, it would look
    empty (apply would delete every patched file, write_tree would give the empty tree)."""
    with open(world.env["GIT_CONFIG_GLOBAL"], "a") as f:
        f.write("[core]\n\tsplitIndex = true\n")
    co = world.clone_checkout(tmp_path / "C")
    pristine = (co / "comfy/sd.py").read_bytes()
    zpatch("apply", co)
    assert b"line 10 PATCHED" in (co / "comfy/sd.py").read_bytes()
    assert zpatch.json("status", co)["clean"] is True
    zpatch("unapply", co)
    assert (co / "comfy/sd.py").read_bytes() == pristine
    idx = zgit.ScratchIndex(co, str(tmp_path / "scratch"), read_only=True)
    idx.read_tree("HEAD")
    zgit.run(["update-index", "--split-index"], cwd=co, env=idx.env)
    assert zgit._read_index(idx.env["GIT_INDEX_FILE"]) is None
    assert idx.write_tree(sha1=True) == git("rev-parse", "HEAD^{tree}", cwd=co)


def test_a_file_or_submodule_where_a_patch_needs_a_folder_still_clashes(tmp_path):
    """HEAD has a file `a` and a submodule `sub`; patches that create a/b and sub/x.py fail in the scratch
    index as in a full one (the folders above a touched path are in it too)."""
    repo = tmp_path / "r"
    git("init", "-q", str(repo))
    commit(repo, {"a": "file\n", "keep/k.py": "k\n"}, "files")
    git("update-index", "--add", "--cacheinfo", f"160000,{git('rev-parse', 'HEAD', cwd=repo)},sub", cwd=repo)
    git("commit", "-q", "-m", "submodule", cwd=repo)
    from zimage_patcher.apply import scratch_paths
    (tmp_path / "full").mkdir()
    (tmp_path / "own").mkdir()
    for new in ("a/b", "sub/x.py"):
        patch = tmp_path / "new.patch"
        patch.write_text(f"diff --git a/{new} b/{new}\nnew file mode 100644\n--- /dev/null\n+++ b/{new}\n@@ -0,0 +1 @@\n+x\n")
        full = zgit.ScratchIndex(repo, str(tmp_path / "full"))
        full.read_tree("HEAD")
        assert not full.apply([patch]).ok
        head = zgit.tree_entries(repo, "HEAD", scratch_paths([new]))
        idx = zgit.ScratchIndex(repo, str(tmp_path / "own"))
        idx.start("HEAD", {p: e for p, e in head.items() if e[0] != "040000"})
        assert idx._own and not idx.apply([patch]).ok, new


def test_file_names_are_never_read_as_pathspec_magic_or_globs(world, zpatch, tmp_path, monkeypatch):
    """A file called ":x.py" is not the magic ":" prefix, and "[ab].py" does not match a.py: zpatch runs
    git with literal pathspecs, whatever the user's environment asks (GIT_GLOB_PATHSPECS, say)."""
    monkeypatch.setenv("GIT_GLOB_PATHSPECS", "1")
    monkeypatch.setenv("GIT_ICASE_PATHSPECS", "1")
    world.comfy_pin = commit(world.comfy_up, {":x.py": "colon\n", "a.py": "a\n", "[ab].py": "glob\n"}, "odd names")
    world.build_overlay(comfy_edits=[("odd names", {":x.py": "colon PATCHED\n", "[ab].py": "glob PATCHED\n"})])
    co = world.clone_checkout(tmp_path / "C")
    assert zgit.tree_entries(co, "HEAD", [":x.py", "[ab].py"]).keys() == {":x.py", "[ab].py"}
    (co / "a.py").write_text("a, edited by the user\n")
    assert zgit.changed_paths(co, ["[ab].py"]) == {}           # a.py is not "[ab].py"
    zpatch("apply", co)
    assert (co / ":x.py").read_text() == "colon PATCHED\n" and (co / "[ab].py").read_text() == "glob PATCHED\n"
    comfy = zpatch.json("status", co, expect=1)["upstreams"][0]      # exit 1: the user's a.py, and only it
    assert [c["path"] for c in comfy["foreign_changes"]] == ["a.py"]
    assert [p["state"] for p in comfy["patches"]] == ["applied"] and comfy["patches"][0]["edited"] == []
    zpatch("unapply", co)
    assert (co / ":x.py").read_text() == "colon\n" and (co / "a.py").read_text() == "a, edited by the user\n"
