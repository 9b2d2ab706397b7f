"""One git-mailbox patch: its headers, the paths it touches, and the checks that refuse hostile ones."""
from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import unidiff

from . import paths
from .errors import Exit, ZpatchError, from_oserror

_DIFF_GIT = re.compile(r'^diff --git ("a/.+?"|a/.+?) ("b/.+?"|b/.+?)$')
_ED_STYLE = re.compile(r"^\d+(,\d+)?[acd]\d*(,\d+)?$")
_DEP3 = ("Origin", "Forwarded", "Upstream-Status", "Last-Update", "Author", "Description", "Obsolete-If",
         "Bug", "Applied-Upstream", "Upstream-License")


@dataclass
class Hunk:
    file: str
    index: int                 # 1-based within its file
    source_start: int
    source_lines: list[str]    # the lines git expects to find (context and removals)


@dataclass
class Patch:
    name: str
    path: Path
    data: bytes
    subject: str = ""
    headers: dict[str, str] = field(default_factory=dict)   # DEP-3 fields from the message
    probes: list[str] = field(default_factory=list)         # every Obsolete-If line (see probes.py)
    files: list[str] = field(default_factory=list)          # every path it reads or writes
    added: list[str] = field(default_factory=list)          # files it creates
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _hostile(patch: str, path: str, why: str) -> ZpatchError:
    return ZpatchError(f"{patch}: refusing path {path!r}: {why}", Exit.BAD_OVERLAY,
                       hint="patches may only touch relative paths inside their upstream")


def _unquote(raw: str) -> str:
    """git's C-style quoting of unusual file names ("a/x\\303\\251", "\\057" for '/') decoded as git does."""
    if not (len(raw) >= 2 and raw[0] == raw[-1] == '"'):
        return raw
    out, body, i = bytearray(), raw[1:-1], 0
    simple = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if re.match(r"[0-3][0-7]{2}", body[i + 1:i + 4]):
                out.append(int(body[i + 1:i + 4], 8))
                i += 4
                continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _check_path(patch: str, raw: str) -> str:
    raw = _unquote(raw)
    if raw == "/dev/null":
        return raw
    why = paths.unsafe(raw)
    if why:
        raise _hostile(patch, raw, f"the file name {why}")
    return PurePosixPath(raw).as_posix()


# git reads a mode with strtoul(base 8): leading blanks and zeros are fine, and anything that is
# not a regular file becomes a symlink or a gitlink. Judge modes as git will, not by their text.
_MODE_LINE = re.compile(r"^(?:old mode|new mode|deleted file mode|new file mode)\s*(\S*)|^index \S+ +(\S+)")


def _check_mode(name: str, line: str) -> None:
    m = _MODE_LINE.match(line)
    if not m:
        return
    raw = m.group(1) if m.group(1) is not None else m.group(2)
    digits = re.match(r"[0-7]+", raw)
    mode = int(digits.group(), 8) if digits else 0
    if mode & 0o170000 != 0o100000:
        kind = "symlinks" if mode & 0o170000 == 0o120000 else "submodules (gitlinks) and other special files"
        raise ZpatchError(f"{name}: refusing {line.strip()!r}: {kind} are not allowed in patches", Exit.BAD_OVERLAY,
                          hint="patches may only change regular files")
    if mode & 0o7000:
        raise ZpatchError(f"{name}: refusing {line.strip()!r}: setuid/setgid/sticky modes", Exit.BAD_OVERLAY,
                          hint="patches may only change regular files")


def _git_mode(raw: str) -> int:
    """The mode git reads from a mode line's text (strtoul base 8: leading zeros are fine, no digits is
    0), canonicalized as git stores it in the index: a regular file is 100644 or, with the owner's
    execute bit, 100755; a symlink 120000; anything else a folder or a gitlink (160000)."""
    digits = re.match(r"[0-7]+", raw)
    mode = int(digits.group(), 8) if digits else 0
    kind = mode & 0o170000
    if kind == 0o100000:
        return 0o100755 if mode & 0o100 else 0o100644
    return kind if kind in (0o120000, 0o040000) else 0o160000


