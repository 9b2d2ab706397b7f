"""`git apply --cached` of plain text patches, done here: a rebase applies each patch of the series in its
own step, and a git process apiece was a tenth of the run. What this takes is the common shape of a
format-patch file (changed, added and removed text files with full blob ids); for anything else, and for
any patch that does not apply, `parse` or `apply_hunks` returns None and git does the work, with its own
messages. Where it applies a patch, it does what git's apply.c does (find_pos, match_fragment,
update_image with no whitespace options and no fuzz), and tests/test_hunks.py compares the two on
thousands of generated cases."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_HUNK = re.compile(rb"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_INDEX = re.compile(rb"index ([0-9a-f]{40})\.\.([0-9a-f]{40})(?: (100644|100755))?\n\Z")
_MODE = re.compile(rb"(100644|100755)\n\Z")
# path components taken here: plain ASCII names. git refuses more than `.git` and `..` (core.protectNTFS:
# `git~1`, `.git.`; core.protectHFS: `.git` with ignorable Unicode), and a name with spaces makes
# `diff --git a/x b/y` ambiguous: all those go to git
_PART = re.compile(rb"[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*\Z")
_LIMIT = 1 << 30                   # apply.c keeps line numbers in an int: larger ones are git's to read


@dataclass
class Hunk:
    oldpos: int
    newpos: int
    pre: list[bytes]                # the lines it expects (context and removed), each with its newline
    post: list[bytes]               # the lines it leaves (context and added)
    trailing: int                   # context lines after the last change
    kept: list[int] = field(default_factory=list)   # per line of POST: its index in PRE (context), or -1 (added)


@dataclass
class FileDiff:
    path: str
    new: bool = False               # "new file mode"
    delete: bool = False            # "deleted file mode"
    mode: str = ""                  # the file's mode before (and after: a mode change goes to git)
    old_id: str = ""
    new_id: str = ""
    hunks: list[Hunk] = field(default_factory=list)


def lines_of(data: bytes) -> list[bytes]:
    """DATA split after each newline (a last line without one kept as it is)."""
    out = data.split(b"\n")
    last = out.pop()
    out = [line + b"\n" for line in out]
    if last:
        out.append(last)
    return out


def _path(line: bytes) -> str | None:
    """The path of `diff --git a/P b/P` when both sides name the same plain path; None otherwise
    (a rename, a quoted or odd name: git's job)."""
    rest = line[len(b"diff --git "):-1]
    half = (len(rest) - 1) // 2
    a, gap, b = rest[:half], rest[half:half + 1], rest[half + 1:]
    if gap != b" " or not a.startswith(b"a/") or not b.startswith(b"b/") or a[2:] != b[2:]:
        return None
    p = a[2:]
    for part in p.split(b"/"):
        if not (_PART.match(part) or part.startswith(b".") and _PART.match(part[1:])) \
                or part.lower().startswith(b".git") or part.endswith(b"."):
            return None
    return p.decode("ascii")


def parse(data: bytes) -> list[FileDiff] | None:
    """The file diffs of the patch file DATA (a mail with its message, as format-patch writes it), or
    None when git must read it: anything but text changes to existing, new or removed regular files
    with full blob ids, or anything git could read otherwise (a bare hunk, a traditional diff)."""
    lines = lines_of(data)
    out: list[FileDiff] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if line.startswith(b"@@ -") or (line.startswith(b"--- ") and i + 1 < n and lines[i + 1].startswith(b"+++ ")):
            return None                        # git would read these as a patch of their own, or refuse
        if not line.startswith(b"diff --git "):
            i += 1                             # the mail and its message: git skips them too
            continue
        path = _path(line)
        if path is None:
            return None
        d = FileDiff(path)
        i += 1
        minus = plus = None
        index_mode = ""
        while i < n and not lines[i].startswith(b"@@ -"):
            h = lines[i]
            if h.startswith(b"index "):
                m = _INDEX.match(h)
                if not m or d.old_id:
                    return None
                d.old_id, d.new_id = m[1].decode(), m[2].decode()
                index_mode = (m[3] or b"").decode()
            elif h.startswith(b"new file mode ") and _MODE.match(h, 14):
                d.new, d.mode = True, h[14:-1].decode()
            elif h.startswith(b"deleted file mode ") and _MODE.match(h, 18):
                d.delete, d.mode = True, h[18:-1].decode()
            elif h.startswith(b"--- "):
                minus = h[4:-1]
            elif h.startswith(b"+++ "):
                plus = h[4:-1]
            else:
                return None                    # a mode change, a rename, a binary patch, anything else
            i += 1
        if d.new or d.delete:
            if index_mode:
                return None                    # git reads that mode as the old one: its business
        else:
            d.mode = index_mode
        want_minus = b"/dev/null" if d.new else b"a/" + path.encode()
        want_plus = b"/dev/null" if d.delete else b"b/" + path.encode()
        if (minus, plus) != (want_minus, want_plus) or not d.mode or not d.old_id or d.new and d.delete:
            return None
        while i < n and lines[i].startswith(b"@@ -"):
            hunk, i = _hunk(lines, i)
            if hunk is None:
                return None
            d.hunks.append(hunk)
        if not d.hunks or any(x.path == path for x in out):
            return None
        if d.new and any(h.pre for h in d.hunks) or d.delete and any(h.post for h in d.hunks):
            return None
        out.append(d)
    return out or None


def _hunk(lines: list[bytes], i: int) -> tuple[Hunk | None, int]:
    """The hunk whose header is LINES[I] (as apply.c's parse_fragment reads it), and the index after it."""
    m = _HUNK.match(lines[i])
    if not m:
        return None, i
    oldpos, newpos = int(m[1]), int(m[3])
    old = int(m[2]) if m[2] is not None else 1
    new = int(m[4]) if m[4] is not None else 1
    if max(oldpos, newpos, old, new) >= _LIMIT:
        return None, i
    body: list[bytes] = []
    i += 1
    changed = False
    trailing = 0
    while old or new:
        if i >= len(lines) or not lines[i].endswith(b"\n"):
            return None, i
        line = lines[i]
        first = line[:1]
        if first == b" ":
            old, new, trailing = old - 1, new - 1, trailing + 1
        elif first == b"-":
            old, changed, trailing = old - 1, True, 0
        elif first == b"+":
            new, changed, trailing = new - 1, True, 0
        elif not (first == b"\\" and line.startswith(b"\\ ") and len(line) >= 12):
            return None, i                     # an empty context line, or garbage: git's call
        if old < 0 or new < 0:
            return None, i
        body.append(line)
        i += 1
    if i < len(lines) and lines[i].startswith(b"\\"):
        # git takes a "\ " line here when more than 12 bytes of the whole patch are left: a longer line
        # is taken either way, a shorter one depends on what follows
        if not (lines[i].startswith(b"\\ ") and len(lines[i]) > 12):
            return None, i
        body.append(lines[i])
        i += 1
    if not changed:
        return None, i
    pre: list[bytes] = []
    post: list[bytes] = []
    kept: list[int] = []
    for k, line in enumerate(body):
        kind, text = line[:1], line[1:]
        if kind == b"\\":
            continue
        if k + 1 < len(body) and body[k + 1].startswith(b"\\"):
            text = text[:-1]                   # "\ No newline at end of file"
        if kind in b" +":
            post.append(text)
            kept.append(len(pre) if kind == b" " else -1)
        if kind in b" -":
            pre.append(text)
    # a line without its newline must be the last of its side (else git's line table and ours part)
    if any(not x.endswith(b"\n") for side in (pre, post) for x in side[:-1]):
        return None, i
    return Hunk(oldpos, newpos, pre, post, trailing, kept), i


def _ws_hash(line: bytes) -> int:
    """apply.c's hash_line, kept to 24 bits as its line table keeps it: whitespace (git's isspace: space,
    tab, newline, carriage return; not vertical tab or form feed) does not count."""
    h = 0
    for c in line:
        if c not in b" \t\n\r":
            h = (h * 3 + c) & 0xFFFFFFFF
    return h & 0xFFFFFF


def _match(img: list[bytes], patched: list[bool], pre: list[bytes], at: int, begin: bool, end: bool) -> bool:
    """apply.c's match_fragment without whitespace options: PRE byte for byte at line AT of IMG, none of
    those lines written by an earlier hunk of this patch."""
    n = len(pre)
    if n + at > len(img) or end and n + at != len(img) or begin and at:
        return False
    for k in range(n - 1):
        if patched[at + k] or pre[k] != img[at + k]:
            return False
    if not n:
        return True
    last, line = pre[-1], img[at + n - 1]
    if patched[at + n - 1]:
        return False
    if last == line:
        return True
    # git compares the bytes of the whole preimage and each line's hash; a last line without its newline
    # can so match the start of a longer line whose other bytes are whitespace
    return (not end and not last.endswith(b"\n") and line.startswith(last)
            and _ws_hash(last) == _ws_hash(line))


def _find(img: list[bytes], patched: list[bool], pre: list[bytes], line: int, begin: bool, end: bool) -> int:
    """apply.c's find_pos: the line where PRE matches, trying LINE first, then one after, one before,
    two after...; -1 when none."""
    n = len(img)
    if begin:
        line = 0
    elif end:
        line = n - len(pre)
    if line > n or line < 0:
        line = n
    back = fwd = cur = line
    i = 0
    while True:
        if _match(img, patched, pre, cur, begin, end):
            return cur
        while True:
            if back == 0 and fwd == n:
                return -1
            if i & 1:
                if back == 0:
                    i += 1
                    continue
                back -= 1
                cur = back
            else:
                if fwd == n:
                    i += 1
                    continue
                fwd += 1
                cur = fwd
            break
        i += 1


def apply_hunks(content: bytes, hunks: list[Hunk], labels: list | None = None, label=None) -> bytes | None:
    """CONTENT with HUNKS applied as `git apply` applies them; None where git would refuse (or where the
    result would hold a line without its newline before the end, which git's line table treats apart).
    LABELS, one per line of CONTENT, follows the lines: a context line keeps its label, an added one
    gets LABEL (who wrote each line of a file, patch after patch)."""
    img = lines_of(content)
    patched = [False] * len(img)
    for h in hunks:
        at = _find(img, patched, h.pre, h.newpos - 1 if h.newpos else 0, h.oldpos <= 1, not h.trailing)
        if at < 0:
            return None
        stop = at + len(h.pre)
        if h.post and not h.post[-1].endswith(b"\n") and stop != len(img):
            return None
        img[at:stop] = h.post
        patched[at:stop] = [True] * len(h.post)
        if labels is not None:
            before = labels[at:stop]
            labels[at:stop] = [before[k] if k >= 0 else label for k in h.kept]
    return b"".join(img)


def line_authors(content: bytes, steps: list[tuple[object, list[Hunk]]]) -> tuple[bytes, list] | None:
    """CONTENT after each step's hunks in turn, and for each line of the result the step that last wrote
    it (None: a line of CONTENT itself); None where a step does not apply here."""
    labels: list = [None] * len(lines_of(content))
    for label, hunks in steps:
        content = apply_hunks(content, hunks, labels, label)
        if content is None:
            return None
    return content, labels
