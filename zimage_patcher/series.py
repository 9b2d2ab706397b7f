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
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        name, *opts = line.split()
        if any(not _STRIP.fullmatch(o) for o in opts):
            raise ZpatchError(f"{path}:{lineno}: unsupported option {' '.join(opts)!r} for {name}",
                              Exit.BAD_OVERLAY, hint="zpatch series take only '-p1' after a patch name")
        if "/" in name or "\\" in name or name.startswith(".") or not name.isprintable():
            raise ZpatchError(f"{path}:{lineno}: {name!r} must be a file name inside {path.parent}",
                              Exit.BAD_OVERLAY)
        if name in names:
            raise ZpatchError(f"{path}:{lineno}: {name} is listed twice", Exit.BAD_OVERLAY,
                              hint="remove the duplicate line")
        names.append(name)
    return names
