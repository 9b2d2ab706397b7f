"""upstream.lock: the pins and hashes of the overlay, parsed strictly and written deterministically."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import paths
from .errors import Exit, ZpatchError, from_oserror

LOCK_NAME = "upstream.lock"
FORMAT_VERSION = 1
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_UPSTREAM_KEYS = {"url", "branch", "commit", "path", "patches", "sha256"}
_OVERLAY_KEYS = {"source", "path", "sha256"}


@dataclass
class Upstream:
    name: str
    url: str
    branch: str
    commit: str
    path: str          # inside a checkout, POSIX, relative; "." for the checkout itself
    patches: str       # patch directory, relative to the overlay root
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class OverlayFiles:
    source: str        # folder of files to install, relative to the overlay root
    path: str          # where they go inside a checkout
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class Lock:
    upstreams: list[Upstream]
    overlay: OverlayFiles | None
    version: int = FORMAT_VERSION


def _fail(path: Path, what: str, hint: str | None = None) -> ZpatchError:
    return ZpatchError(f"{path}: {what}", Exit.BAD_OVERLAY,
                       hint=hint or "fix the file by hand or regenerate it with `zpatch lock`")


def check_relative(path: Path, key: str, value: object, *, allow_dot: bool = False) -> str:
    """A relative POSIX path that stays inside its root: no absolute path, no '..', no .git."""
    if value == "." and allow_dot:
        return value
    why = paths.unsafe(value)
    if why:
        raise _fail(path, f"{key} = {str(value)[:80]!r} {why}; paths must stay inside their tree")
    return PurePosixPath(value).as_posix()


def _hashes(path: Path, key: str, table: object) -> dict[str, str]:
    if not isinstance(table, dict):
        raise _fail(path, f"{key} must be a table of file = sha256")
    for name, digest in table.items():
        check_relative(path, f"{key}.{name}", name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _fail(path, f"{key}.{name} is not a 64-hex sha256")
    return dict(table)


def parse(path: Path) -> Lock:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ZpatchError(f"{path}: not found", Exit.BAD_OVERLAY,
                          hint="run zpatch from the overlay repository or pass --overlay DIR")
    except UnicodeDecodeError as e:
        raise _fail(path, f"not UTF-8 text (byte {e.start})")
    except OSError as e:
        raise from_oserror(e, "cannot be read", path=path, otherwise=_fail(path, f"cannot be read ({e.strerror})"))
    return parse_text(path, text)


def parse_text(path: Path, text: str) -> Lock:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _fail(path, f"not valid TOML ({e})")
    except RecursionError:
        raise _fail(path, "not valid TOML (nested too deeply)")
    unknown = set(data) - {"version", "upstream", "overlay"}
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(sorted(unknown))}")
    if type(data.get("version")) is not int or data["version"] != FORMAT_VERSION:
        raise _fail(path, f"version = {data.get('version')!r}, this zpatch reads version {FORMAT_VERSION}",
                    hint="upgrade zpatch or regenerate the lock")
    ups = data.get("upstream")
    if not isinstance(ups, dict) or not ups:
        raise _fail(path, "no [upstream.<name>] table")
    upstreams = []
    for name, u in ups.items():
        where = f"[upstream.{name}]"
        if not _NAME.fullmatch(name):
            raise _fail(path, f"{where}: upstream names are lower-case letters, digits, '.', '_', '-'")
        if not isinstance(u, dict):
            raise _fail(path, f"{where} must be a table")
        unknown = set(u) - _UPSTREAM_KEYS
        if unknown:
            raise _fail(path, f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        missing = (_UPSTREAM_KEYS - {"sha256"}) - set(u)
        if missing:
            raise _fail(path, f"{where}: missing key(s) {', '.join(sorted(missing))}")
        for k in ("url", "branch", "commit"):
            if not isinstance(u[k], str) or not u[k]:
                raise _fail(path, f"{where}.{k} must be a non-empty string")
            if not u[k].isprintable() or " " in u[k] or len(u[k]) > 2000:
                raise _fail(path, f"{where}.{k} = {u[k][:80]!r} has spaces or control characters, or is too long")
        if u["url"].startswith("-") or u["branch"].startswith("-"):
            raise _fail(path, f"{where}: url and branch may not start with '-' (git would read an option)")
        if not _SHA1.fullmatch(u["commit"]):
            raise _fail(path, f"{where}.commit = {u['commit']!r} is not a full 40-hex commit id",
                        hint="pin the full commit: git rev-parse <rev>")
        upstreams.append(Upstream(
            name=name, url=u["url"], branch=u["branch"], commit=u["commit"],
            path=check_relative(path, f"{where}.path", u["path"], allow_dot=True),
            patches=check_relative(path, f"{where}.patches", u["patches"]),
            sha256=_hashes(path, f"{where}.sha256", u.get("sha256", {}))))
    for i, a in enumerate(upstreams):
        for b in upstreams[i + 1:]:
            if a.path == b.path:
                raise _fail(path, f"two upstreams share one path: {a.name} and {b.name} are both at {a.path!r}",
                            hint="give each upstream its own path")
            # one series folder per upstream, none inside another's: each would read the other's
            # patches as strays or as its own, and export would write into the other's series
            inner = next(((x, y) for x, y in ((a, b), (b, a))
                          if x.patches == y.patches or x.patches.startswith(y.patches + "/")), None)
            if inner:
                x, y = inner
                how = (f"{x.name} and {y.name} both use {x.patches!r}" if x.patches == y.patches
                       else f"{x.name}'s {x.patches!r} is inside {y.name}'s {y.patches!r}")
                raise _fail(path, f"two upstreams share one patches folder: {how}",
                            hint="give each upstream its own patches folder, none inside another's")
    overlay = None
    if "overlay" in data:
        o = data["overlay"]
        if not isinstance(o, dict):
            raise _fail(path, "[overlay] must be a table")
        unknown = set(o) - _OVERLAY_KEYS
        if unknown:
            raise _fail(path, f"[overlay]: unknown key(s) {', '.join(sorted(unknown))}")
        if "source" not in o or "path" not in o:
            raise _fail(path, "[overlay] needs source and path")
        overlay = OverlayFiles(source=check_relative(path, "[overlay].source", o["source"]),
                               path=check_relative(path, "[overlay].path", o["path"]),
                               sha256=_hashes(path, "[overlay].sha256", o.get("sha256", {})))
    return Lock(upstreams=upstreams, overlay=overlay, version=data["version"])


def _q(s: str) -> str:
    """A TOML basic string; control characters (which TOML forbids raw) as \\uXXXX escapes."""
    body = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in body) + '"'


def dumps(lock: Lock) -> str:
    """Deterministic TOML: fixed key order, sorted hashes, LF endings, trailing newline."""
    out = ["# upstream.lock: written by `zpatch lock`; pins and hashes of the zimage-patcher overlay.",
           f"version = {lock.version}", ""]
    for u in lock.upstreams:
        out += [f"[upstream.{u.name}]", f"url = {_q(u.url)}", f"branch = {_q(u.branch)}",
                f"commit = {_q(u.commit)}", f"path = {_q(u.path)}", f"patches = {_q(u.patches)}", "",
                f"[upstream.{u.name}.sha256]"]
        out += [f"{_q(k)} = {_q(v)}" for k, v in sorted(u.sha256.items())]
        out.append("")
    if lock.overlay:
        o = lock.overlay
        out += ["[overlay]", f"source = {_q(o.source)}", f"path = {_q(o.path)}", "", "[overlay.sha256]"]
        out += [f"{_q(k)} = {_q(v)}" for k, v in sorted(o.sha256.items())]
        out.append("")
    return "\n".join(out)


def render(root: Path, lock: Lock) -> bytes:
    """The bytes of ROOT/upstream.lock for LOCK, refused unless they read back to the same lock
    (never a file zpatch cannot read) and unless the file is a plain one."""
    path = root / LOCK_NAME
    text = dumps(lock)
    back = parse_text(path, text)
    if (back.upstreams, back.overlay, back.version) != (lock.upstreams, lock.overlay, lock.version):
        raise ZpatchError(f"{path}: the lock zpatch would write does not read back the same; not written",
                          Exit.BAD_OVERLAY, hint="a name or path in the overlay cannot be stored; rename it")
    if path.is_symlink():
        raise ZpatchError(f"{path}: is a symlink; zpatch writes the lock only as a plain file", Exit.BAD_OVERLAY,
                          hint="replace the link with the file it points to")
    return text.encode("utf-8")