def mode_changes(data: bytes) -> list[tuple[str, str]]:
    """(file, new mode) for each file of the git-format patch DATA that a `new mode` or `new file mode`
    line gives a mode other than 100644, judged as git will (100700 is 100755, 100600 is 100644,
    `new mode 0100755` is 100755), the mode as six octal digits. The file is the new name (a rename's
    `rename to`, else `+++ b/...`, else the header's b side). Lenient: nothing is refused here."""
    text = data.decode("utf-8", "surrogateescape")
    out: list[tuple[str, str]] = []
    name: str | None = None
    mode: int | None = None
    in_header = False

    def flush() -> None:
        if name is not None and mode is not None and mode != 0o100644:
            out.append((name, f"{mode:06o}"))

    for line in (l.rstrip("\r") for l in text.split("\n")):
        if line.startswith("diff --git "):
            flush()
            m = _DIFF_GIT.match(line)
            name = _strip(_unquote(m.group(2)), "b/") if m else None
            mode, in_header = None, True
        elif not in_header:
            continue
        elif line.startswith(("@@ ", "Binary files ", "GIT binary patch")):
            in_header = False
        elif line.startswith("rename to "):
            name = _unquote(line[len("rename to "):])
        elif line.startswith("+++ "):
            target = _unquote(line[4:].split("\t", 1)[0])
            if target != "/dev/null":
                name = _strip(target, "b/")
            in_header = False
        elif line.startswith(("new mode", "new file mode")):
            m = _MODE_LINE.match(line)
            if m and m.group(1) is not None:
                mode = _git_mode(m.group(1))
    flush()
    return out


def _strip(path: str, prefix: str) -> str:
    return path[len(prefix):] if path.startswith(prefix) else path


def load(path: Path, name: str | None = None) -> Patch:
    name = name or path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ZpatchError(f"{path}: patch file not found", Exit.BAD_OVERLAY,
                          hint="restore it, or drop its line from the series file")
    except OSError as e:
        raise from_oserror(e, "cannot be read", path=path, code=Exit.BAD_OVERLAY, hint="a patch must be a plain file")
    return parse(name, data, path)


def parse(name: str, data: bytes, path: Path | None = None) -> Patch:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ZpatchError(f"{name}: not UTF-8 text", Exit.BAD_OVERLAY,
                          hint="binary patches are not supported; regenerate it with `git format-patch`")
    patch = Patch(name=name, path=path or Path(name), data=data)
    # split on LF only: CRLF files (ComfyUI-GGUF has them) keep their CR inside the line, and
    # str.splitlines would also break lines at form feeds and other separators in the content
    lines = [line.rstrip("\r") for line in text.split("\n")]
    first_diff = next((i for i, line in enumerate(lines) if line.startswith(("diff --git ", "--- "))
                       and not line.strip() == "---"), None)
    has_hunks = first_diff is not None and any(line.startswith("@@ ") for line in lines[first_diff:])
    has_git = first_diff is not None and any(line.startswith("diff --git ") for line in lines[first_diff:])
    if not has_hunks and not has_git:   # a git diff may have no hunk: a rename, a binary, an empty file
        if any(_ED_STYLE.match(line) for line in lines) or any(l.startswith("*** ") for l in lines):
            raise ZpatchError(f"{name}: not a unified diff (ed-style or context diff)", Exit.BAD_OVERLAY,
                              hint="regenerate it with `git format-patch --full-index`")
        raise ZpatchError(f"{name}: contains no unified diff hunks", Exit.BAD_OVERLAY,
                          hint="regenerate it with `git format-patch --full-index`")
    _parse_message(patch, lines[:first_diff])
    body = lines[first_diff:]
    git_files: list[tuple[str, str]] = []      # (a, b) of every `diff --git` header
    for i, line in enumerate(body):
        if line.startswith("diff --git "):
            m = _DIFF_GIT.match(line)
            if not m:
                raise ZpatchError(f"{name}: cannot read header {line!r}", Exit.BAD_OVERLAY)
            git_files.append(tuple(_check_path(name, _strip(_unquote(p), prefix))
                                   for p, prefix in zip(m.groups(), ("a/", "b/"))))
        elif line.startswith("new file mode") and git_files:
            _check_mode(name, line)
            patch.added.append(git_files[-1][1])
        elif line.startswith(("--- ", "+++ ")) and not line.startswith(
                ("--- a/", "+++ b/", '--- "a/', '+++ "b/', "--- /dev/null", "+++ /dev/null")):
            if i + 1 < len(body) and (body[i + 1].startswith("+++ ") or body[i - 1].startswith("--- ")):
                raise ZpatchError(f"{name}: file header {line!r} lacks the a/ or b/ prefix",
                                  Exit.BAD_OVERLAY, hint="zpatch applies -p1 patches; re-export with git")
        elif line.startswith(("copy from ", "copy to ")):
            # git cannot reverse a copy (the source still exists), so unapply could never undo it
            raise ZpatchError(f"{name}: refusing {line.strip()!r}: copies cannot be reversed", Exit.BAD_OVERLAY,
                              hint="regenerate the patch without -C (git format-patch --no-renames or plain -M)")
        elif line.startswith(("rename from ", "rename to ")):
            _check_path(name, line.split(" ", 2)[2])
        else:
            _check_mode(name, line)
    try:
        ps = unidiff.PatchSet(text.split("\n", first_diff)[-1] if first_diff else text) if has_hunks else []
    except unidiff.UnidiffParseError as e:
        raise ZpatchError(f"{name}: malformed diff ({e})", Exit.BAD_OVERLAY,
                          hint="regenerate it with `git format-patch --full-index`")
    for pf in ps:
        src = _check_path(name, _strip(_unquote(pf.source_file), "a/"))
        tgt = _check_path(name, _strip(_unquote(pf.target_file), "b/"))
        for p in (src, tgt):
            if p != "/dev/null" and p not in patch.files:
                patch.files.append(p)
        if pf.is_added_file and tgt not in patch.added:
            patch.added.append(tgt)
        for n, h in enumerate(pf, 1):
            patch.hunks.append(Hunk(file=src if src != "/dev/null" else tgt, index=n,
                                    source_start=h.source_start,
                                    source_lines=[l.value[:-1] if l.value.endswith("\n") else l.value
                                                  for l in h.source_lines()]))
    for a, b in git_files:      # files whose change has no hunk (renames, binaries, empty files)
        for f in (a, b):
            if f not in patch.files:
                patch.files.append(f)
    if not patch.files:
        raise ZpatchError(f"{name}: touches no file", Exit.BAD_OVERLAY)
    return patch


