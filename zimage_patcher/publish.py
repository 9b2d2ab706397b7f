"""`zpatch publish`: an upstream's series as a maintained fork branch, the pin plus one commit per patch,
for users who install the patched node by git URL and branch (as ComfyUI-Manager installs nodes)
instead of running zpatch.

The commits are made as `git am` would make them (each patch's author, date and message), with a fixed
committer whose date is the patch's own, so the same overlay always gives the same commit ids and
republishing an unchanged series pushes nothing. They are built in a scratch object store over the
cache's mirror; nothing is written locally. The branch is pushed with a lease (it is a generated
branch that follows the overlay, as a patch-queue export branch does, but a push made meanwhile by
someone else is not overwritten); a tag is never moved.
"""
from __future__ import annotations

import shlex
import tempfile

from . import cache, git, series_cache
from .errors import Exit, ZpatchError
from .patchset import Overlay


def publish(ov: Overlay, upstream: str, remote: str, *, branch: str | None = None, tag: str | None = None,
            dry_run: bool = False, offline: bool = False) -> dict:
    s = next((s for s in ov.series if s.upstream.name == upstream), None)
    if s is None:
        raise ZpatchError(f"{upstream}: no such upstream in {ov.root / 'upstream.lock'}", Exit.USAGE,
                          hint="one of: " + ", ".join(x.upstream.name for x in ov.series))
    branch = branch or f"zpatch/{upstream}"
    for ref in (f"refs/heads/{branch}", *([f"refs/tags/{tag}"] if tag else [])):
        if not git.run(["check-ref-format", ref], check=False).ok:
            raise ZpatchError(f"{ref}: not a valid git ref name", Exit.USAGE, hint="choose another --branch or --tag")
    mirror = cache.ensure(s.upstream.url, s.upstream.commit, offline=offline)
    with tempfile.TemporaryDirectory(prefix="zpatch-publish-") as tmp:
        idx = git.ScratchIndex(mirror, tmp, read_only=True)
        commits = series_cache.commit_patches(idx, s.upstream.commit, [p.path for p in s.patches])
        tip = commits[-1] if commits else s.upstream.commit
        remote_refs = git.remote_refs(remote, [f"refs/heads/{branch}", *([f"refs/tags/{tag}"] if tag else [])])
        before = remote_refs.get(f"refs/heads/{branch}")
        result = {"upstream": upstream, "remote": git.redact(remote), "branch": branch, "commit": tip, "before": before,
                  "commits": [{"commit": c, "patch": p.name} for c, p in zip(commits, s.patches)],
                  "pushed": False, "forced": False, "tag": tag, "dry_run": dry_run,
                  "install": f"git clone --branch {shlex.quote(branch)} {shlex.quote(git.redact(remote))} "
                             + shlex.quote(s.upstream.path.rsplit('/', 1)[-1] if s.upstream.path != '.' else 'ComfyUI')}
        old_tag = remote_refs.get(f"refs/tags/{tag}") if tag else None
        if tag and old_tag not in (None, tip):
            raise ZpatchError(f"{git.redact(remote)}: tag {tag} already names {old_tag[:12]}, not this series ({tip[:12]})",
                              Exit.CONFLICT, hint="a published tag is never moved: choose another --tag")
        if before is not None and before != tip and not _published_by_us(idx, remote, branch, before):
            q = shlex.quote
            raise ZpatchError(f"{git.redact(remote)}: {branch} holds commits publish did not make (its tip {before[:12]}); "
                              "publishing would drop them", Exit.CONFLICT,
                              hint=f"look at them (git fetch {q(git.redact(remote))} {q(branch)} && git log -p FETCH_HEAD), "
                                   "then publish to another branch (--branch NAME)")
        specs = []
        if before != tip:
            result["forced"] = before is not None and not _contains(idx, tip, before)
            specs.append(f"{tip}:refs/heads/{branch}")
        if tag and old_tag is None:
            specs.append(f"{tip}:refs/tags/{tag}")
        if specs and not dry_run:
            git.push_with_lease(mirror, remote, specs, f"refs/heads/{branch}", before, env=idx.env)
            result["pushed"] = True
        result["would_push"] = bool(specs)
    return result


def _contains(idx: git.ScratchIndex, tip: str, old: str) -> bool:
    """OLD is an ancestor of TIP (a fast-forward), as far as the objects here can tell."""
    return idx.run(["merge-base", "--is-ancestor", old, tip], check=False).ok


def _published_by_us(idx: git.ScratchIndex, remote: str, branch: str, tip: str) -> bool:
    """REMOTE's BRANCH, at TIP, is a branch publish made: its tip has publish's committer (fetched into the
    scratch store to look). Anyone's commit on top of it is theirs, and is not pushed over."""
    r = idx.run(["fetch", "--quiet", "--no-tags", remote, f"refs/heads/{branch}"], check=False,
                env={"GIT_TERMINAL_PROMPT": "0"})
    if not r.ok:
        return False
    who = idx.run(["log", "-1", "--format=%cn <%ce>", tip], check=False).stdout.strip()
    return who == f"{git.COMMITTER[0]} <{git.COMMITTER[1]}>"
