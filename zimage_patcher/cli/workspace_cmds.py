"""checkout, apply, unapply, status: the commands that act on a ComfyUI checkout."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..errors import Exit, Terminated, ZpatchError
from .base import WROTE_NOTHING, command, field, with_overlay

# omitted: the checkout around the current directory, found as git finds its top level
CHECKOUT_ARG = dict(type=click.Path(file_okay=False), default=None, required=False)


def _path(checkout: str | None) -> Path | None:
    return Path(checkout) if checkout is not None else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'es' if word.endswith('ch') else 's'}" if n != 1 else f"1 {word}"


@command("checkout", "zpatch checkout ./ComfyUI --exclude comfy/text_encoders/llama_tokenizer/tokenizer.json",
         interrupted="rerun the same checkout command: it keeps each upstream whose clone completed and clones "
                     "the others again")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--offline", is_flag=True, help="Use only the local cache; never touch the network.")
@click.option("--exclude", multiple=True, metavar="PATH",
              help="Leave PATH unmaterialized (git sparse checkout); repeatable.")
@click.option("--apply", "then_apply", is_flag=True, help="Apply the overlay right after (one step, as `apply`).")
def checkout_cmd(ctx, dest, offline, exclude, then_apply):
    """Clone every upstream at its pinned commit into DEST (ComfyUI with ComfyUI-GGUF nested)."""
    from .. import apply, clone
    ov = ctx.load()
    try:
        res = clone.checkout(ov, Path(dest), offline=offline, exclude=list(exclude),
                             progress=not ctx.as_json and ctx.verbosity >= 0)
    except (KeyboardInterrupt, Terminated) as e:      # the same command again finishes it
        term = isinstance(e, Terminated)
        again = clone.resume_command(Path(dest), {"exclude": list(exclude)}) + (" --apply" if then_apply else "")
        raise ZpatchError("terminated (SIGTERM)" if term else "interrupted", Exit.TERMINATED if term else
                          Exit.INTERRUPTED, hint=f"`{again}` finishes it: it keeps each upstream whose clone "
                                                 "completed and clones the others again") from None
    lines = ["Resumed an interrupted checkout" + (f" (kept {', '.join(res['kept'])}, already complete)"
                                                  if res["kept"] else "")] if res.get("resumed") else []
    lines += [f"{'Kept' if u['name'] in res.get('kept', []) else 'Checked out'} {u['name']} at {u['commit'][:12]} "
              f"{'in' if u['name'] in res.get('kept', []) else 'into'} {Path(dest) / u['path']}"
              for u in res["upstreams"]]
    for m in res["missing_objects"]:
        ctx.warn(f"{m} is missing: the source repository lacks its object "
                 f"(git status shows it deleted; --exclude {m} leaves it out cleanly)")
    if then_apply:
        try:
            res["apply"] = apply.apply(ov, Path(dest))
        except (KeyboardInterrupt, Terminated) as e:    # the checkout is done: what is left is the apply
            term = isinstance(e, Terminated)
            raise ZpatchError("terminated (SIGTERM)" if term else "interrupted",
                              Exit.TERMINATED if term else Exit.INTERRUPTED,
                              hint=f"the checkout is complete; `zpatch apply {shlex.quote(str(dest))}` applies "
                                   "the overlay (rolling an interrupted apply back first)") from None
        lines.append(apply_text(res["apply"], dest))
    else:
        lines.append(f"Next: zpatch apply {shlex.quote(str(dest))}")
    ctx.emit(res, "\n".join(lines))


def _files(ctx, res: dict, *keys: str) -> str:
    """-v: every path written, removed or restored, as git's porcelain lists them."""
    if ctx.verbosity < 1:
        return ""
    verbs = {"files_written": "wrote", "files_removed": "removed", "files_restored": "restored"}
    return "".join(f"\n  {verbs[k]:<8} {field(f)}" for k in keys for f in res.get(k, []))


def apply_text(res: dict, checkout) -> str:
    lines = [res["recovered"]] if res.get("recovered") else []
    counts = ", ".join(f"{u['name']} {_plural(len(u['applied']), 'patch')}" for u in res["upstreams"])
    if not res["changed"]:
        return "\n".join(lines + [f"Already applied ({counts}; node {res['node']}). Nothing to do."])
    if res["replaced"]:
        lines.append(f"Replaced the applied patches of {' and '.join(res['replaced'])} with the overlay's "
                     "current ones.")
    lines.append(f"Applied: {counts}; installed {res['node']}.")
    for u in res["upstreams"]:
        if u["three_way"]:
            lines.append(f"note: {u['name']} is at {u['head'][:12]}, not its pin {u['pin'][:12]}: "
                         "its patches were merged 3-way; review them before relying on it")
    co = shlex.quote(str(checkout))
    lines.append(f"Next: zpatch status {co}   or   zpatch smoke {co}")
    return "\n".join(lines)


