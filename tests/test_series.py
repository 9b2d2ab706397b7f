"""series.rewrite keeps what the user wrote in a series; patchfile.mode_changes finds exec bits."""
from __future__ import annotations

import pytest

from zimage_patcher import patchfile, series

OLD = (b"# Patches for ComfyUI, applied in this order.\n"
       b"\n"
       b"# gemma3 support: drop once upstream merges #123\n"
       b"0001-gemma3.patch -p1\n"
       b"0002-tokenizer.patch  # see issue 45\n"
       b"\n"
       b"# external tokenizer\n"
       b"# (two lines of comment)\n"
       b"0003-external.patch\n"
       b"\n"
       b"# end of series\n")
NAMES = ["0001-gemma3.patch", "0002-tokenizer.patch", "0003-external.patch"]


def names_of(data: bytes, tmp_path) -> list[str]:
    p = tmp_path / "series"
    p.write_bytes(data)
    return series.parse(p)


@pytest.mark.parametrize("old", [
    OLD,
    b"a.patch\nb.patch\n",
    b"a.patch\nb.patch",                                   # no trailing newline
    b"# only a comment, no newline",
    b"",
    b"\n\n# x\n\n",
    b"a.patch\r\n# note\r\nb.patch -p1 # why\r\n",          # CRLF, kept as written
    b"  # indented comment\n  a.patch   -p1   #  spaced \n\t\nb.patch\x0c\nc.patch\n",
    b"a.patch\n\xc3\xa9t\xc3\xa9.patch  # \xe2\x80\x94 note\n",     # non-ASCII
])
def test_the_same_names_give_the_same_bytes(old, tmp_path):
    assert series.rewrite(old, names_of(old, tmp_path)) == old


def test_reorder_moves_each_entry_with_its_comments_and_keeps_the_rest(tmp_path):
    new = series.rewrite(OLD, ["0003-external.patch", "0001-gemma3.patch", "0002-tokenizer.patch"])
    assert new == (b"# Patches for ComfyUI, applied in this order.\n"
                   b"\n"
                   b"# external tokenizer\n"
                   b"# (two lines of comment)\n"
                   b"0003-external.patch\n"
                   b"# gemma3 support: drop once upstream merges #123\n"
                   b"0001-gemma3.patch -p1\n"
                   b"\n"
                   b"0002-tokenizer.patch  # see issue 45\n"
                   b"\n"
                   b"# end of series\n")
    assert names_of(new, tmp_path) == ["0003-external.patch", "0001-gemma3.patch", "0002-tokenizer.patch"]


def test_a_dropped_entry_takes_its_comments_and_nothing_else(tmp_path):
    new = series.rewrite(OLD, ["0002-tokenizer.patch", "0003-external.patch"])
    assert new == (b"# Patches for ComfyUI, applied in this order.\n"
                   b"\n"
                   b"0002-tokenizer.patch  # see issue 45\n"
                   b"\n"
                   b"# external tokenizer\n"
                   b"# (two lines of comment)\n"
                   b"0003-external.patch\n"
                   b"\n"
                   b"# end of series\n")
    assert series.rewrite(OLD, []) == (b"# Patches for ComfyUI, applied in this order.\n\n\n\n# end of series\n")


def test_new_entries_are_plain_lines_where_names_puts_them(tmp_path):
    new = series.rewrite(OLD, ["0001-gemma3.patch", "0002-new.patch", "0002-tokenizer.patch",
                               "0003-external.patch", "0004-last.patch"])
    assert new == (b"# Patches for ComfyUI, applied in this order.\n"
                   b"\n"
                   b"# gemma3 support: drop once upstream merges #123\n"
                   b"0001-gemma3.patch -p1\n"
                   b"0002-new.patch\n"
                   b"0002-tokenizer.patch  # see issue 45\n"
                   b"\n"
                   b"# external tokenizer\n"
                   b"# (two lines of comment)\n"
                   b"0003-external.patch\n"
                   b"0004-last.patch\n"
                   b"\n"
                   b"# end of series\n")
    # first in NAMES: before the first entry's block, the header staying on top
    assert series.rewrite(OLD, ["0000-first.patch", *NAMES]).startswith(
        b"# Patches for ComfyUI, applied in this order.\n\n0000-first.patch\n# gemma3 support")
    # a renamed patch (old name dropped, new one in its place) takes the old one's place
    renamed = series.rewrite(OLD, ["0001-gemma3.patch", "0002-tokenizer-v2.patch", "0003-external.patch"])
    assert b"0001-gemma3.patch -p1\n0002-tokenizer-v2.patch\n\n# external" in renamed
    # all old entries dropped: the new ones where the first entry was
    assert series.rewrite(b"# head\n\na.patch\n\n# tail\n", ["x.patch", "y.patch"]) == \
        b"# head\n\nx.patch\ny.patch\n\n# tail\n"
    # no entries at all: at the end
    assert series.rewrite(b"# head\n", ["x.patch"]) == b"# head\nx.patch\n"
    assert series.rewrite(b"", ["x.patch", "y.patch"]) == b"x.patch\ny.patch\n"


