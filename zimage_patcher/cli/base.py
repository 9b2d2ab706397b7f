"""The frame every command shares: the click group, the @command decorator (--json, --overlay,
-q/-v, an example and the exit codes in --help), the JSON envelope, output escaping, colour, and
the error boundary that turns every failure into a one-line message and a documented exit code."""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import sys
import threading
from pathlib import Path

import click

# patchset and traceback are imported where they are used: `--help` and usage errors never need them
from ..errors import EXIT_HELP, Exit, Terminated, ZpatchError, from_oserror

SCHEMA = 2
EXIT_CODES = "\b\nExit codes:\n" + "\n".join(f"  {int(c):<3} {t.replace('`', '')}" for c, t in EXIT_HELP.items())


def exit_codes_line(findings: bool) -> str:
    """The end of a command's --help: its common codes (1 only for those that report findings)."""
    return (f"Exit codes: 0 done, {'1 found something to act on, ' if findings else ''}2 bad command line; "
            "every code is listed in `zpatch --help`.")


# Options every command takes; given before the command name (`zpatch -q rebase ...`) they are moved
# after it, where click reads them, as git reads `git -C DIR status`.
_GLOBAL_FLAGS = {"--json", "-q", "--quiet", "-v", "--verbose"}

# C0/C1 controls (except newline and tab), bidi overrides, and the lone surrogates that
# undecodable file names turn into: a patch line or file name must not drive the terminal.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def safe(text: str) -> str:
    """TEXT with every control character shown as an escape instead of being obeyed."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


def field(value: object) -> str:
    """A value inside one line of output (a file name, say): newlines and tabs escaped too, so a file
    named "x\\n  applied  0003.patch" cannot forge a line of `status`."""
    return safe(str(value)).replace("\n", "\\n").replace("\t", "\\t")


def _colour() -> bool:
    return "NO_COLOR" not in os.environ and sys.stderr.isatty()


def say(text: str, *, err: bool = False) -> None:
    click.echo(safe(text), err=err)


def warn(text: str) -> None:
    click.echo(click.style("warning:", fg="yellow") if _colour() else "warning:", err=True, nl=False)
    click.echo(" " + safe(text), err=True)


# a zpatch command in advice: not one named as what ran (`zpatch apply` (pid N) was interrupted)
_ZPATCH_CMD = re.compile(r"\bzpatch (checkout|apply|unapply|status|check|lock|export|edit|refresh|rebase|drift|verify|smoke|publish|forward|import)\b"
                         r"(?!` \(pid)(?![^`;,)]*--overlay)")


def with_overlay(text: str | None, overlay_dir: str | None) -> str | None:
    """TEXT with every zpatch command in it given `--overlay DIR` when the user named the overlay on the
    command line: the advice must work where the user is, which need not be in the overlay."""
    if not text or not overlay_dir:
        return text
    q = shlex.quote(str(Path(overlay_dir).resolve()))
    return _ZPATCH_CMD.sub(lambda m: f"{m.group(0)} --overlay {q}", text)


def report_error(message: str, hint: str | None) -> None:
    label = click.style("error:", fg="red", bold=True) if _colour() else "error:"
    click.echo(f"{label} {safe(message)}", err=True)
    if hint:
        click.echo(f"{click.style('hint:', fg='yellow') if _colour() else 'hint:'} {safe(hint)}", err=True)


def envelope(command: str, ok: bool, payload: dict) -> str:
    return json.dumps({"schema": SCHEMA, "command": command, "ok": ok, **payload}, indent=2, sort_keys=True)


def _internal(command: str, exc: BaseException) -> ZpatchError:
    """An unexpected exception: a bug. Keep the traceback in a log, say where, exit 9."""
    import traceback
    from ..cache import cache_home
    log = cache_home() / "last-error.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8", errors="replace")
        where = f"traceback in {log}"
    except OSError:
        where = "run with ZPATCH_TRACE=1 to see the traceback"
    return ZpatchError(f"internal error in zpatch {command}: {type(exc).__name__}: {exc}", Exit.INTERNAL,
                       hint=f"this is a bug; please report it with the message ({where})")


class Context:
    """What a command function gets: output helpers that honour --json and -q/-v."""

    def __init__(self, command: str, as_json: bool, overlay_dir: str | None, verbosity: int):
        self.command, self.as_json, self.overlay_dir, self.verbosity = command, as_json, overlay_dir, verbosity
        self.overlay_busy = None     # set by overlay_root: the way out, when an invalid overlay is a writer's doing
        self.result: dict | None = None     # what emit() keeps for the JSON envelope
        self.text = ""
        self.failure: tuple[str, str | None] | None = None    # fail()'s line and hint
        # the overlay when found as zpatch's own source tree, not from the current directory: advice names
        # it, since a command that writes the overlay (refresh, export, edit) finds it only from inside
        self.implicit_overlay: str | None = None
        self.checkout_arg: str | None = None     # the CHECKOUT argument: its record names the overlay that applied it

    @property
    def advice_overlay(self) -> str | None:
        """The overlay a printed zpatch command must name to work where the user is."""
        return self.overlay_dir or self.implicit_overlay

    def pointed_overlay(self) -> str | None:
        """The overlay the checkout (named, or the one the current directory lies in) last used."""
        from ..patchset import cwd
        from ..record import pointed_overlay
        try:
            return pointed_overlay(Path(self.checkout_arg).absolute() if self.checkout_arg else cwd())
        except (OSError, ZpatchError):
            return None

    def fail(self, line: str, hint: str | None = None) -> None:
        """What went wrong, in one line, when the command returns an exit code of 2 and up without an
        error (a conflict it reports in full): the line -q keeps, and the envelope's `error` and `hint`."""
        self.failure = (line, hint)

    def overlay_root(self, *, for_writing: bool = False) -> Path:
        """The overlay; a command that only reads it is warned when it is not at rest (a rebase
        stopped, a write interrupted). Writers ask the front door (overlay_write.hold), which refuses."""
        from .. import patchset
        root = patchset.find_root(self.overlay_dir, for_writing=for_writing, checkout=self.checkout_arg)
        here = patchset.cwd()
        if self.overlay_dir is None and not os.environ.get("ZPATCH_OVERLAY"):
            named = self.pointed_overlay()
            if root not in (here, *here.parents) and not patchset.is_installed_copy(root):
                self.implicit_overlay = str(root)    # found from the checkout or from where zpatch is installed
            elif named and named != str(root):
                self.implicit_overlay = str(root)    # from here, but the checkout would find another: name it
            if named and named != str(root) and not self.as_json:
                from ..record import is_overlay
                if not is_overlay(named):
                    warn(f"{named}: the overlay that last applied this checkout is gone (moved or deleted); using "
                         f"{root}. Name the one you mean with --overlay DIR")
        if not for_writing:
            from .. import overlay_write
            busy = overlay_write.busy(root)
            if busy:
                self.overlay_busy = busy[1]
                if not self.as_json:     # its commands work where the user is, as a hint's do
                    warn(with_overlay(f"{busy[0]}: {busy[1].split(': ', 1)[-1]}", self.advice_overlay))
        return root

    def load(self, verify: bool = True):
        from .. import patchset
        return patchset.load(self.overlay_root(), verify_hashes=verify)

    def emit(self, payload: dict, text: str) -> None:
        """The command's result: TEXT now unless -q, or with --json the envelope, printed once the
        command's exit code is known (`ok` false from 2 up, and `exit_code` always)."""
        if self.as_json:
            self.result = payload
        elif self.verbosity >= 0 and text:
            say(with_overlay(text, self.advice_overlay))     # its advice works where the user is, as a hint's does
        self.text = text

    def warn(self, text: str) -> None:
        if not self.as_json:
            warn(text)


