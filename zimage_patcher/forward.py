"""`zpatch forward`: patches on their way out of the overlay. The chosen patches become commits on
the upstream branch's head, made in a scratch index over the cache's mirror (never in anyone's
checkout): each with its patch's author, date, subject and description, and without the fields that
are the overlay's bookkeeping (Origin, Forwarded, Last-Update, Upstream-License, Obsolete-If...).
They are kept in the mirror as refs/zpatch/forward/<branch>; `--push` puts them on a fork (with a
lease, as publish does), `--pr` opens the pull request with `gh`, and the PR's URL (or one given with
`--forwarded`) is written into the patches' `Forwarded:` field through the overlay's front door, so
`status --upstream-state`, drift and export carry it from then on.
"""
from __future__ import annotations

import re
import shlex
import tempfile
from pathlib import Path

from . import cache, git, github, locks, overlay_write, patchfile, patchset
from .errors import Exit, ZpatchError
from .patchfile import Patch
from .patchset import Series

# the overlay's own bookkeeping in a patch message: not for upstream's eyes
_BOOKKEEPING = ("Origin", "Forwarded", "Last-Update", "Upstream-License", "Obsolete-If", "Upstream-Status",
                "Applied-Upstream")


def select(s: Series, wanted: list[str]) -> list[Patch]:
    """The patches of S named by WANTED (a file name, or its number as in 0002 or 2), in series order."""
    out = []
    for w in wanted:
        hits = [p for p in s.patches if p.name == w or p.name.split("-", 1)[0].lstrip("0") == w.lstrip("0")
                or p.name.startswith(w + "-")]
        if len(hits) != 1:
            raise ZpatchError(f"{w}: {'no' if not hits else 'more than one'} patch of {s.upstream.name} matches",
                              Exit.USAGE, hint="one of: " + ", ".join(p.name for p in s.patches))
        out.append(hits[0])
    return [p for p in s.patches if p in out]


def upstream_message(repo: Path, p: Patch) -> str:
    """P's commit message for upstream: its subject and description, the overlay's fields left out."""
    info = git.mailinfo(repo, p.path)
    body = "\n".join(line for line in info.get("body", "").split("\n")
                     if line.split(":", 1)[0] not in _BOOKKEEPING or ":" not in line)
    return git.stripspace(info.get("subject", "") + "\n\n" + body)