def _parse_message(patch: Patch, head: list[str]) -> None:
    subject: list[str] = []
    in_subject = False
    for line in head:
        if line.startswith("Subject: "):
            subject = [line[len("Subject: "):]]
            in_subject = True
            continue
        if in_subject and line.startswith((" ", "\t")):
            subject.append(line.strip())
            continue
        in_subject = False
        if line == "---":        # below the cut line: git am (and so edit and export) drops the text
            break
        key, sep, value = line.partition(":")
        # exact names, so prose such as "origin: of the bug" is no field; a probe in any case, since
        # one silently ignored would never fire
        key = "Obsolete-If" if key.lower() == "obsolete-if" else key
        if sep and key in _DEP3:
            patch.headers[key] = value.strip()
            if key == "Obsolete-If":
                patch.probes.append(value.strip())
    patch.subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", " ".join(subject)).strip()


# ---------------------------------------------------------------- mail headers (edit, export, rebase)

_KNOWN = (b"From ", b"From:", b"Date:", b"Subject:")


def _fields(head: bytes) -> list[tuple[bytes, list[bytes]]]:
    """A mail header block as (key, lines) fields; continuation lines stay with their field."""
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        else:
            key = next((k for k in _KNOWN if line.startswith(k)), line.split(b":", 1)[0])
            fields.append((key, [line]))
    return fields


def stamp_last_update(data: bytes) -> bytes:
    """DATA with its message's DEP-3 Last-Update set to today (UTC): a patch whose change moved says when."""
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    head, sep, diff = data.partition(b"\ndiff --git ")
    head = re.sub(rb"^Last-Update:.*$", f"Last-Update: {today}".encode(), head, count=1, flags=re.M)
    return head + sep + diff


def same_but_last_update(a: bytes, b: bytes) -> bool:
    """A and B differ at most in their messages' Last-Update line."""
    def strip(d: bytes) -> bytes:
        head, sep, diff = d.partition(b"\ndiff --git ")
        return re.sub(rb"^Last-Update:.*$", b"Last-Update:", head, count=1, flags=re.M) + sep + diff
    return strip(a) == strip(b)


def keep_headers(new: bytes, old: bytes) -> bytes:
    """NEW (as format-patch wrote it) with the mail headers of OLD that git am drops put back byte for
    byte and in their place: a field NEW has comes from NEW (From, Date, Subject, MIME headers...),
    a field only OLD has is kept, and NEW's other fields follow."""
    new_head, sep, rest = new.partition(b"\n\n")
    old_head = old.partition(b"\n\n")[0]
    fresh = dict(_fields(new_head))
    out: list[bytes] = []
    for key, lines in _fields(old_head):
        out += fresh.pop(key, None) or ([] if key in _KNOWN else lines)
    for lines in fresh.values():
        out += lines
    return b"\n".join(out) + sep + rest


def set_field(data: bytes, key: str, value: str) -> bytes:
    """DATA with its message's DEP-3 field KEY set to VALUE: the field's line replaced where it is, or
    added after the message's last DEP-3 field (at the end of the message when it has none)."""
    head, sep, diff = data.partition(b"\ndiff --git ")
    line = f"{key}: {value}".encode("utf-8")
    pattern = re.compile(rb"^" + re.escape(key.encode()) + rb":.*$", re.M)
    if pattern.search(head):
        return pattern.sub(lambda _m: line, head, count=1) + sep + diff
    fields = [m for m in re.finditer(rb"^(" + b"|".join(re.escape(k.encode()) for k in _DEP3) + rb"):.*$", head, re.M)]
    if fields:
        at = fields[-1].end()
        return head[:at] + b"\n" + line + head[at:] + sep + diff
    message, cut, stat = head.partition(b"\n---\n")       # git am drops what follows a cut line
    return message.rstrip(b"\n") + b"\n\n" + line + b"\n" + cut + stat + sep + diff