def _on_sigterm(signum, frame):
    """SIGTERM becomes an exception wherever the run is, so its `finally` blocks and temp-file cleanups
    run and it exits 143; a second SIGTERM while those run ends the process at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


_ARGS: list[str] = []      # this run's command line (options hoisted): a hint may repeat it


class Group(click.Group):
    """Usage errors become the JSON envelope when --json is on the command line; SIGTERM exits 143
    after cleaning up, as Ctrl-C exits 130."""

    def main(self, args=None, **kw):
        global _ARGS
        embedded = args is not None     # a caller in this process (a test's CliRunner), not the zpatch program
        args = _ARGS = _hoist(list(sys.argv[1:] if args is None else args))
        installed = threading.current_thread() is threading.main_thread()   # signal.signal works only there
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if installed else None
        previous_int = signal.getsignal(signal.SIGINT) if installed else None
        try:
            return self._main(args, **kw)
        finally:
            # an embedding caller keeps its own handlers; the program itself is exiting, and a signal
            # now must not turn the exit code it reported into 130 or 143
            if installed and embedded:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
                signal.signal(signal.SIGINT, signal.default_int_handler if previous_int is None else previous_int)
            from ..durable import pause_point
            pause_point("exiting")       # tests deliver a signal here too

    def _main(self, args, **kw):
        try:
            return super().main(args, standalone_mode=False, **kw)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(int(Exit.INTERRUPTED))
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(int(Exit.TERMINATED))
        except click.ClickException as e:
            if any(a == "--json" or a.startswith("--json=") for a in args):
                name = next((a for a in args if not a.startswith("-")), "zpatch")
                helps = f"zpatch {name} --help" if name in self.commands else "zpatch --help"
                click.echo(envelope(name, False,
                                    {"error": safe(e.format_message()), "exit_code": int(Exit.USAGE),
                                     "hint": f"`{helps}` shows the usage", "details": {}}))
            else:
                e.show()
            sys.exit(int(Exit.USAGE))


def complete_upstream(ctx, _param, incomplete: str):
    """Shell completion of an upstream name: the overlay's, from its lock (--overlay when given)."""
    from .. import lock as lockmod, patchset
    try:
        root = patchset.find_root(ctx.params.get("overlay_dir"))
        names = [u.name for u in lockmod.parse(root / lockmod.LOCK_NAME).upstreams]
    except ZpatchError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def _hoist(args: list[str]) -> list[str]:
    """ARGS with the shared options given before the command name moved after it."""
    front: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in _GLOBAL_FLAGS or a.startswith("--overlay="):
            front.append(a)
        elif a == "--overlay" and i + 1 < len(args):
            front += [a, args[i + 1]]
            i += 1
        else:
            break
        i += 1
    if not front or i >= len(args) or args[i].startswith("-"):
        return args           # nothing to move, or no command after them: click says what is wrong
    return [args[i], *front, *args[i + 1:]]


