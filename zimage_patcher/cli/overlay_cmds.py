"""check, lock, export, publish, forward and import: the commands that read or write the overlay itself (never a checkout)."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from .base import OVERLAY_WRITE, WROTE_NOTHING, command, complete_upstream


@command("check", "zpatch check --offline", interrupted=WROTE_NOTHING, findings=True)
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
    if res["clean"] and res["rebase_in_progress"]:    # the files are fine as they stand; the work is not done
        lines.append("Overlay OK as it stands, but not at rest (see the warning): `zpatch rebase --continue` or "
                     "`zpatch rebase --abort` finishes the rebase.")
    else:
        lines.append("Overlay OK." if res["clean"] else f"{len(res['problems'])} problem(s).")
    code = check.exit_code(res)
    ctx.emit(res, "\n".join(lines))
    return code


@command("lock", "zpatch lock", interrupted=OVERLAY_WRITE)
def lock_cmd(ctx):
    """Recompute the sha256 of every patch and node file into upstream.lock (after an intended edit).
    The new lock is read back before it replaces the old one, so it never writes a lock it cannot read."""
    from .. import overlay_write
    root = ctx.overlay_root(for_writing=True)
    with overlay_write.hold(root, "lock") as writer:
        changed = overlay_write.relock(root, writer)
    said = [writer.recovered] if writer.recovered else []
    ctx.emit({"overlay": str(root), "changed": changed, "recovered": writer.recovered},
             "\n".join(said + [("Updated upstream.lock: " + ", ".join(changed)) if changed
                                else "upstream.lock is up to date."]))


def _in_edit_mode(ctx) -> bool:
    """The current directory lies in a checkout with an upstream in edit mode."""
    from .. import edit_mode
    from ..errors import ZpatchError
    from ..workspace import Workspace
    try:
        return any(edit_mode.active(t) for t in Workspace.open(ctx.load(), None).targets)
    except ZpatchError:
        return False


@command("export", "zpatch export ./ComfyUI --check", interrupted=OVERLAY_WRITE, findings=True)
@click.argument("checkout", type=click.Path(file_okay=False), default=None, required=False)
@click.option("--check", is_flag=True,
              help="Write nothing; exit 1 when the patch files differ from what export would write.")
@click.option("--offline", is_flag=True, help="With --check and no checkout: use the cache only.")
@click.option("--force", is_flag=True,
              help="Write even over patches that changed in the overlay since `zpatch edit` made the branch.")
def export_cmd(ctx, checkout, check, offline, force):
    """Write each upstream's commits of `zpatch edit` back as patches/<upstream>/, its series and
    upstream.lock: new commits become new patches, dropped ones are deleted, reordering rewrites the
    series, and only patches whose bytes change are rewritten (byte-stable format-patch options under
    a neutral git config). With --check and no CHECKOUT, outside an edit-mode checkout: every patch
    file must be exactly what export writes for it (the CI and pre-commit gate)."""
    from .. import edit
    from ..errors import Exit
    if checkout is None and check and not _in_edit_mode(ctx):
        res = edit.canonical(ctx.load(), offline=offline)
    else:
        res = edit.export(ctx.overlay_root(for_writing=not check), Path(checkout) if checkout else None,
                          check=check, force=force)
    lines = [res["recovered"]] if res.get("recovered") else []
    for u in res["upstreams"]:
        moved = [p for p in u["patches"] if p["state"] != "unchanged"]
        lines.append(f"{u['name']}: {len(u['patches'])} patch(es), {len(moved)} to write"
                     + (", series reordered" if u["reordered"] else "")
                     + (f", {len(u['removed'])} dropped" if u["removed"] else ""))
        lines += [f"  {p['state']:<9} {p['name']}" for p in moved]
        lines += [f"  warning: {p['name']} lacks {', '.join(p['missing_headers'])} in its message "
                  "(`zpatch check` requires them; git commit --amend to add)"
                  for p in u["patches"] if p.get("missing_headers")]
        lines += [f"  dropped   {n}" for n in u["removed"]]
    for w in res.get("warnings", []):
        ctx.warn(w)
    if not res["changed"]:
        lines.append("The patch files are up to date." if check else "Nothing to export: the patch files are up to date.")
    elif check:      # what differs, as `git diff --exit-code` shows it
        lines += [p["diff"].rstrip("\n") for u in res["upstreams"] for p in u["patches"] if p.get("diff")]
        lines.append("The patch files differ from the export: run `zpatch export "
                     + (str(checkout) if checkout else "CHECKOUT") + "` (from an edit-mode checkout)")
    else:
        ov = shlex.quote(res["overlay"])
        lines.append(f"Exported; upstream.lock updated. Review with `git -C {ov} status` and `git -C {ov} diff`, "
                     "then commit the overlay.")
    ctx.emit(res, "\n".join(lines))
    return Exit.FINDINGS if check and res["changed"] else Exit.OK


@command("publish", "zpatch publish comfyui-gguf --remote git@github.com:me/ComfyUI-GGUF.git", interrupted=OVERLAY_WRITE)
@click.argument("upstream", shell_complete=complete_upstream)
@click.option("--remote", "remote", required=True, metavar="URL",
              help="Where to push: your fork of that upstream (a URL or path git push takes).")
@click.option("--branch", "branch", default=None, metavar="NAME", help="Branch to publish (default: zpatch/UPSTREAM).")
@click.option("--tag", "tag", default=None, metavar="NAME", help="Also tag the published commit (never moved).")
@click.option("--dry-run", is_flag=True, help="Build the commits and compare with the remote; push nothing.")
@click.option("--offline", is_flag=True, help="Use the cache only for the upstream (the push still needs the remote).")
def publish_cmd(ctx, upstream, remote, branch, tag, dry_run, offline):
    """Publish UPSTREAM's series as a branch of your fork: its pin plus one commit per patch (author,
    date and message from the patch). Deterministic: the same overlay gives the same commit ids, so
    publishing an unchanged series pushes nothing. Users then install the patched upstream by git URL
    and branch, without zpatch. Nothing is written locally."""
    from .. import publish
    res = publish.publish(ctx.load(), upstream, remote, branch=branch, tag=tag, dry_run=dry_run, offline=offline)
    where = f"{res['remote']} {res['branch']}"
    if not res["would_push"]:
        head = f"Up to date: {where} is {res['commit'][:12]} ({len(res['commits'])} patch commit(s) on the pin)."
    elif dry_run:
        head = (f"Would {'rewrite' if res['forced'] else 'update'} {where}: "
                f"{(res['before'] or 'nothing')[:12]} -> {res['commit'][:12]}" + (f", tag {tag}" if tag else "")
                + ". Nothing pushed.")
    else:
        head = (f"{'Rewrote' if res['forced'] else 'Published'} {where}: {(res['before'] or 'new')[:12]} -> "
                f"{res['commit'][:12]}" + (f", tagged {tag}" if tag else ""))
    lines = [head] + [f"  {c['commit'][:12]} {c['patch']}" for c in res["commits"]]
    lines.append(f"Install it without zpatch: {res['install']}")
    ctx.emit(res, "\n".join(lines))


@command("forward", "zpatch forward comfyui-gguf 0002 --push git@github.com:me/ComfyUI-GGUF.git --pr",
         interrupted=OVERLAY_WRITE)
@click.argument("upstream", shell_complete=complete_upstream)
@click.argument("patches", nargs=-1, required=True)
@click.option("--onto", "onto", metavar="REF", default=None,
              help="Upstream commit, tag or branch to build on (default: origin/<its tracked branch>).")
@click.option("--branch", "branch", metavar="NAME", default=None,
              help="Name of the branch (default: zpatch-forward/<first patch>).")
@click.option("--push", "push", metavar="URL", default=None, help="Push the branch to your fork (with a lease).")
@click.option("--pr", is_flag=True, help="Open the pull request with gh (needs --push) and record its URL.")
@click.option("--forwarded", "forwarded", metavar="URL", default=None,
              help="Record this URL (a request opened by hand) as the patches' Forwarded field.")
@click.option("--dry-run", is_flag=True, help="Build and check the commits; keep, push and write nothing.")
@click.option("--offline", is_flag=True, help="Use the cache only (no fetch of the upstream branch).")
def forward_cmd(ctx, upstream, patches, onto, branch, push, pr, forwarded, dry_run, offline):
    """Make PATCHES (file names, or numbers such as 0002) of UPSTREAM an upstream-ready branch: commits on
    the upstream branch's head with each patch's author, subject and description (the overlay's own
    header fields left out), built over the cache's mirror, never in a checkout. --push puts it on your
    fork, --pr opens the pull request with gh; the PR's URL (or --forwarded URL) is written into the
    patches' Forwarded field through the overlay's front door."""
    from .. import forward
    res = forward.forward(ctx.overlay_root(for_writing=bool(pr or forwarded) and not dry_run), upstream,
                          list(patches), onto=onto, branch=branch, push=push, pr=pr, forwarded=forwarded,
                          dry_run=dry_run, offline=offline)
    lines = [f"{upstream}: {len(res['commits'])} commit(s) on {res['onto_ref']} ({res['onto'][:12]})"
             + ("  [dry run]" if dry_run else f", branch {res['branch']}")]
    lines += [f"  {c['commit'][:12]} {c['patch']}" for c in res["commits"]]
    if res["pushed"]:
        lines.append(f"Pushed to {res['pushed']['remote']} {res['branch']}" if res["pushed"]["changed"]
                     else f"{res['pushed']['remote']} {res['branch']} already holds it")
    if res["pr"]:
        lines.append(f"{'Updated (already open)' if res['pr_reused'] else 'Opened'} {res['pr']}")
    if res["written"]:
        lines.append(f"Recorded Forwarded: {res['forwarded']} in " + ", ".join(res["written"])
                     + "; commit the overlay.")
    if not dry_run:
        lines.append(f"Look at it: {forward.hint_for(res).split(': ', 1)[1]}")
    ctx.emit(res, "\n".join(lines))


@command("import", "zpatch import comfyui-gguf --pr 402 --after 0002", interrupted=OVERLAY_WRITE)
@click.argument("upstream", shell_complete=complete_upstream)
@click.argument("rev", required=False, metavar="[COMMIT|A..B]")
@click.option("--pr", "pr", type=int, default=None, metavar="N", help="The upstream pull request N (refs/pull/N/head).")
@click.option("--after", "after", metavar="PATCH", default=None,
              help="Insert after this patch (name or number; default: at the end of the series).")
@click.option("--dry-run", is_flag=True, help="Check that it applies; write nothing.")
@click.option("--offline", is_flag=True, help="Use the cache only (no fetch; a commit already there).")
def import_cmd(ctx, upstream, rev, pr, after, dry_run, offline):
    """Carry an upstream pull request (--pr N) or an upstream commit or range as patches of UPSTREAM's
    series: each commit applied 3-way at its place on the pin, with its author and message and the
    DEP-3 fields Origin, Forwarded (the request), Applied-Upstream (when upstream already has it),
    Last-Update and Upstream-License. The patches after it must still apply. Written through the
    overlay's front door."""
    from .. import importer
    res = importer.import_patches(ctx.overlay_root(for_writing=not dry_run), upstream, pr=pr, rev=rev, after=after,
                                  dry_run=dry_run, offline=offline)
    lines = [res["recovered"]] if res.get("recovered") else []
    lines.append(f"{'Would import' if dry_run else 'Imported'} {res['origin']} into {upstream}"
                 + (" (upstream already has it: Applied-Upstream)" if res["merged_upstream"] else "") + ":")
    lines += [f"  new       {p['name']}  (from {p['commit'][:12]})" for p in res["patches"]]
    if not dry_run:
        lines.append("Next: zpatch check, then zpatch apply a checkout; commit the overlay.")
    ctx.emit(res, "\n".join(lines))
