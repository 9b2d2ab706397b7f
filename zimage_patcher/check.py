"""`zpatch check`: lint the overlay itself and prove each series applies on its pin.

Collects every problem instead of stopping at the first, and touches no checkout: the apply
test runs in a scratch index of the cached upstream repository."""
from __future__ import annotations

from pathlib import Path

from . import cache, diagnose, patchset, probes
from .errors import Exit, ZpatchError

REQUIRED_HEADERS = (("Origin",), ("Forwarded", "Upstream-Status"), ("Last-Update",), ("Upstream-License",))


def run(root: Path, *, offline: bool = False, apply_test: bool = True) -> dict:
    ov, found = patchset.collect(root)
    problems: list[dict] = []

    def note(kind: str, err: ZpatchError | str, **extra) -> None:
        msg = err.message if isinstance(err, ZpatchError) else err
        problems.append({"kind": kind, "message": msg,
                         "hint": err.hint if isinstance(err, ZpatchError) else None, **extra})

    for p in found:
        note(p.kind, p.error, **({"upstream": p.upstream} if p.upstream else {}),
             **({"patch": p.patch} if p.patch else {}))
    if ov is None:
        busy = _during_rebase(root, problems)
        return {"overlay": str(root), "clean": False, "problems": problems, "series": [], "rebase_in_progress": busy}
    complete = {s.upstream.name: s for s in ov.series}
    report = []
    for up in ov.lock.upstreams:
        s = complete.get(up.name)
        entry = {"name": up.name, "pin": up.commit, "patches": [], "applies": None}
        report.append(entry)
        if s is None:
            continue
        for p in s.patches:
            missing = [alts[0] for alts in REQUIRED_HEADERS if not any(a in p.headers for a in alts)]
            if missing:
                note("headers", f"{p.path}: missing header(s) {', '.join(missing)}", upstream=up.name, patch=p.name)
            entry["patches"].append({"name": p.name, "sha256": p.sha256, "subject": p.subject, "files": p.files})
        if apply_test and s.patches:     # a series with an unreadable patch is not in ov.series
            try:
                mirror = cache.ensure(up.url, up.commit, offline=offline)
            except ZpatchError as e:
                note("upstream", e, upstream=up.name)
                continue
            for p in s.patches:      # a probe that fires on the pin is wrong, or the patch is not needed
                hits, errors = probes.evaluate(p, mirror, up.commit)
                for e in errors:
                    note("probe", e, upstream=up.name, patch=p.name)
                for h in hits:
                    note("probe", f"{p.path}: Obsolete-If: {h} already fires on the pin {up.commit[:12]}",
                         upstream=up.name, patch=p.name)
            fails = diagnose.failures(mirror, up.commit, s.patches)
            entry["applies"] = not fails
            for f in fails:
                note("conflict", f"{up.name}: " + diagnose.one_line(f), upstream=up.name, patch=f["patch"],
                     failure=f)
    busy = _during_rebase(root, problems)
    return {"overlay": str(root), "clean": not problems, "problems": problems, "series": report,
            "rebase_in_progress": busy}


_OVERLAY_KINDS = ("lock", "series", "patch", "hash", "layout", "overlay")


def _during_rebase(root: Path, problems: list[dict]) -> bool:
    """A rebase stopped, or any writer killed, leaves patches that differ from the lock: the usual hints
    ("run `zpatch lock`", "restore the file") would bless or undo that by hand, so point at the way out
    instead. Returns whether the overlay is not at rest."""
    from . import overlay_write
    busy = overlay_write.busy(root)
    if busy:
        for p in problems:
            if p["kind"] in _OVERLAY_KINDS or (p["hint"] and "zpatch lock" in p["hint"]):
                p["hint"] = busy[1]
    return busy is not None


def exit_code(result: dict) -> Exit:
    if result["clean"]:
        return Exit.OK
    kinds = {p["kind"] for p in result["problems"]}
    if kinds <= {"upstream"}:
        return Exit.UNREACHABLE
    return Exit.FINDINGS
