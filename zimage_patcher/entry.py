"""The console script: catches a Ctrl-C that lands while the CLI is still being imported, so even
then zpatch exits 130 with one line instead of a traceback and exit 1 (the "findings" code).

Two answers come before the CLI is imported, because importing click alone costs more than either:
`zpatch --help` (the text click renders, kept in cli/main_help.txt) and `zpatch apply [CHECKOUT]` on
a checkout that already holds the overlay (apply's own file-only check). Each is taken only where it
prints exactly what the CLI would; anything else goes to the CLI, which runs the command from the
start. A Ctrl-C during either is handled as one during the import."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
HELP_FILE = os.path.join(_HERE, "cli", "main_help.txt")


def help_key() -> str | None:
    """A checksum of everything the main help is rendered from: the CLI's modules (commands and their
    help), errors.py (the exit codes) and click's rendering code (core.py, formatting.py, found where
    the import would find them); None when click is not found. main_help.txt starts with the key it
    was rendered under: any edit since turns the fast path off until the file is regenerated."""
    import zlib
    cli = os.path.join(_HERE, "cli")
    files = [os.path.join(cli, n) for n in sorted(os.listdir(cli)) if n.endswith(".py")]
    files.append(os.path.join(_HERE, "errors.py"))
    click = next((os.path.join(p, "click") for p in sys.path
                  if os.path.isfile(os.path.join(p or ".", "click", "__init__.py"))), None)
    if click is None:
        return None
    files += [os.path.join(click, "core.py"), os.path.join(click, "formatting.py")]
    crc = 0
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        crc = zlib.crc32(b"%d:%s\0" % (len(data), os.path.basename(f).encode()), zlib.crc32(data, crc))
    return f"{crc:08x}-{len(files)}"


def _plain_run() -> bool:
    """Started as the `zpatch` script, no shell completion asked: click would call the program
    "zpatch" (the name in its usage line), and print nothing else first."""
    return (os.path.basename(sys.argv[0]) == "zpatch" and "_ZPATCH_COMPLETE" not in os.environ
            and getattr(sys.modules["__main__"], "__package__", None) in (None, "") and sys.stdout is not None)


def _columns() -> int:
    """The terminal width click formats help for, found as shutil.get_terminal_size finds it: $COLUMNS,
    else the terminal of stdout, else 80 (shutil itself is a costly import)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


def _write(text: str) -> bool:
    """TEXT (ASCII) on stdout, unbuffered. False, with nothing written, when stdout's encoding would not
    write it as the same ASCII bytes (UTF-16, say, which click writes in its own way) or when stdout
    refuses it (a pipe whose reader is gone): then the CLI runs and meets that in its own way."""
    try:
        data = text.encode("ascii")
        if text.encode(sys.stdout.encoding, sys.stdout.errors) != data:
            return False
        fd = sys.stdout.fileno()
        sys.stdout.flush()
        while data:
            data = data[os.write(fd, data):]
    except (OSError, ValueError, AttributeError, LookupError):
        return False
    return True


def _help(args: list[str]) -> bool:
    """`zpatch --help` from main_help.txt, when click would render it at that width (80 columns or more)
    and nothing it is rendered from changed since the file was written."""
    if args not in (["--help"], ["-h"]) or not _plain_run() or _columns() < 80:
        return False
    try:
        with open(HELP_FILE, encoding="utf-8") as f:
            key, _, text = f.read().partition("\n")
        now = help_key()
        if now is None or key != f"key {now}":
            return False
    except OSError:
        return False
    return _write(text)


def _already_applied(args: list[str]) -> bool:
    """`zpatch apply [CHECKOUT]` (no option) on a checkout that already holds exactly this overlay: the
    same checks the command makes first (apply.already_applied) and the line it prints. Whatever else
    the command might say (a warning, an error, work to do, a line that needs escaping) is left to it."""
    if args[:1] != ["apply"] or len(args) > 2 or not _plain_run():
        return False
    checkout = args[1] if len(args) == 2 else None
    if checkout is not None and (not checkout or checkout.startswith("-") or not os.path.isdir(checkout)
                                 or not os.access(checkout, os.R_OK)):
        return False       # an option, or a path click's own checks refuse
    try:
        from pathlib import Path

        from . import git
        if checkout is not None:
            gd = git.git_dir_of(Path(checkout).resolve())
            if gd is None or not os.path.exists(gd / "zpatch" / "record.json"):
                return False   # nothing applied there yet (a fresh checkout): no need to load the overlay
        from . import apply, overlay_write, patchset
        root = patchset.find_root(None, checkout=checkout)
        if overlay_write.busy(root):
            return False   # the command warns about it first
        res = apply.already_applied(patchset.load(root), Path(checkout) if checkout is not None else None)
    except Exception:
        return False       # the command reports it, with its exit code
    if res is None:
        return False
    # cli/workspace_cmds.apply_text's line for a no-op (tests/test_speed_paths.py compares the two)
    counts = ", ".join(f"{u['name']} {len(u['applied'])} patch{'' if len(u['applied']) == 1 else 'es'}"
                       for u in res["upstreams"])
    text = f"Already applied ({counts}; node {res['node']}). Nothing to do."
    if not (text.isascii() and text.isprintable()):
        return False       # the CLI escapes what a terminal must not obey
    return _write(text + "\n")


def main() -> None:
    try:
        args = sys.argv[1:]
        if _help(args) or _already_applied(args):
            return
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    cli_main()