def forward(root: Path, upstream: str, wanted: list[str], *, onto: str | None = None, branch: str | None = None,
            push: str | None = None, pr: bool = False, forwarded: str | None = None, dry_run: bool = False,
            offline: bool = False) -> dict:
    ov = patchset.load(root)
    s = next((s for s in ov.series if s.upstream.name == upstream), None)
    if s is None:
        raise ZpatchError(f"{upstream}: no such upstream in {ov.root / 'upstream.lock'}", Exit.USAGE,
                          hint="one of: " + ", ".join(x.upstream.name for x in ov.series))
    chosen = select(s, wanted)
    if pr and not push:
        raise ZpatchError("--pr needs --push REMOTE: the pull request's branch lives on your fork", Exit.USAGE,
                          hint=f"zpatch forward {upstream} {' '.join(wanted)} --push <your fork's URL> --pr")
    if pr and forwarded is not None:
        raise ZpatchError("--pr and --forwarded exclude each other: the PR's URL is recorded", Exit.USAGE,
                          hint="give one of them")
    if forwarded is not None and not re.fullmatch(r"[!-~]+", forwarded):
        raise ZpatchError(f"--forwarded {forwarded!r}: not a URL (printable ASCII, no spaces)", Exit.USAGE,
                          hint="give the pull request's URL, e.g. https://github.com/city96/ComfyUI-GGUF/pull/402")
    if push is not None:
        git.check_remote(push)
    target = github.slug(s.upstream.url)
    fork = github.slug(push) if push else None
    if pr and (target is None or fork is None):
        raise ZpatchError(f"--pr opens GitHub pull requests; {s.upstream.url if target is None else push} is not a "
                          "GitHub repository URL", Exit.USAGE, hint="push without --pr and open the request by hand, "
                                                                    "then record it with --forwarded URL")
    branch = branch or f"zpatch-forward/{chosen[0].name.removesuffix('.patch')}"
    if not git.run(["check-ref-format", f"refs/heads/{branch}"], check=False).ok:
        raise ZpatchError(f"{branch}: not a valid branch name", Exit.USAGE, hint="choose another --branch")
    ref = onto or f"origin/{s.upstream.branch}"
    mirror, head = cache.resolve(s.upstream.url, s.upstream.commit, ref, offline=offline)
    commits = _commits(s, mirror, head, ref, chosen)
    tip = commits[-1]["commit"]
    result = {"upstream": upstream, "onto": head, "onto_ref": ref, "branch": branch, "commits": commits,
              "commit": tip, "mirror": str(mirror), "ref": f"refs/zpatch/forward/{branch}", "dry_run": dry_run,
              "pushed": None, "pr": None, "pr_reused": False, "forwarded": forwarded, "written": []}
    if dry_run:
        return result
    ours = git.rev_parse(mirror, result["ref"])          # what the last forward of this branch made
    before = None
    if push:
        before = git.remote_refs(push, [f"refs/heads/{branch}"]).get(f"refs/heads/{branch}")
        if before is not None and before not in (tip, ours):
            q = shlex.quote
            raise ZpatchError(f"{git.redact(push)}: {branch} holds commits forward did not make (its tip "
                              f"{before[:12]}); pushing would drop them", Exit.CONFLICT,
                              hint=f"look at them (git fetch {q(git.redact(push))} {q(branch)} && git log -p FETCH_HEAD), "
                                   "then forward to another branch (--branch NAME)")
    with locks.mirror(mirror):
        git.run(["update-ref", result["ref"], tip], cwd=mirror)
    if push:
        if before != tip:
            git.push_with_lease(mirror, push, [f"{tip}:refs/heads/{branch}"], f"refs/heads/{branch}", before,
                                env=github.auth_env())
        result["pushed"] = {"remote": git.redact(push), "before": before, "changed": before != tip}
    if pr:
        result["pr"], result["pr_reused"] = _open_pr(s, target, fork, branch, head, chosen)
        result["forwarded"] = result["pr"]
    if result["forwarded"]:
        result["written"] = record_forwarded(root, upstream, [p.name for p in chosen], result["forwarded"])
    return result


def _commits(s: Series, mirror: Path, head: str, ref: str, chosen: list[Patch]) -> list[dict]:
    """CHOSEN as commits on HEAD (objects into the mirror); a patch that does not apply 3-way stops it."""
    ident = git.run(["var", "GIT_COMMITTER_IDENT"], cwd=mirror, check=False)
    out, parent = [], head
    with locks.mirror(mirror), tempfile.TemporaryDirectory(prefix="zpatch-forward-") as tmp:
        idx = git.ScratchIndex(mirror, tmp)
        idx.read_tree(head)
        for p in chosen:
            r = idx.apply([p.path], three_way=True)
            unmerged = sorted(f for f, e in idx.entries(p.files).items() if e[2])
            if not r.ok or unmerged:
                touched = git.commits_touching(mirror, s.upstream.commit, head, unmerged or p.files, limit=5)
                raise ZpatchError(
                    f"{p.name}: does not apply on {s.upstream.name} {ref} ({head[:12]})"
                    + (f": conflicts in {', '.join(unmerged)}" if unmerged else f": {r.last_line()}"),
                    Exit.CONFLICT, details={"files": unmerged, "upstream_commits": touched},
                    hint=(f"carry the series there first (zpatch rebase {s.upstream.name} --onto {ref}), or forward "
                          "the patches it builds on with it"
                          + (f"; upstream commits that touched those files: {', '.join(c[:12] for c in touched)}"
                             if touched else "")))
            tree = idx.run(["write-tree"]).stdout.strip()
            info = git.mailinfo(mirror, p.path)
            # dated as the patch: the same patches on the same head give the same commits, so a second
            # forward pushes nothing and leaves the pull request alone
            env = {"GIT_AUTHOR_NAME": info.get("author", ""), "GIT_AUTHOR_EMAIL": info.get("email", ""),
                   "GIT_AUTHOR_DATE": info.get("date", ""), "GIT_COMMITTER_DATE": info.get("date", "")}
            if not (ident.ok and ident.stdout.strip()):      # no identity of the user's: the author commits
                env.update(GIT_COMMITTER_NAME=env["GIT_AUTHOR_NAME"], GIT_COMMITTER_EMAIL=env["GIT_AUTHOR_EMAIL"])
            parent = idx.run(["commit-tree", tree, "-p", parent, "-F", "-"], env=env,
                             input=upstream_message(mirror, p)).stdout.strip()
            out.append({"patch": p.name, "commit": parent, "subject": p.subject})
    return out


