"""`zpatch check`: lint the overlay itself and prove each series applies on its pin.

Collects every problem instead of stopping at the first, and touches no checkout: the apply
test runs in a scratch index of the cached upstream repository."""
from __future__ import annotations

from pathlib import Path

from . import cache, diagnose, lock as lockmod, patchfile
from .errors import Exit, ZpatchError
from .patchset import Overlay, load_series, verify_overlay_hashes, verify_upstream_hashes

REQUIRED_HEADERS = (("Origin",), ("Forwarded", "Upstream-Status"), ("Last-Update",), ("Upstream-License",))


def run(root: Path, *, offline: bool = False, apply_test: bool = True) -> dict:
    problems: list[dict] = []

    def note(kind: str, err: ZpatchError | str, **extra) -> None:
        msg = err.message if isinstance(err, ZpatchError) else err
        problems.append({"kind": kind, "message": msg,
                         "hint": err.hint if isinstance(err, ZpatchError) else None, **extra})

    try:
        lk = lockmod.parse(root / lockmod.LOCK_NAME)
    except ZpatchError as e:
        note("lock", e)
        return {"overlay": str(root), "clean": False, "problems": problems, "series": []}
    report = []
    for up in lk.upstreams:
        entry = {"name": up.name, "pin": up.commit, "patches": [], "applies": None}
        report.append(entry)
        try:
            directory, names = load_series(root, up)
        except ZpatchError as e:
            note("series", e, upstream=up.name)
            continue
        patches = []
        for n in names:
            try:
                p = patchfile.load(directory / n, n)
            except ZpatchError as e:
                note("patch", e, upstream=up.name, patch=n)
                continue
            patches.append(p)
            missing = [alts[0] for alts in REQUIRED_HEADERS if not any(a in p.headers for a in alts)]
            if missing:
                note("headers", f"{p.path}: missing header(s) {', '.join(missing)}", upstream=up.name, patch=n)
            entry["patches"].append({"name": n, "sha256": p.sha256, "subject": p.subject, "files": p.files})
        try:
            verify_upstream_hashes(root, up, patches)
        except ZpatchError as e:
            note("hash", e, upstream=up.name)
        if apply_test and patches and len(patches) == len(names):
            try:
                mirror = cache.ensure(up.url, up.commit, offline=offline)
            except ZpatchError as e:
                note("upstream", e, upstream=up.name)
                continue
            fails = diagnose.failures(mirror, up.commit, patches)
            entry["applies"] = not fails
            for f in fails:
                note("conflict", f"{up.name}: " + diagnose.one_line(f), upstream=up.name, patch=f["patch"],
                     failure=f)
    if lk.overlay:
        try:
            verify_overlay_hashes(Overlay(root, lk, []))
        except ZpatchError as e:
            note("overlay", e)
    return {"overlay": str(root), "clean": not problems, "problems": problems, "series": report}


def exit_code(result: dict) -> Exit:
    if result["clean"]:
        return Exit.OK
    kinds = {p["kind"] for p in result["problems"]}
    if kinds <= {"upstream"}:
        return Exit.UNREACHABLE
    return Exit.FINDINGS