@command("apply", "zpatch apply /ComfyUI")
@click.argument("checkout", **CHECKOUT_ARG)
@click.option("--3way", "three_way", is_flag=True,
              help="An upstream moved off its pin: merge the patches 3-way onto what is there.")
@click.option("--allow-drift", "allow_drift", is_flag=True, hidden=True)   # the 0.1 name of --3way
def apply_cmd(ctx, checkout, three_way, allow_drift):
    """Apply both patch series and install the custom node into CHECKOUT (default: the checkout
    around the current directory). All or nothing: computed first, then written under a lock with
    a journal, so a failure or a kill leaves the checkout as it was.

    A second run is a no-op that says so; after the overlay changed, the old patches are
    reversed from zpatch's own copies and the new ones applied."""
    from .. import apply
    res = apply.apply(ctx.load(), _path(checkout), three_way=three_way or allow_drift)
    ctx.emit(res, apply_text(res, res["checkout"]) + _files(ctx, res, "files_written", "files_removed"))


@command("unapply", "zpatch unapply ./ComfyUI")
@click.argument("checkout", **CHECKOUT_ARG)
@click.option("--discard", is_flag=True, help="In edit mode: drop commits that were not exported.")
def unapply_cmd(ctx, checkout, discard):
    """Reverse what `apply` did: the patched files return to upstream's bytes and the node's files
    are removed. Refuses, changing nothing, when a file was edited since `apply`. In edit mode it
    leaves it: back to the pins, once the commits are exported."""
    from .. import apply
    res = apply.unapply(ctx.load(verify=False), _path(checkout), discard=discard)
    lines = [res["recovered"]] if res.get("recovered") else []
    if res["left_edit_mode"]:
        moved = {u["name"]: u for u in res["off_pin"]}
        at = [n for n in res["left_edit_mode"] if n not in moved]
        if at:
            lines.append(f"Left edit mode ({', '.join(at)}): back at the pins.")
        for n, u in moved.items():
            lines.append(f"Left edit mode ({n}): back at {u['head'][:12]}, where edit mode began; a rebase has "
                         f"moved the pin to {u['pin'][:12]} since. Next: {u['next']}")
    if not res["changed"]:
        lines.append("Nothing applied by zpatch here. Nothing to do.")
    elif res["upstreams"] or res["node"]:
        parts = ", ".join(f"{u['name']} {_plural(len(u['reversed']), 'patch')}" for u in res["upstreams"])
        node = ""
        if res["node"]:
            node = (f"; removed the node's files from {res['node']} (the folder stays: it holds files zpatch "
                    "did not install)" if res.get("node_kept") else f"; removed {res['node']}")
        lines.append(f"Reversed {parts or 'no patches'}{node}.")
        lines.append(f"The files zpatch changed are upstream's again. Check: zpatch status {shlex.quote(res['checkout'])}")
    ctx.emit(res, "\n".join(lines) + _files(ctx, res, "files_restored"))


@command("status", "zpatch status ./ComfyUI --json", interrupted=WROTE_NOTHING, findings=True)
@click.argument("checkout", **CHECKOUT_ARG)
@click.option("--upstream-state", "upstream_state", is_flag=True,
              help="Instead: where each patch of the overlay stands upstream (not-forwarded, forwarded, merged, "
                   "superseded, rejected, local-only), its age and size. Needs no checkout.")