def _version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("zimage-patcher")
    except PackageNotFoundError:
        v = "unknown"
    lines = [f"zpatch {v}"]
    from .. import patchset
    try:
        root = patchset.find_root(None)
        from .. import lock as lockmod
        lk = lockmod.parse(root / lockmod.LOCK_NAME)
        lines.append(f"overlay {root}")
        lines += [f"  {u.name} pinned at {u.commit[:12]} ({u.url}, {u.branch})" for u in lk.upstreams]
    except ZpatchError as e:
        lines.append(f"overlay: {e.message}")
    say("\n".join(lines))
    ctx.exit(0)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and the overlay's pins.")
def main():
    """zpatch: keep the Z-Image overlay (patches + custom node) on ComfyUI and ComfyUI-GGUF.

    \b
    Typical session:
      zpatch checkout ./ComfyUI     # upstreams at their pins, through a local cache
      zpatch apply ./ComfyUI        # both patch series + the ComfyUI-ZImage-Fix node
      zpatch status ./ComfyUI       # what is applied, missing or modified
      zpatch unapply ./ComfyUI      # back to pristine upstream
      zpatch check                  # lint the overlay; touches nothing

    \b
    Shell completion (bash; zsh and fish likewise):
      eval "$(_ZPATCH_COMPLETE=bash_source zpatch)"
    """


# What the user does after Ctrl-C or SIGTERM, by what the command writes
ROLLED_BACK = "an interrupted apply or unapply is rolled back by the next command"
WROTE_NOTHING = "nothing was written; rerun it"
OVERLAY_WRITE = ("the overlay is written as one transaction: the next command that writes it finishes or "
                 "rolls back an interrupted write; rerun it")
INTERRUPTED: dict[str, str] = {}     # command name -> its hint after an interruption


def _finished() -> None:
    """The command's work is over and its result stands: a Ctrl-C or SIGTERM arriving now must not make
    the process exit 130 or 143 after (or while) it reports success."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ..durable import pause_point
    pause_point("finished")          # tests deliver the late signal here


def _again(hint: str, kw: dict) -> str:
    """HINT with {again} as this very command line (run where the user ran it, it acts on the same
    checkout) and {co} as the checkout it named, or the current directory's."""
    args, co = list(_ARGS), kw.get("checkout")
    where = str(Path(co).absolute() if co else Path.cwd())
    if "checkout" in kw:             # the checkout as a full path, so the command works from anywhere
        if co is None:
            args.append(where)
        elif co in args:
            args[len(args) - 1 - args[::-1].index(co)] = where
    return hint.format(again=shlex.join(["zpatch", *args]), co=shlex.quote(where))


