"""`zpatch import`: an upstream pull request (refs/pull/N/head) or any upstream commit or range carried
as patches of the overlay, until upstream releases it. Each commit is applied 3-way at the chosen place
of the series on the pin (in a scratch index over the cache's mirror), keeps its author, date and
message, and gets the DEP-3 fields the overlay needs: `Origin: upstream, <url>`, `Forwarded: <url>`
(it is upstream's own request), `Applied-Upstream: <url>` when the upstream branch already has it,
`Last-Update` and the series' `Upstream-License`. The patches after it must still apply. Everything is
written through the overlay's front door (patch files, series, upstream.lock in one transaction).
Rebase and drift treat an imported patch like any other; once upstream has it, rebase calls it
upstreamed and drops it.
"""
from __future__ import annotations

import datetime
import tempfile

from . import cache, git, github, locks, overlay_write, patchfile, patchset, series as seriesmod
from .errors import Exit, ZpatchError


def _url(upstream_url: str, *, pr: int | None = None, commit: str | None = None) -> str:
    slug = github.slug(upstream_url)
    if slug:
        return f"https://github.com/{slug}/pull/{pr}" if pr is not None else f"https://github.com/{slug}/commit/{commit}"
    return f"{upstream_url} {'pull request ' + str(pr) if pr is not None else commit}"


