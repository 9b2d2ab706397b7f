"""patches/<name>/series: quilt's order file, the single source of patch order."""
from __future__ import annotations

import re
from pathlib import Path

from .errors import Exit, ZpatchError, from_oserror

SERIES_NAME = "series"
_STRIP = re.compile(r"-p1")


def parse(path: Path) -> list[str]:
    """Patch names in order. Accepts quilt's syntax: '#' comments, blank lines, and an optional
    '-p1' per entry (the only strip level git-format patches use)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ZpatchError(f"{path}: series file not found", Exit.BAD_OVERLAY,
                          hint="list the patch files in order, one per line, in that file")
    except UnicodeDecodeError as e:
        raise ZpatchError(f"{path}: not UTF-8 text (byte {e.start})", Exit.BAD_OVERLAY,
                          hint="a series lists patch file names, one per line")
    except OSError as e:
        raise from_oserror(e, "cannot be read", path=path, code=Exit.BAD_OVERLAY,
                           hint="the series must be a plain file listing patch names")
    names: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _entry_text(raw)
        if not line:
            continue
        name, *opts = line.split()
        if any(not _STRIP.fullmatch(o) for o in opts):
            raise ZpatchError(f"{path}:{lineno}: unsupported option {' '.join(opts)!r} for {name}",
                              Exit.BAD_OVERLAY, hint="zpatch series take only '-p1' after a patch name")
        if "/" in name or "\\" in name or name.startswith(".") or not name.isprintable():
            raise ZpatchError(f"{path}:{lineno}: {name!r} must be a file name inside {path.parent}",
                              Exit.BAD_OVERLAY,
                              hint="a series names files in its own folder: remove the line or fix the name")
        if name in names:
            raise ZpatchError(f"{path}:{lineno}: {name} is listed twice", Exit.BAD_OVERLAY,
                              hint="remove the duplicate line")
        names.append(name)
    return names


def _entry_text(raw: str) -> str:
    """RAW (one line, no line break) without its comment and blanks: '' for a comment or blank line."""
    return raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""


def rewrite(old: bytes, names: list[str]) -> bytes:
    """The series OLD rewritten to list NAMES, in that order, keeping what the user wrote.

    Every line keeps its bytes. An entry's block is its line (options and trailing comment included)
    with the comment lines directly above it (no blank line between): the block moves with the entry
    and goes when the entry is dropped. Every other comment line and blank line stays where it is;
    the blocks of the kept entries fill the places of the kept entries, in NAMES' order. A name OLD
    lacks is a plain `name\\n` line right after the name before it in NAMES (the first one: where the
    first entry was, or at the end when OLD has none). rewrite(OLD, the names OLD lists) is OLD."""
    if len(set(names)) != len(names):
        raise ValueError("a series lists each patch once")
    text = old.decode("utf-8", "surrogateescape")
    # parse's lines (str.splitlines), each with its own line break
    items: list[list] = []             # ["free", line] or ["entry", name, lines]
    above: list[str] = []              # comment lines since the last blank line or entry
    for line in text.splitlines(keepends=True):
        bare = line.splitlines()[0]
        entry = _entry_text(bare)
        if entry:
            items.append(["entry", entry.split()[0], [*above, line]])
            above = []
        elif bare.lstrip().startswith("#"):
            above.append(line)
        else:
            items += [["free", x] for x in above] + [["free", line]]
            above = []
    items += [["free", x] for x in above]

    old_names = [it[1] for it in items if it[0] == "entry"]
    if len(set(old_names)) != len(old_names):
        raise ValueError("the old series lists a patch twice")
    blocks = {it[1]: it[2] for it in items if it[0] == "entry"}
    wanted = set(names)
    kept = [n for n in names if n in blocks]
    # the kept entries' places, refilled in NAMES' order; a dropped entry's place becomes a hole
    order = iter(kept)
    out: list[list] = []
    for it in items:
        if it[0] != "entry":
            out.append(it)
        elif it[1] in wanted:
            n = next(order)
            out.append(["entry", n, blocks[n]])
        else:
            out.append(["hole"])
    for i, n in enumerate(names):
        if n in blocks:
            continue
        if i:
            at = next(k for k, it in enumerate(out) if it[0] == "entry" and it[1] == names[i - 1]) + 1
        else:
            at = next((k for k, it in enumerate(out) if it[0] in ("entry", "hole")), len(out))
        out.insert(at, ["entry", n, [n + "\n"]])
    lines = [x for it in out for x in ([it[1]] if it[0] == "free" else it[2] if it[0] == "entry" else [])]
    # a line that had no line break (OLD's last) gets one when another line now follows it
    fixed = [x if k == len(lines) - 1 or x.splitlines()[0] != x else x + "\n" for k, x in enumerate(lines)]
    assert [it[1] for it in out if it[0] == "entry"] == list(names), (old_names, names)
    return "".join(fixed).encode("utf-8", "surrogateescape")
