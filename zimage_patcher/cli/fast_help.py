"""`zpatch --help` without click: importing click costs more than the whole answer, so the console
script (entry.py) prints main_help.txt, click's own rendering of the main help, whenever click would
render exactly that (program zpatch, a terminal of 80 columns or more, or none). The file's first line
is a checksum of what the help is rendered from (entry.help_key): after any change there the fast
path steps aside, and tests/test_speed_paths.py fails until the file is regenerated:

    python -m zimage_patcher.cli.fast_help        # rewrites main_help.txt
"""
from __future__ import annotations

from pathlib import Path

from ..entry import HELP_FILE, help_key

WIDTH = 78      # click's help width on 80 columns or more: min(columns, 80) - 2


def render() -> str:
    """The main help exactly as `zpatch --help` prints it through click at WIDTH (with its newline)."""
    from . import main
    with main.make_context("zpatch", [], resilient_parsing=True, terminal_width=WIDTH) as ctx:
        return main.get_help(ctx) + "\n"


def expected() -> str:
    """What main_help.txt must hold now: the key line, then the help."""
    return f"key {help_key()}\n{render()}"


if __name__ == "__main__":
    Path(HELP_FILE).write_text(expected(), encoding="utf-8")
    print(f"wrote {HELP_FILE}")
