"""check and lock: the commands that read or write the overlay itself (never a checkout)."""
from __future__ import annotations

import click

from .base import command


@command("check", "zpatch check --offline")
@click.option("--offline", is_flag=True, help="Test-apply against the cache only.")
@click.option("--no-apply", is_flag=True, help="Lint only; skip the test-apply on the pins.")
def check_cmd(ctx, offline, no_apply):
    """Lint the overlay (lock, series, headers, hashes, hostile paths and modes) and test-apply
    every series on its pin in a scratch index. Reports every problem; touches no checkout."""
    from .. import check
    res = check.run(ctx.overlay_root(), offline=offline, apply_test=not no_apply)
    lines = []
    for s in res["series"]:
        state = {True: "applies cleanly", False: "DOES NOT APPLY", None: "not test-applied"}[s["applies"]]
        lines.append(f"{s['name']}: {len(s['patches'])} patch(es) on {s['pin'][:12]}: {state}")
    for p in res["problems"]:
        lines.append(f"problem: {p['message']}" + (f"\n  hint: {p['hint']}" if p.get("hint") else ""))
    lines.append("Overlay OK." if res["clean"] else f"{len(res['problems'])} problem(s).")
    ctx.emit(res, "\n".join(lines))
    return check.exit_code(res)


@command("lock", "zpatch lock")
def lock_cmd(ctx):
    """Recompute the sha256 of every patch and node file into upstream.lock (after an intended edit).
    The new lock is read back before it replaces the old one, so it never writes a lock it cannot read."""
    from .. import patchset
    root = ctx.overlay_root(for_writing=True)
    changed = patchset.write_lock(root)
    ctx.emit({"overlay": str(root), "changed": changed},
             ("Updated upstream.lock: " + ", ".join(changed)) if changed else "upstream.lock is up to date.")
