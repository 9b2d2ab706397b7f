"""A saved drift report, read back as data (`zpatch drift --from`, `zpatch drift-publish`).

The publishing job reads reports written by a job that ran untrusted upstream code, so every field
the renderer and the publisher use is checked for type and shape here, in one place: a report that
passes cannot crash them, and its names and refs can go into a commit message or a command line.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import Exit, ZpatchError, from_oserror

SCHEMA = 2
# the classes, best first, and the exit code each gives `zpatch drift` (the worst upstream decides)
EXIT_CODES = {"current": Exit.OK, "moved-clean": Exit.FINDINGS, "upstreamed": Exit.UPSTREAMED,
              "moved-conflict": Exit.CONFLICT, "smoke-failed": Exit.SMOKE_FAILED}
CLASSES = tuple(EXIT_CODES)
STATES = ("carried", "unchanged", "refreshed", "changed", "upstreamed", "obsolete", "conflict", "skipped")
UPSTREAM_STATES = ("not-forwarded", "forwarded", "merged", "superseded", "rejected", "local-only")   # upstream_state.STATES
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")          # an upstream's name in upstream.lock
REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")          # origin/<branch>, a tag, a sha
SHA = re.compile(r"[0-9a-f]{40}")


class Malformed(Exception):
    """Where in the report, and what is wrong there."""


def _fail(where: str, what: str):
    raise Malformed(f"{where}: {what}")


def _str(v, where, *, pattern: re.Pattern | None = None, optional=False, limit=100_000):
    if v is None and optional:
        return
    if not isinstance(v, str) or len(v) > limit or (pattern and not pattern.fullmatch(v)):
        _fail(where, "expected " + (f"text matching {pattern.pattern}" if pattern else "text"))


def _int(v, where, *, optional=False):
    if v is None and optional:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        _fail(where, "expected a whole number")


def _bool(v, where):
    if not isinstance(v, bool):
        _fail(where, "expected true or false")


def _list(v, where, each, *, optional=False, limit=10_000):
    if v is None and optional:
        return
    if not isinstance(v, list) or len(v) > limit:
        _fail(where, "expected a list")
    for i, x in enumerate(v):
        each(x, f"{where}[{i}]")


def _dict(v, where, *, optional=False) -> bool:
    if v is None and optional:
        return False
    if not isinstance(v, dict):
        _fail(where, "expected an object")
    return True


def _sha(v, where, optional=False):
    _str(v, where, pattern=SHA, optional=optional)


def _range(v, where):
    if v is not None:
        _list(v, where, _sha)
        if len(v) != 2:
            _fail(where, "expected two commits")


def _hunk(h, where):
    _dict(h, where)
    _str(h.get("file"), f"{where}.file")
    _int(h.get("hunk"), f"{where}.hunk")
    _list(h.get("lines"), f"{where}.lines", _int)
    if len(h["lines"]) != 2:
        _fail(f"{where}.lines", "expected two line numbers")
    _list(h.get("upstream_commits"), f"{where}.upstream_commits", _str)


def _patch(p, where):
    _dict(p, where)
    _str(p.get("name"), f"{where}.name", limit=300)
    if p.get("state") not in STATES:
        _fail(f"{where}.state", "expected one of " + ", ".join(STATES))
    for key in ("fired", "probe_errors", "files", "upstream_commits"):
        _list(p.get(key), f"{where}.{key}", _str, optional=True)
    _list(p.get("hunks"), f"{where}.hunks", _hunk, optional=True)
    if "also_conflict" in p:
        _bool(p["also_conflict"], f"{where}.also_conflict")
    if _dict(p.get("upstream"), f"{where}.upstream", optional=True):
        u = p["upstream"]
        if u.get("state") not in UPSTREAM_STATES:
            _fail(f"{where}.upstream.state", "expected one of " + ", ".join(UPSTREAM_STATES))
        for key in ("where", "field"):
            _str(u.get(key), f"{where}.upstream.{key}", optional=True, limit=500)
        if _dict(u.get("pull_request"), f"{where}.upstream.pull_request", optional=True):
            pr = u["pull_request"]
            _int(pr.get("number"), f"{where}.upstream.pull_request.number")
            for key in ("state", "checked_by"):
                _str(pr.get(key), f"{where}.upstream.pull_request.{key}", limit=40)


def _touching(c, where):
    _dict(c, where)
    _sha(c.get("commit"), f"{where}.commit")
    _str(c.get("subject", ""), f"{where}.subject")


def _advance(a, where):
    if not _dict(a, where, optional=True):
        return
    for key in ("target", "first_bad"):
        _sha(a.get(key), f"{where}.{key}", optional=True)
    for key in ("target_subject", "first_bad_subject", "first_bad_patch"):
        _str(a.get(key), f"{where}.{key}", optional=True)
    for key in ("target_index", "trials", "line"):
        _int(a.get(key, 0), f"{where}.{key}")
    _bool(a.get("exact"), f"{where}.exact")
    _range(a.get("range"), f"{where}.range")


def _warning(w, where):
    if isinstance(w, dict):
        for key in ("stage", "level", "message"):
            _str(w.get(key), f"{where}.{key}", optional=True)
    else:
        _str(w, where)


def _smoke(s, where):
    if not _dict(s, where, optional=True):
        return
    _sha(s.get("commit"), f"{where}.commit")
    _bool(s.get("passed"), f"{where}.passed")
    if _dict(s.get("failure"), f"{where}.failure", optional=True):
        f = s["failure"]
        for key in ("step", "stage", "error"):
            _str(f.get(key), f"{where}.failure.{key}", optional=True)
    _list(s.get("warnings", []), f"{where}.warnings", _warning)
    if _dict(s.get("bisect"), f"{where}.bisect", optional=True):
        b = s["bisect"]
        for key in ("first_bad", "last_good"):
            _sha(b.get(key), f"{where}.bisect.{key}", optional=True)
        _str(b.get("first_bad_subject"), f"{where}.bisect.first_bad_subject", optional=True)
        _int(b.get("smokes"), f"{where}.bisect.smokes")
        _bool(b.get("exact"), f"{where}.bisect.exact")
        _range(b.get("range"), f"{where}.bisect.range")


def _upstream(u, where):
    _dict(u, where)
    _str(u.get("name"), f"{where}.name", pattern=NAME)
    where = f"upstream {u['name']}"
    _str(u.get("ref"), f"{where}.ref", pattern=REF)
    _str(u.get("branch", "x"), f"{where}.branch", pattern=REF)
    for key in ("pin", "head"):
        _sha(u.get(key), f"{where}.{key}")
    _sha(u.get("target"), f"{where}.target", optional=True)
    _int(u.get("ahead"), f"{where}.ahead")
    if u.get("class") not in CLASSES:
        _fail(f"{where}.class", "expected one of " + ", ".join(CLASSES))
    _list(u.get("patches"), f"{where}.patches", _patch)
    _list(u.get("touching", []), f"{where}.touching", _touching)
    _list(u.get("reproduce", []), f"{where}.reproduce", _str)
    _advance(u.get("advance"), f"{where}.advance")
    _smoke(u.get("smoke"), f"{where}.smoke")


def validate(data) -> None:
    """Raise Malformed naming the first field that a renderer or the publisher could not use."""
    _dict(data, "the report")
    if data.get("report_schema") != SCHEMA:
        _fail("report_schema", f"expected {SCHEMA} (written by another zpatch?)")
    if data.get("class") not in CLASSES:
        _fail("class", "expected one of " + ", ".join(CLASSES))
    _list(data.get("upstreams"), "upstreams", _upstream, limit=100)
    names = [u["name"] for u in data["upstreams"]]
    if len(set(names)) != len(names):
        _fail("upstreams", "an upstream appears twice")


def failed_leg(data) -> str | None:
    """When DATA is the error envelope of a drift that failed (a check leg that could not finish),
    its one-line error; None otherwise (a report of findings, a conflict's `error` line included)."""
    if (isinstance(data, dict) and data.get("ok") is False and isinstance(data.get("error"), str)
            and "upstreams" not in data):
        return data["error"][:300]
    return None


def load_report(path: Path) -> dict:
    """A report `zpatch drift --json` wrote (the envelope or the bare report), validated."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        err = ZpatchError(f"{path}: not a drift report: {str(e)[:200]}", Exit.USAGE,
                          hint="write one with: zpatch drift --json > drift.json")
        raise (from_oserror(e, "cannot be read", path=path, otherwise=err) if isinstance(e, OSError) else err) from None
    if failed_leg(data) is not None:
        raise ZpatchError(f"{path}: not a drift report: the drift that wrote it failed", Exit.USAGE,
                          hint="its error was: " + failed_leg(data))
    try:
        validate(data)
    except Malformed as e:
        raise ZpatchError(f"{path}: not a usable drift report of schema {SCHEMA}: {str(e)[:300]}", Exit.USAGE,
                          hint="write it again with this zpatch: zpatch drift --json > drift.json") from None
    return data


def merge(reports: list[dict]) -> dict:
    """Reports of single upstreams (a matrix job's legs) as one; an upstream twice is refused."""
    ups = [u for r in reports for u in r["upstreams"]]
    names = [u["name"] for u in ups]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ZpatchError(f"upstream {dup} is in more than one report", Exit.USAGE,
                          hint="give each upstream's report once")
    cls = max((u["class"] for u in ups), key=CLASSES.index) if ups else "current"
    return {"report_schema": SCHEMA, "overlay": str(reports[0].get("overlay", "")) if reports else "",
            "upstreams": ups, "class": cls, "smoke": any(r.get("smoke") is True for r in reports),
            "exit_code": int(EXIT_CODES[cls])}