def command(name: str, help_example: str, interrupted: str = ROLLED_BACK, findings: bool = False):
    """Register a command with --json, --overlay, -q/-v, the error boundary and an example in --help.
    The function gets a Context as `ctx` and returns an exit code (None: 0). INTERRUPTED: the hint after
    Ctrl-C or SIGTERM, what the user does next for this command. FINDINGS: it may exit 1 (found something)."""
    INTERRUPTED[name] = interrupted

    def wrap(fn):
        @main.command(name, help=fn.__doc__, epilog=f"\b\nExample:\n  {help_example}\n\n{exit_codes_line(findings)}")
        @click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/json.md).")
        @click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False), default=None,
                      help="Overlay directory holding upstream.lock (default: found automatically).")
        @click.option("-q", "--quiet", "quiet", is_flag=True, help="Print only errors.")
        @click.option("-v", "--verbose", "verbose", is_flag=True, help="Print more detail.")
        @functools.wraps(fn)
        def run(as_json: bool, overlay_dir: str | None, quiet: bool, verbose: bool, **kw):
            ctx = Context(name, as_json, overlay_dir, -1 if quiet else (1 if verbose else 0))
            ctx.checkout_arg = kw.get("checkout")
            try:
                try:
                    code = fn(ctx=ctx, **kw)
                except ZpatchError:
                    raise
                except KeyboardInterrupt:
                    raise ZpatchError("interrupted", Exit.INTERRUPTED, hint=_again(interrupted, kw)) from None
                except Terminated:
                    raise ZpatchError("terminated (SIGTERM)", Exit.TERMINATED, hint=_again(interrupted, kw)) from None
                except RecursionError as e:
                    raise ZpatchError(f"input nested too deeply to read ({e})", Exit.BAD_OVERLAY,
                                      hint="the overlay files are malformed")
                except OSError as e:      # a full disk, a permission (FILESYSTEM); or a path the user gave: too long, gone, ...
                    if os.environ.get("ZPATCH_TRACE"):
                        import traceback
                        traceback.print_exc()
                    raise from_oserror(e, code=Exit.BAD_CHECKOUT, hint="check the path and the current directory")
                except Exception as e:   # the boundary: nothing escapes as a traceback
                    if os.environ.get("ZPATCH_TRACE"):
                        import traceback
                        traceback.print_exc()
                    raise _internal(name, e)
            except ZpatchError as e:
                if ctx.overlay_busy and e.exit_code == Exit.BAD_OVERLAY:
                    e.hint = ctx.overlay_busy     # not "zpatch lock" or "restore the file" by hand
                gone = ctx.pointed_overlay() if overlay_dir is None and e.details.get("no_overlay") else None
                from ..record import is_overlay
                if gone and not is_overlay(gone):          # the checkout names an overlay that is no longer there: never guess another
                    e.hint = (f"the overlay that last applied this checkout, {gone}, is gone (moved or deleted): "
                              "run inside the overlay's repository, or name it with --overlay DIR")
                elif e.details.get("overlay_source") and overlay_dir is None:   # the source tree zpatch runs from
                    e.hint = ("run inside the overlay's repository, or name it: "
                              f"`{shlex.join(['zpatch', '--overlay', e.details['overlay_source'], *_ARGS])}`")
                e.hint = with_overlay(e.hint, ctx.advice_overlay)
                if as_json:
                    click.echo(envelope(name, False, e.to_json()))
                else:
                    report_error(e.message, e.hint)
                    if ctx.verbosity > 0 and e.details:   # -v: the structured details too
                        click.echo(safe(json.dumps(e.details, indent=2, sort_keys=True)), err=True)
                sys.exit(int(e.exit_code))
            code = int(code or 0)
            _finished()
            failure = ctx.failure or (ctx.text.strip().splitlines()[-1] if ctx.text.strip() else f"exit {code}", None)
            if code >= 2 and ctx.verbosity < 0 and not as_json:
                # -q silences the report, never the failure: one line, as git keeps its error line
                report_error(failure[0], with_overlay(failure[1], ctx.advice_overlay))
            if as_json and ctx.result is not None:
                failed = {"error": failure[0], "hint": with_overlay(failure[1], ctx.advice_overlay), "details": {}} \
                    if code >= 2 else {}
                click.echo(envelope(name, code < 2, {**failed, **ctx.result, "exit_code": code}))
            sys.exit(code)
        return run
    return wrap