def status_cmd(ctx, checkout, upstream_state):
    """Per upstream: pin vs HEAD, each patch applied / missing / modified / outdated / conflict,
    foreign changes (inside nested repositories too), and the custom node. Read-only.
    Exits 1 when anything differs from a cleanly applied overlay."""
    if upstream_state:
        return _upstream_state(ctx)
    from .. import status
    res = status.status(ctx.load(), _path(checkout))
    lines = []
    if res["interrupted"]:
        lines.append(f"INTERRUPTED: a `zpatch {res['interrupted']['op']}` (pid {res['interrupted']['pid']}) "
                     "died before finishing")
    for u in res["upstreams"]:
        if u.get("edit"):
            e = u["edit"]
            pin = ("EDIT MODE, interrupted half way" if e["interrupted"] else
                   f"EDIT MODE: {e['commits']} commit(s) on {e['branch']}, "
                   + ("exported" if e["exported"] else "not exported yet"))
        else:
            pin = "at pin" if u["at_pin"] else f"HEAD {str(u['head'])[:12]}, OFF its pin"
        lines.append(f"{u['name']} ({u['path']}): pin {u['pin'][:12]}, {pin}")
        lines += [f"  {p['state']:<9} {p['name']}" + (f" ({', '.join(map(field, p['edited']))})" if p.get("edited") else "")
                  for p in u["patches"]]
        lines += [f"  foreign   {f['git_status']} {field(f['path'])}" for f in u["foreign_changes"]]
    if res["node"]:
        edited = [field(f) + (" added" if state == "added" else "")
                  for f, state in sorted(res["node"]["files"].items()) if state in ("modified", "added")]
        lines.append(f"node {res['node']['path']}: {res['node']['state']}"
                     + (f" ({', '.join(edited)})" if edited else ""))
    advice = _status_advice(res)
    lines += advice
    # the same next steps for a script: each line's sentence, its commands naming the overlay as printed
    res["advice"] = [with_overlay(a.strip().removeprefix("(").removesuffix(")"), ctx.advice_overlay)
                     for a in advice if a not in ("Not clean.", "All applied and clean.")]
    ctx.emit(res, "\n".join(lines))
    return Exit.OK if res["clean"] else Exit.FINDINGS


def _put_aside(res: dict) -> list[str]:
    """For each file edited after apply (a patched file, a file of the node): copy it to ~, then make
    it upstream's again (git checkout) or absent (a file a patch or the node added), so that apply
    writes zpatch's bytes there again."""
    from ..workspace import aside_steps, copy_aside
    co = Path(res["checkout"])
    steps = []
    for u in res["upstreams"]:
        files = sorted({f for p in u["patches"] for f in p.get("edited", [])})
        if files and not u.get("edit"):
            steps += aside_steps(co, co / u["path"], files, u["name"])
    node = res["node"]
    for f, state in sorted(node["files"].items()) if node else ():
        if state in ("modified", "added"):       # added: a file of the user's, which refresh would add
            rel = f"{node['path']}/{f}"
            steps += [copy_aside(co, rel, "node"), f"rm -- {shlex.quote(str(co / rel))}"]
    return steps


def _upstream_state(ctx) -> None:
    from .. import upstream_state
    res = upstream_state.overlay_report(ctx.load())
    lines = []
    for u in res["upstreams"]:
        lines.append(f"{u['name']} ({u['url']}):")
        for p in u["patches"]:
            age = f", {p['age_days']} days" if p["age_days"] is not None else ""
            kept = f", {p['rebases_survived']} rebase(s)" if p["rebases_survived"] is not None else ""
            merged = (" (its pull request is merged upstream: the next rebase drops it)"
                      if p["field"] == "pull request" else "")
            lines.append(f"  {p['state']:<14} {p['name']}  (+{p['lines_added']} -{p['lines_removed']}{age}{kept})"
                         + (f"  {field(p['where'])}" if p["where"] else "") + merged)
    lines.append("Totals: " + ", ".join(f"{n} {s}" for s, n in sorted(res["counts"].items())) + ".")
    if res["counts"].get("not-forwarded"):
        lines.append("Next: zpatch forward UPSTREAM PATCH makes an upstream-ready branch of a patch (--push, --pr)")
    ctx.emit(res, "\n".join(lines))