def test_a_header_comment_stays_when_the_entries_under_it_change():
    old = b"# zimage-patcher: comfyui-gguf\n# keep in upstream order\n\na.patch\nb.patch\n"
    assert series.rewrite(old, ["b.patch"]) == b"# zimage-patcher: comfyui-gguf\n# keep in upstream order\n\nb.patch\n"
    assert series.rewrite(old, ["c.patch", "b.patch", "a.patch"]) == \
        b"# zimage-patcher: comfyui-gguf\n# keep in upstream order\n\nc.patch\nb.patch\na.patch\n"


def test_output_is_lf_and_a_missing_final_newline_is_added_only_where_a_line_follows(tmp_path):
    old = b"a.patch\nb.patch"
    for names, want in [(["b.patch", "a.patch"], b"b.patch\na.patch\n"),
                        (["a.patch", "b.patch", "c.patch"], b"a.patch\nb.patch\nc.patch\n"),
                        (["a.patch"], b"a.patch\n"),
                        (["b.patch"], b"b.patch")]:
        new = series.rewrite(old, names)
        assert new == want, names
        assert b"\r" not in new
        assert names_of(new, tmp_path) == names
    assert series.rewrite(b"# note", ["a.patch"]) == b"# note\na.patch\n"


def test_rewrite_refuses_a_name_twice():
    with pytest.raises(ValueError):
        series.rewrite(b"a.patch\n", ["a.patch", "a.patch"])


# ---------------------------------------------------------------- patchfile.mode_changes

def _diff(header: str, name: str = "run.sh") -> bytes:
    return (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"Subject: [PATCH] x\n\nnew mode 100755 in the message is prose\n---\n"
            f"diff --git a/{name} b/{name}\n{header}").encode()


def test_mode_changes_from_a_real_format_patch(tmp_path):
    from testing.fixtures import git, make_repo
    repo = tmp_path / "r"
    base = make_repo(repo, {"run.sh": "echo hi\n", "plain.py": "x = 1\n"})
    (repo / "run.sh").chmod(0o755)
    (repo / "new.sh").write_text("echo new\n")
    (repo / "new.sh").chmod(0o755)
    (repo / "new.py").write_text("y = 2\n")
    (repo / "plain.py").write_text("x = 2\n")
    git("add", "-A", cwd=repo)
    git("-c", "user.name=T", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "modes", cwd=repo)
    data = git("format-patch", "--stdout", "--full-index", f"{base}..HEAD", cwd=repo).encode() + b"\n"
    assert sorted(patchfile.mode_changes(data)) == [("new.sh", "100755"), ("run.sh", "100755")]
    # the patch itself is one zpatch reads (parse accepts it; apply is what refuses the exec bit)
    assert "run.sh" in patchfile.parse("x.patch", data).files


@pytest.mark.parametrize("header, want", [
    ("old mode 100644\nnew mode 100755\n", [("run.sh", "100755")]),
    ("old mode 100755\nnew mode 100644\n", []),                      # back to plain: nothing to refuse
    ("new file mode 100755\nindex 0000000..e69de29\n", [("run.sh", "100755")]),
    ("new file mode 100644\nindex 0000000..e69de29\n", []),
    ("old mode 100644\nnew mode 100700\n", [("run.sh", "100755")]),  # git keeps only the owner's x bit
    ("old mode 100644\nnew mode 0100744\n", [("run.sh", "100755")]),  # leading zeros, as strtoul reads
    ("old mode 100755\nnew mode 100600\n", []),                      # git stores it as 100644
    ("old mode 100644\nnew mode 120000\n", [("run.sh", "120000")]),
    ("new file mode 160000\nindex 0000000..1111111\n", [("run.sh", "160000")]),
    ("index 1111111..2222222 100755\n--- a/run.sh\n+++ b/run.sh\n@@ -1 +1 @@\n-a\n+b\n", []),  # unchanged mode
    ("deleted file mode 100755\nindex 1111111..0000000\n", []),
    ("similarity index 90%\nrename from run.sh\nrename to bin/run.sh\nold mode 100644\nnew mode 100755\n",
     [("bin/run.sh", "100755")]),
    ("old mode 100644\r\nnew mode 100755\r\n", [("run.sh", "100755")]),
])
def test_mode_changes_judges_modes_as_git_does(header, want):
    assert patchfile.mode_changes(_diff(header)) == want


def test_mode_changes_in_a_patch_of_several_files():
    data = (_diff("old mode 100644\nnew mode 100755\n--- a/run.sh\n+++ b/run.sh\n@@ -1 +1 @@\n-new mode 100755\n"
                  "+new mode 100755\n")
            + b"diff --git a/a.py b/a.py\nindex 1111111..2222222 100644\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-a\n+b\n"
            + b'diff --git "a/sp ace.sh" "b/sp ace.sh"\nnew file mode 100755\nindex 0000000..1111111\n'
              b'--- /dev/null\n+++ "b/sp ace.sh"\n@@ -0,0 +1 @@\n+x\n')
    assert patchfile.mode_changes(data) == [("run.sh", "100755"), ("sp ace.sh", "100755")]
