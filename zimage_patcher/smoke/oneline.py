"""One clean line of text from an error message or a log record, for reports and summaries.

Standard library only: harness.py imports it as a sibling module (under the smoke Python) and
runner.py / verify.py import it as ``zimage_patcher.smoke.oneline``.
"""
from __future__ import annotations

import re
import unicodedata

LIMIT = 300
# ECMA-48 escape sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte ESC x.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?")


def _clean(line: str) -> str:
    # control (Cc: CR, TAB, BEL, ...) and format characters (Cf: bidi overrides, zero-width) go;
    # TAB and the like become a space so words stay apart
    out = "".join(" " if unicodedata.category(c) == "Cc" else "" if unicodedata.category(c) == "Cf" else c
                  for c in line)
    return " ".join(out.split())


def one_line(text: object, limit: int = LIMIT) -> str:
    """The first non-blank line of TEXT (lines end at LF), without terminal escape sequences or
    control characters (a lone CR, TAB, BEL ... become a space), whitespace collapsed, at most LIMIT
    characters (cut with "...")."""
    s = _ESCAPES.sub("", str(text))
    first = next((c for c in (_clean(line) for line in s.split("\n")) if c), "")
    return first if len(first) <= limit else first[: limit - 3] + "..."