def import_patches(root, upstream: str, *, pr: int | None = None, rev: str | None = None, after: str | None = None,
                   dry_run: bool = False, offline: bool = False) -> dict:
    if (pr is None) == (rev is None):
        raise ZpatchError("say what to import: --pr N or a commit/range", Exit.USAGE,
                          hint=f"zpatch import {upstream} --pr 402   or   zpatch import {upstream} <commit>")
    if pr is not None and pr < 1:
        raise ZpatchError(f"--pr {pr}: pull requests are numbered from 1", Exit.USAGE, hint="give its number")
    with overlay_write.hold(root, "import") as writer:
        ov = patchset.load(root)
        s = next((s for s in ov.series if s.upstream.name == upstream), None)
        if s is None:
            raise ZpatchError(f"{upstream}: no such upstream in {ov.root / 'upstream.lock'}", Exit.USAGE,
                              hint="one of: " + ", ".join(x.upstream.name for x in ov.series))
        names = [p.name for p in s.patches]
        at = len(names) if after is None else _position(names, after)
        up = s.upstream
        mirror, branch_head = cache.resolve(up.url, up.commit, f"origin/{up.branch}", offline=offline)
        commits, origin = _commits(mirror, up, branch_head, pr=pr, rev=rev)
        merged = all(git.run(["merge-base", "--is-ancestor", c, branch_head], cwd=mirror, check=False).ok
                     for c in commits)
        fields = {"Origin": f"upstream, {origin}", "Forwarded": origin,
                  **({"Applied-Upstream": origin} if merged else {}),
                  "Last-Update": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
        lic = next((p.headers["Upstream-License"] for p in s.patches if "Upstream-License" in p.headers), None)
        if lic:
            fields["Upstream-License"] = lic
        new = _carry(s, mirror, commits, at, fields)
        taken = set(names)
        for name, _data in new:
            if name in taken:
                raise ZpatchError(f"{s.directory / name}: exists; the imported commit would take its name",
                                  Exit.CONFLICT, hint="rename the existing patch (and its series entry), then rerun")
            taken.add(name)
        order = names[:at] + [n for n, _d in new] + names[at:]
        result = {"upstream": upstream, "origin": origin, "merged_upstream": merged, "dry_run": dry_run,
                  "patches": [{"name": n, "commit": c} for (n, _d), c in zip(new, commits)], "series": order,
                  "recovered": writer.recovered}
        if dry_run:
            return result
        files: dict[str, bytes | None] = {f"{up.patches}/{n}": d for n, d in new}
        rel = f"{up.patches}/{seriesmod.SERIES_NAME}"
        files[rel] = overlay_write.render_series(ov.root, rel, order)
        hashes = {p.name: p.sha256 for p in s.patches}
        hashes.update({n: patchfile.parse(n, d).sha256 for n, d in new})
        writer.commit(files, overlay_write.new_lock(ov, {upstream: hashes}))
    return result


def _position(names: list[str], after: str) -> int:
    hits = [i for i, n in enumerate(names) if n == after or n.split("-", 1)[0].lstrip("0") == after.lstrip("0")]
    if len(hits) != 1:
        raise ZpatchError(f"--after {after}: no single patch of that name or number", Exit.USAGE,
                          hint="one of: " + ", ".join(names))
    return hits[0] + 1


def _commits(mirror, up, branch_head: str, *, pr: int | None, rev: str | None) -> tuple[list[str], str]:
    """The upstream commits to import (oldest first, merges left out) and the URL they come from."""
    if pr is not None:
        ref = f"refs/zpatch/pull/{pr}"
        with locks.mirror(mirror):
            r = git.run(["fetch", "--quiet", up.url, f"+refs/pull/{pr}/head:{ref}"], cwd=mirror, check=False,
                        env={"GIT_TERMINAL_PROMPT": "0"})
        if not r.ok:
            raise ZpatchError(f"{up.url}: no pull request {pr} ({r.last_line()})", Exit.UNREACHABLE,
                              hint=f"check the number on {_url(up.url, pr=pr)}")
        head = git.rev_parse(mirror, ref)
        commits = _pr_commits(mirror, head, branch_head)
        if commits is None:
            raise ZpatchError(f"pull request {pr} is merged into {up.branch} without a merge commit, so its first "
                              "commit cannot be told from the branch's", Exit.USAGE,
                              hint=f"name its commits as a range: zpatch import {up.name} <commit before it>..{head[:12]}")
        if not commits:
            raise ZpatchError(f"pull request {pr} has no commits of its own to import", Exit.USAGE,
                              hint=f"look at it: {_url(up.url, pr=pr)}")
        return commits, _url(up.url, pr=pr)
    if ".." in rev:
        a, b = rev.split("..", 1)
        ca, cb = git.rev_parse(mirror, a), git.rev_parse(mirror, b)
        if not ca or not cb:
            raise ZpatchError(f"{rev}: not a range of {up.url}'s commits", Exit.USAGE,
                              hint=f"list them with: git -C {mirror} log --oneline origin/{up.branch}")
        commits = git.rev_list(mirror, f"{ca}..{cb}", "--no-merges")
        if not commits:
            raise ZpatchError(f"{rev}: no commits in that range", Exit.USAGE, hint="name the older end first: A..B")
        return commits, _url(up.url, commit=cb)
    c = git.rev_parse(mirror, rev)
    if not c:
        raise ZpatchError(f"{rev}: no such commit in {up.url}", Exit.USAGE,
                          hint=f"list them with: git -C {mirror} log --oneline origin/{up.branch}")
    if len(git.run(["rev-list", "--parents", "-n1", c], cwd=mirror).stdout.split()) > 2:
        raise ZpatchError(f"{rev}: a merge commit; zpatch imports the commits it merged", Exit.USAGE,
                          hint=f"zpatch import {up.name} {c[:12]}^1..{c[:12]}^2")
    return [c], _url(up.url, commit=c)


def _pr_commits(mirror, head: str, branch_head: str) -> list[str] | None:
    """The commits of a pull request whose head is HEAD, oldest first, merges left out. Open: those the
    branch lacks. Merged with a merge commit M (the oldest first-parent commit of the branch that has
    HEAD): M^1..HEAD. Merged without one (fast-forward, rebase): None, its start is not in the graph."""
    if not git.run(["merge-base", "--is-ancestor", head, branch_head], cwd=mirror, check=False).ok:
        base = git.run(["merge-base", head, branch_head], cwd=mirror).stdout.strip()
        return git.rev_list(mirror, f"{base}..{head}", "--no-merges")
    line = git.rev_list(mirror, f"{head}..{branch_head}", "--first-parent", "--ancestry-path")
    if not line:
        return None                           # HEAD is the branch's head itself
    parents = git.run(["rev-list", "--parents", "-n1", line[0]], cwd=mirror).stdout.split()[1:]
    if len(parents) < 2 or head in parents[:1]:
        return None                           # HEAD is on the first-parent line: no merge commit
    return git.rev_list(mirror, f"{parents[0]}..{head}", "--no-merges")


def _carry(s, mirror, commits: list[str], at: int, fields: dict[str, str]) -> list[tuple[str, bytes]]:
    """COMMITS as patch files at position AT of series S on its pin, each applied 3-way; the patches
    after AT must still apply after them. Their names and bytes."""
    out = []
    with locks.mirror(mirror), tempfile.TemporaryDirectory(prefix="zpatch-import-") as tmp:
        idx = git.ScratchIndex(mirror, tmp)     # the new commits go into the mirror: format-patch names them
        before = idx.commit_patches(s.upstream.commit, [p.path for p in s.patches[:at]])
        parent = before[-1] if before else s.upstream.commit
        idx.read_tree(parent)
        for i, c in enumerate(commits):
            mail = idx.format_patch(c)
            path = f"{tmp}/import-{i}.patch"
            with open(path, "wb") as f:
                f.write(mail)
            r = idx.apply([path], three_way=True)
            files = patchfile.parse(c[:12], mail).files
            unmerged = sorted(f for f, e in idx.entries(files).items() if e[2])
            if not r.ok or unmerged:
                raise ZpatchError(f"{c[:12]}: does not apply at place {at + 1} of the {s.upstream.name} series on its pin"
                                  + (f": conflicts in {', '.join(unmerged)}" if unmerged else f": {r.last_line()}"),
                                  Exit.CONFLICT, hint="import it at another place (--after PATCH), or rebase the "
                                                      "series onto a newer upstream commit first")
            tree = idx.run(["write-tree", "--missing-ok"]).stdout.strip()
            if tree == git.rev_parse(mirror, f"{parent}^{{tree}}", "tree"):
                raise ZpatchError(f"{c[:12]}: its change is already in the {s.upstream.name} series at place {at + 1}",
                                  Exit.USAGE, hint="nothing to import; `zpatch status --upstream-state` lists the "
                                                   "series")
            parent = idx.commit_tree(tree, parent, path)
            data = idx.format_patch(parent)
            for key, value in fields.items():
                data = patchfile.set_field(data, key, value)
            name = git.format_patch_name(mirror, parent, at + i + 1)
            out.append((name, data))
        for p in s.patches[at:]:
            r = idx.apply([p.path])
            if not r.ok:
                raise ZpatchError(f"{p.name}: no longer applies after the imported commits: {r.last_line()}",
                                  Exit.CONFLICT, hint="import them after it (--after " + p.name + ")")
    return out