def _open_pr(s: Series, target: str, fork: str, branch: str, head: str, chosen: list[Patch]) -> tuple[str, bool]:
    """The pull request of BRANCH (on FORK) against the upstream's branch: its URL, and whether it was
    open already (then the push updated it)."""
    first = chosen[0]
    title = first.subject if len(chosen) == 1 else f"{first.subject} (and {len(chosen) - 1} more)"
    parts = []
    for p in chosen:
        parts.append(f"### {p.subject}\n\n{_description(p)}")
    body = ("\n\n".join(parts) + "\n\n---\n"
            f"How it was tested: carried as a patch of the zimage-patcher overlay on {s.upstream.commit[:12]}, "
            "where its smoke generation (a Z-Image graph with a Gemma 3 GGUF text encoder and the Wan VAE, "
            f"run by `zpatch verify`) passes; here it was applied 3-way onto {head[:12]} and committed, not run.\n")
    gh = github.Gh()
    owner = fork.split("/")[0]
    open_ = gh.read("pr", "list", "--repo", target, "--head", branch, "--state", "open", "--json",
                    "url,headRefName,headRepositoryOwner")
    # --head matches the branch name only: a stranger's request from a branch of that name is not ours
    mine = [p for p in open_ or [] if ((p.get("headRepositoryOwner") or {}).get("login") or "").lower() == owner.lower()]
    if mine:                       # forwarded before: the push updated that request
        return mine[0]["url"], True
    url = gh.write("pr", "create", "--repo", target, "--head", f"{owner}:{branch}",
                   "--base", s.upstream.branch, "--title", title, body=body)
    return (url.strip().splitlines()[-1] if url.strip() else ""), False


def _description(p: Patch) -> str:
    """P's description: the message between the subject and the diff, the bookkeeping fields left out."""
    text = p.data.decode("utf-8", "replace")
    head = text.split("\ndiff --git ", 1)[0]
    body = head.split("\n\n", 1)[1] if "\n\n" in head else ""
    body = body.split("\n---\n", 1)[0]
    keep = [line for line in body.split("\n") if not (":" in line and line.split(":", 1)[0] in _BOOKKEEPING)]
    return "\n".join(keep).strip()


def record_forwarded(root: Path, upstream: str, names: list[str], where: str) -> list[str]:
    """Write `Forwarded: WHERE` into the patches NAMES of UPSTREAM, through the front door (their hashes
    into upstream.lock in the same transaction). The overlay files that changed."""
    if not re.fullmatch(r"[!-~]+", where):
        raise ZpatchError(f"{where!r}: not a URL (printable ASCII, no spaces)", Exit.USAGE,
                          hint="give the pull request's URL")
    with overlay_write.hold(root, "forward") as writer:
        ov = patchset.load(root)
        s = next(s for s in ov.series if s.upstream.name == upstream)
        files, hashes = {}, {p.name: p.sha256 for p in s.patches}
        for p in s.patches:
            if p.name in names:
                data = patchfile.set_field(p.data, "Forwarded", where)
                if data != p.data:
                    data = patchfile.stamp_last_update(data)
                    files[f"{s.upstream.patches}/{p.name}"] = data
                    hashes[p.name] = patchfile.parse(p.name, data).sha256
        writer.commit(files, overlay_write.new_lock(ov, {upstream: hashes}))
    return sorted(files)


def hint_for(result: dict) -> str:
    """What to do next, as commands."""
    m, ref = shlex.quote(result["mirror"]), shlex.quote(result["ref"])
    return f"look at it: git -C {m} log -p {result['onto'][:12]}..{ref}"