def _status_advice(res: dict) -> list[str]:
    """What to do next, one line per kind of difference (git status style)."""
    if res["clean"]:
        if any(u.get("edit") for u in res["upstreams"]):
            moved = any(u["edit"].get("pin_moved") for u in res["upstreams"] if u.get("edit"))
            return ["Edit mode, everything exported" + ("; a rebase has moved the pin since `zpatch edit`" if moved
                                                          else "") +
                    f". Leave it with `zpatch unapply {shlex.quote(res['checkout'])}`"
                    + (", which then names the way to the new pin." if moved else ".")]
        return ["All applied and clean."]
    co, top = shlex.quote(res["checkout"]), Path(res["checkout"])     # CO: as printed in a command
    states = {p["state"] for u in res["upstreams"] for p in u["patches"]}
    out = []
    if res["interrupted"]:     # what the files show now is half a run: the roll-back comes first
        again = f", or `zpatch edit {co}` again" if res["interrupted"]["op"] == "edit" else ""
        return ["Not clean.", f"  (run `zpatch apply {co}` or `zpatch unapply {co}`{again}: each "
                              "first rolls the interrupted change back)"]
    editing = [u for u in res["upstreams"] if u.get("edit")]
    if any(u["edit"].get("pin_moved") for u in editing):
        out.append(f"  (edit mode: the pin moved since `zpatch edit` (a rebase); `zpatch unapply {co}` leaves it, "
                   "and says how to keep commits that were not exported)")
    if any(u["edit"].get("interrupted") for u in editing):
        # the one thing to do: export, apply and the rest refuse a half-made edit mode
        return ["Not clean.", f"  (edit mode was interrupted half way: `zpatch edit {co}` finishes "
                              f"entering it, `zpatch unapply {co}` finishes leaving it)"]
    if editing and not any(u["edit"].get("pin_moved") for u in editing):    # else export refuses: said above
        if not all(u["edit"]["exported"] for u in editing):
            out.append(f"  (edit mode: `zpatch export {co}` writes the commits as patches)")
        out.append(f"  (edit mode: `zpatch unapply {co}` goes back to the pins once exported)")
    # off its pin and not merged there on purpose (a 3-way apply that succeeded needs no advice)
    off = [u for u in res["upstreams"] if not u["at_pin"] and not u.get("edit") and not u["three_way"]]
    if off:
        from ..apply import back_to_pin
        applied = (any(p["state"] in ("applied", "modified", "outdated") for u in res["upstreams"] for p in u["patches"])
                   or bool(res["node"] and res["node"]["state"] != "missing"))
        moves = [back_to_pin(top, top / u["path"], u["pin"], False) for u in off]
        back = " && ".join([f"zpatch unapply {co}", *moves, f"zpatch apply {co}"]
                           if applied else moves)
        out.append(f"  (off pin: `{back}` puts {' and '.join(u['name'] for u in off)} back on the pin, "
                   f"or `zpatch apply --3way {co}` merges the patches onto what is there)")
    node_state = res["node"]["state"] if res["node"] else None
    edited_after = (any(p.get("edited") for u in res["upstreams"] for p in u["patches"])
                    or node_state == "modified")     # their advice ends in apply itself
    blocking = [u for u in res["upstreams"] if any(f.get("in_patched_file") for f in u["foreign_changes"])]
    if blocking:     # apply would refuse: say how to put the edits aside first, keeping them
        stash = " && ".join(f"git -C {shlex.quote(str(top / u['path']))} stash push -- "
                            + shlex.join(sorted(f["path"] for f in u["foreign_changes"] if f.get("in_patched_file")))
                            for u in blocking)
        out.append(f"  (your edits in files the patches change: keep them aside with `{stash}`, then "
                   f"`zpatch apply {co}`)")
    elif not off and not edited_after and (states & {"missing", "outdated"} or node_state == "outdated"
                                           or (node_state == "missing" and not editing)):
        folder = top / res["node"]["path"] if res["node"] else None
        if node_state == "missing" and folder.is_dir() and any(folder.iterdir()):
            # what unapply leaves when files of the user's were in the node's folder: apply refuses it
            from ..apply import node_folder_hint
            out.append(f"  (the node's folder holds files not zpatch's: "
                       f"{node_folder_hint(top, folder, set(res['node']['files']))})")
        else:
            out.append(f"  (use `zpatch apply {co}` to apply what is missing or outdated)")
    if "conflict" in states:
        out.append("  (conflict: the patch does not apply to the files as they are; "
                   "`git diff` shows what differs from upstream)")
    if edited_after:
        again = " && ".join([*_put_aside(res), f"zpatch apply {co}"])
        unowned = [(u, f) for u in res["upstreams"] for f in u.get("unowned_edits", [])]
        untraced = [f for u in res["upstreams"] for f in u.get("untraced_edits", [])]
        if "outdated" in states:     # refresh refuses an edit over an older series; apply takes the new one
            fold = ""
        elif untraced and not unowned:     # status could not tell which patch owns them; refresh can
            fold = (f"`zpatch refresh --dry-run {co}` shows which patch each edit would go into (refresh asks, with "
                    "--into or --new, where no single patch owns one); ")
        elif unowned:                # refresh would ask where it goes: say both ways, as it would
            u, f = unowned[0]
            into = next(p["name"] for p in reversed(u["patches"]) if f in p["edited"])
            # --into names one patch, of one upstream: with such edits in two, only --new takes them all
            one = len({x["name"] for x, _ in unowned}) == 1
            fold = (f"no single patch owns the edit of {', '.join(x for _, x in unowned)} (upstream's own lines, "
                    "lines of two patches, or the file deleted): "
                    + (f"`zpatch refresh --into {shlex.quote(into)} {co}` folds every edit of {u['name']} into that "
                       "patch, " if one else "")
                    + f"`zpatch refresh --new 'Subject' {co}` {'into a new one' if one else 'every edit into a new patch of each upstream'}; ")
        else:
            fold = f"`zpatch refresh {co}` folds the edits into their patches and the overlay's node; "
        out.append(f"  (edited after apply: {fold}{'or ' if fold else ''}keep a copy of each edited file and let "
                   f"apply write it again: `{again}`)")
    if any(u["foreign_changes"] for u in res["upstreams"]):
        out.append("  (foreign changes are not zpatch's: your edits, or files a partial mirror left out)")
    return ["Not clean."] + out


