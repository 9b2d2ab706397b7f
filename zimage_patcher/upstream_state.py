"""Where each patch stands with its upstream, in a small fixed vocabulary, read from the fields its
header already has: DEP-3's `Forwarded` and `Applied-Upstream`, and OpenEmbedded's `Upstream-Status`
(Pending, Submitted, Accepted, Backport, Denied, Inappropriate; plus Superseded, zpatch's own).

  not-forwarded  Forwarded: no                     Upstream-Status: Pending
  forwarded      Forwarded: <url>                  Upstream-Status: Submitted [<url>]
  merged         Applied-Upstream: <commit|url>    Upstream-Status: Accepted | Backport [...]
  superseded                                       Upstream-Status: Superseded [<what replaces it>]
  rejected                                         Upstream-Status: Denied [<url>]
  local-only     Forwarded: not-needed             Upstream-Status: Inappropriate [<reason>]

The strongest statement wins (merged over forwarded over not-forwarded), whichever field says it.
"""
from __future__ import annotations

import datetime
import re

from .patchfile import Patch

STATES = ("not-forwarded", "forwarded", "merged", "superseded", "rejected", "local-only")
_STATUS = {"pending": "not-forwarded", "submitted": "forwarded", "accepted": "merged", "backport": "merged",
           "superseded": "superseded", "denied": "rejected", "inappropriate": "local-only"}
_RANK = {"not-forwarded": 0, "forwarded": 1, "local-only": 2, "rejected": 3, "superseded": 4, "merged": 5}


def of(p: Patch) -> dict:
    """{state, where (a URL, commit or reason, or None), field (the header that said it)}."""
    found = [("not-forwarded", None, None)]
    fwd = p.headers.get("Forwarded")
    if fwd is not None:
        low = fwd.strip().lower()
        if low in ("no", ""):
            found.append(("not-forwarded", None, "Forwarded"))
        elif low == "not-needed":
            found.append(("local-only", None, "Forwarded"))
        else:
            found.append(("forwarded", fwd.strip(), "Forwarded"))
    status = p.headers.get("Upstream-Status")
    if status:
        m = re.match(r"\s*([A-Za-z-]+)\s*(?:\[(.*)\])?", status)
        state = _STATUS.get(m.group(1).lower()) if m else None
        if state:
            found.append((state, (m.group(2) or "").strip() or None, "Upstream-Status"))
    if p.headers.get("Applied-Upstream"):
        found.append(("merged", p.headers["Applied-Upstream"].strip(), "Applied-Upstream"))
    state, where, fld = max(reversed(found), key=lambda f: _RANK[f[0]])     # ties: the field that said it
    return {"state": state, "where": where, "field": fld}


def stats(p: Patch, today: datetime.date | None = None) -> dict:
    """What tells a maintainer which patch to forward first: its age in days (from Last-Update, else
    None), and the lines it adds and removes."""
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    age = None
    m = re.match(r"\s*(\d{4}-\d{2}-\d{2})", p.headers.get("Last-Update", ""))
    if m:
        try:
            age = (today - datetime.date.fromisoformat(m.group(1))).days
        except ValueError:
            age = None
    added = removed = 0
    in_diff = False
    for line in p.data.decode("utf-8", "replace").split("\n"):
        if line == "-- ":            # a mail signature (git's version) follows the diff
            break
        if line.startswith("diff --git "):
            in_diff = True
        elif in_diff and line.startswith("+") and not line.startswith("+++ "):
            added += 1
        elif in_diff and line.startswith("-") and not line.startswith("--- "):
            removed += 1
    return {"age_days": age, "lines_added": added, "lines_removed": removed}


def overlay_report(ov, *, offline: bool = False) -> dict:
    """Every patch of OV with its upstream state and statistics (`status --upstream-state`). A patch
    forwarded as a pull request of its upstream is asked about (pull_request): merged there, its state
    is merged."""
    from . import cache
    from .errors import ZpatchError
    survived = rebases_survived(ov)
    ups = []
    for s in ov.series:
        entries = []
        head = mirror = None
        for p in s.patches:
            e = {"name": p.name, "subject": p.subject, **of(p), **stats(p),
                 "rebases_survived": survived.get((s.upstream.name, p.name)), "pull_request": None}
            if e["state"] == "forwarded" and _PR.match(e["where"] or ""):
                try:
                    if mirror is None:
                        mirror, head = cache.resolve(s.upstream.url, s.upstream.commit, f"origin/{s.upstream.branch}",
                                                     offline=offline)
                    e["pull_request"] = pull_request(p, s.upstream.url, mirror, head, offline=offline)
                except ZpatchError:          # unreachable: the header's word stands
                    pass
                if (e["pull_request"] or {}).get("state") == "merged":
                    e.update(state="merged", field="pull request")
            entries.append(e)
        ups.append({"name": s.upstream.name, "url": s.upstream.url, "patches": entries})
    counts: dict[str, int] = {}
    for u in ups:
        for p in u["patches"]:
            counts[p["state"]] = counts.get(p["state"], 0) + 1
    return {"overlay": str(ov.root), "upstreams": ups, "counts": counts}


