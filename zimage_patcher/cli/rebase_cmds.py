"""rebase: move an upstream's pin and carry its patches, with --continue, --skip and --abort."""
from __future__ import annotations

import shlex

import click

from ..errors import Exit, ZpatchError
from .base import command, complete_upstream


def _text(res: dict) -> str:
    lines = [f"{res['upstream']}: {res['old_pin'][:12]} -> {res['onto'][:12]} ({res['onto_ref']}, "
             f"{res['ahead']} upstream commit(s))" + ("  [dry run]" if res["dry_run"] else "")]
    for p in res["patches"]:
        extra = ""
        if p.get("fired"):
            extra = f"  (Obsolete-If fired: {'; '.join(p['fired'])})"
        elif p["state"] == "conflict":
            extra = f"  in {', '.join(p.get('files', []))}"
        lines.append(f"  {p['state']:<10} {p['name']}{extra}")
        lines += [f"    warning: probe not read: {m}" for m in p.get("probe_errors", [])]
        if p["state"] != "conflict":
            continue
        for h in p.get("hunks", []):      # the upstream commits that touched the lines of each hunk
            lines.append(f"    hunk #{h['hunk']} of {h['file']} (lines {h['lines'][0]}-{h['lines'][1]} upstream):")
            lines += [f"      upstream {c[:12]}{c[40:]}" for c in h["upstream_commits"][:5]]
        if not p.get("hunks"):
            lines += [f"    upstream {c[:12]}{c[40:]}" for c in p.get("upstream_commits", [])[:5]]
    lines += [f"  (not reached) {n}" for n in res.get("todo", [])]
    return "\n".join(lines)


@command("rebase", "zpatch rebase comfyui --onto origin/master --dry-run",
         interrupted="`zpatch rebase --continue` finishes an interrupted rebase and `zpatch rebase --abort` forgets "
                     "it (when no rebase is in progress, the overlay is as it was: rerun the command)")
@click.argument("upstream", required=False, shell_complete=complete_upstream)
@click.option("--onto", "onto", metavar="REF", help="Target: a commit, tag, branch or origin/<branch>.")
@click.option("--dry-run", is_flag=True, help="Do everything, write nothing; report every patch.")
@click.option("--allow-unrelated", is_flag=True, help="Allow a target that does not descend from the pin.")
@click.option("--offline", is_flag=True, help="Use the cache only (no fetch of new upstream commits).")
@click.option("--continue", "cont", is_flag=True, help="Go on after resolving the conflict in the scratch clone.")
@click.option("--skip", is_flag=True, help="Drop the conflicting patch and go on.")
@click.option("--abort", is_flag=True, help="Forget the rebase; the overlay stays as it was.")
def rebase_cmd(ctx, upstream, onto, dry_run, allow_unrelated, offline, cont, skip, abort):
    """Carry UPSTREAM's series from its pin onto REF, patch by patch, 3-way from the pin, in a
    scratch area in the cache (never a checkout). Each patch ends unchanged, refreshed, changed,
    upstreamed, obsolete (its Obsolete-If probe fires) or conflict. On success only the patches that
    changed are rewritten (with a new Last-Update), dropped ones are removed, and upstream.lock gets
    the new pin. A conflict stops with the files in the scratch clone: resolve, then --continue."""
    from .. import rebase
    actions = [a for a, on in (("continue", cont), ("skip", skip), ("abort", abort)) if on]
    root = ctx.overlay_root(for_writing=not dry_run)
    if actions:
        if len(actions) > 1 or upstream or onto or dry_run or allow_unrelated or offline:
            raise ZpatchError("--continue, --skip and --abort take no other argument or option", Exit.USAGE,
                              hint="zpatch rebase --continue")
        res = rebase.resume(root, actions[0])
    else:
        if not upstream or not onto:
            raise ZpatchError("name the upstream and --onto REF (or --continue / --skip / --abort)", Exit.USAGE,
                              hint="zpatch rebase comfyui --onto origin/master --dry-run")
        res = rebase.start(root, upstream, onto, dry_run=dry_run,
                           allow_unrelated=allow_unrelated, offline=offline)
    if res.get("aborted"):
        ctx.emit(res, (res["recovered"] + "\n" if res.get("recovered") else "")
                 + f"Aborted the rebase{' of ' + res['upstream'] if res['upstream'] else ''}; "
                   "the overlay is as it was.")
        return Exit.OK
    lines = [res["recovered"]] if res.get("recovered") else []
    lines.append(_text(res))
    if res.get("finished_before") == "abort":
        lines.append(f"Nothing left to abort: the pin of {res['upstream']} is {res['onto'][:12]} now. To undo it, "
                     "restore patches/ and upstream.lock from version control (git checkout -- patches "
                     "upstream.lock).")
    elif res["stopped"]:
        cur = res["patches"][-1]
        lines.append(f"CONFLICT in {cur['name']}: resolve the files in {res['scratch']}, then "
                     "`zpatch rebase --continue` (or --skip this patch, or --abort)")
    elif res["dry_run"]:
        lines.append("Dry run: nothing written."
                     + (f" `zpatch rebase {res['upstream']} --onto {res['onto_ref']}` stops at the first conflict "
                        "for you to resolve." if any(p["state"] == "conflict" for p in res["patches"]) else ""))
    else:
        gone = [p["name"] for p in res["patches"] if p["state"] in ("upstreamed", "obsolete", "skipped")]
        if gone:
            lines.append(f"Removed from the overlay and its series: {', '.join(gone)}.")
        lines.append(f"Rewrote the changed patches and moved the pin of {res['upstream']} to {res['onto'][:12]}. "
                     f"Review with `git -C {shlex.quote(str(root))} diff`; then `zpatch check`.")
    if res.get("range_diff") and (ctx.verbosity > 0 or not res["dry_run"]):
        lines += ["", "The series before and after (git range-diff):", res["range_diff"].rstrip()]
    ctx.emit(res, "\n".join(lines))
    conflicts = [p for p in res["patches"] if p["state"] == "conflict"]
    if res["stopped"] or conflicts:
        where = f"{res['upstream']} onto {res['onto'][:12]} ({res['onto_ref']})"
        if res["stopped"]:
            ctx.fail(f"{where}: {res['patches'][-1]['name']} conflicts", f"resolve the files in {res['scratch']}, "
                     "then `zpatch rebase --continue` (or --skip this patch, or --abort)")
        else:
            files = sorted({f for p in conflicts for f in p.get("files", [])})
            ctx.fail(f"{where}: {', '.join(p['name'] for p in conflicts)} conflict(s)"
                     + (f" in {', '.join(files)}" if files else "") + "; dry run, nothing written",
                     f"`zpatch rebase {res['upstream']} --onto {res['onto_ref']}` stops at the first conflict "
                     "for you to resolve")
        return Exit.CONFLICT          # a dry run that meets a conflict says so in its code too
    return Exit.OK