@command("edit", "zpatch edit ./ComfyUI && git -C ./ComfyUI commit --amend",
         interrupted="rerun `{again}` to finish entering edit mode, or `zpatch unapply {co}` to leave it")
@click.argument("checkout", **CHECKOUT_ARG)
def edit_cmd(ctx, checkout):
    """Turn each upstream's patches into commits on a branch `zpatch/edit` over its pin, checked out,
    so they can be changed with plain git (commit --amend, new commits, rebase -i, drop). A checkout
    with the overlay applied is unapplied first. `zpatch export` writes the patches back."""
    from .. import edit
    res = edit.edit(ctx.overlay_root(for_writing=True), _path(checkout))
    lines = []
    for u in res["upstreams"]:
        lines.append(f"{u['name']}: {len(u['commits'])} commit(s) on {u['branch']} over {u['base'][:12]}")
        lines += [f"  {c['commit'][:12]} {c['patch']}" for c in u["commits"]]
    lines.append(f"Edit with git in each repository, then: zpatch export {shlex.quote(res['checkout'])}")
    ctx.emit(res, "\n".join(lines))


@command("refresh", "zpatch refresh ./ComfyUI --dry-run",
         interrupted="rerun `{again}`: it finishes what the interrupted one began", findings=True)
@click.argument("checkout", **CHECKOUT_ARG)
@click.option("--into", "into", metavar="PATCH", default=None,
              help="Put every edit into this patch (its file name), wherever its lines come from.")
@click.option("--new", "new", metavar="SUBJECT", default=None,
              help="Put every edit into a new patch with this subject, at the end of its series.")
@click.option("--dry-run", is_flag=True, help="Say which patch each edit would go into; write nothing.")
def refresh_cmd(ctx, checkout, into, new, dry_run):
    """Fold your edits of an applied checkout into the overlay, as `quilt refresh` does: each changed
    hunk goes into the patch that owns its lines (the one that last changed them), edits of the node
    go into the overlay's node, and upstream.lock follows. The checkout stays applied; a fresh
    checkout + apply then gives the same bytes. An edit on lines no single patch owns needs --into
    or --new."""
    from .. import refresh
    # a dry run resolves the overlay as the write would: its advice must not name one the write refuses
    res = refresh.refresh(ctx.overlay_root(for_writing=True), _path(checkout), into=into, new=new,
                          dry_run=dry_run)
    lines = [res["recovered"]] if res.get("recovered") else []
    for u in res["upstreams"]:
        if u["rerecorded"]:
            lines.append(f"{u['name']}: the checkout already holds the overlay's series; recorded it as applied")
        for h in u["hunks"]:
            lines.append(f"{u['name']}: {field(h['path'])} lines {h['lines'][0]}-{h['lines'][1]} -> {h['patch']}")
        lines += [f"  {p['state']:<9} {p['name']}" for p in u["patches"] if p["state"] != "unchanged"]
    lines += [f"node: {field(f)} -> the overlay's node" for f in res["node_files"]]
    for w in res["warnings"]:
        ctx.warn(w)
    wrote = res["changed"]
    if not wrote and not any(u["rerecorded"] for u in res["upstreams"]):
        lines.append("Nothing folded." if res["left_out"] else "Nothing to refresh: no file was edited since apply.")
    elif dry_run:
        lines.append(f"Dry run: nothing written. Fold them with: zpatch refresh {shlex.quote(res['checkout'])}"
                     + (f" --into {shlex.quote(into)}" if into else "") + (f" --new {shlex.quote(new)}" if new else ""))
    elif wrote:
        ov = shlex.quote(res["overlay"])
        lines.append(f"Refreshed the overlay ({res['overlay']}); the checkout stays applied. Review with "
                     f"`git -C {ov} status` and `git -C {ov} diff` (a new patch or node file is untracked), "
                     "then commit the overlay.")
    else:
        lines.append("Nothing to write in the overlay; the checkout is recorded as holding its series.")
    for x in res["left_out"]:
        lines.append(f"  not folded: {field(x['path'])} ({x['why']})")
    ctx.emit(res, "\n".join(lines))
    return Exit.FINDINGS if res["left_out"] else Exit.OK