_PR = re.compile(r"^https://github\.com/([^/\s]+/[^/\s]+)/pull/(\d+)\b")


def pull_request(p: Patch, upstream_url: str, mirror, branch_head: str, *, offline: bool = False) -> dict | None:
    """For a patch forwarded as a pull request of its own upstream: whether that request is merged.
    Asks gh when it is there and has a token (it knows squash merges and closed requests), else git:
    the request's head (refs/pull/N/head) reachable from the branch's head means merged. None for a
    patch not forwarded as such a request."""
    import os
    import shutil
    from . import git, github
    st = of(p)
    m = _PR.match(st["where"] or "") if st["state"] == "forwarded" else None
    if not m or m.group(1).lower() != (github.slug(upstream_url) or "").lower():
        return None
    slug, number = m.group(1), int(m.group(2))
    if shutil.which("gh") and (os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN")) and not offline:
        try:
            info = github.Gh().read("pr", "view", str(number), "--repo", slug, "--json", "state,mergedAt")
            return {"number": number, "state": str(info.get("state", "")).lower() or "unknown", "checked_by": "gh"}
        except Exception:        # gh failed (rate limit, no access): git can still tell a merge
            pass
    ref = f"refs/zpatch/pull/{number}"
    if not offline:
        git.run(["fetch", "--quiet", upstream_url, f"+refs/pull/{number}/head:{ref}"], cwd=mirror, check=False,
                env={"GIT_TERMINAL_PROMPT": "0"})
    head = git.rev_parse(mirror, ref)
    if head is None:
        return {"number": number, "state": "unknown", "checked_by": "git"}
    merged = git.run(["merge-base", "--is-ancestor", head, branch_head], cwd=mirror, check=False).ok
    return {"number": number, "state": "merged" if merged else "not merged", "checked_by": "git"}


def rebases_survived(ov) -> dict[tuple[str, str], int]:
    """(upstream, patch name) -> how many times the upstream's pin moved since the patch file was first
    committed, read from the overlay's git history in one `git log` (empty when the overlay is not a
    git repository). A patch not committed yet has no entry."""
    from . import git
    # the neutral config (no colour, prefixes, renames or other diff settings of the user's) and paths
    # relative to the overlay, which may sit in a folder of a bigger repository
    r = git.run(git._neutral(["log", "--reverse", "--format=>>%H", "-p", "-U5", "--no-renames", "--no-color",
                              "--relative", "--no-ext-diff", "--", "upstream.lock",
                              *[s.upstream.patches for s in ov.series]]), cwd=ov.root, check=False, env=git._QUIET)
    if not r.ok:
        return {}
    by_dir = {s.upstream.patches.rstrip("/"): s.upstream.name for s in ov.series}
    moves: dict[str, int] = {}
    born: dict[tuple[str, str], int] = {}
    section, path, was = None, None, False
    for line in r.stdout.splitlines():
        if line.startswith("diff --git "):
            path = line.split(" b/", 1)[-1]
            section, was = None, False
        elif line.startswith("new file mode") and path:
            folder, _, name = path.rpartition("/")
            if folder in by_dir:
                born.setdefault((by_dir[folder], name), moves.get(by_dir[folder], 0))
        elif path == "upstream.lock" and line[:1] in (" ", "+", "-"):
            m = re.match(r"^[ +-]\[upstream\.([^\].]+)\]\s*$", line)
            if m:
                section, was = m.group(1), False
            elif line.startswith("-commit = "):
                was = True                   # a pin replaced, not the first one written
            elif line.startswith("+commit = ") and section and was:
                moves[section] = moves.get(section, 0) + 1
    return {key: moves.get(key[0], 0) - at for key, at in born.items()}
