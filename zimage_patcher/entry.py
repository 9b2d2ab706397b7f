"""The console script: catches a Ctrl-C that lands while the CLI is still being imported, so even
then zpatch exits 130 with one line instead of a traceback and exit 1 (the "findings" code)."""
import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    cli_main()
