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


def overlay_report(ov) -> dict:
    """Every patch of OV with its upstream state and statistics (`status --upstream-state`)."""
    ups = []
    for s in ov.series:
        ups.append({"name": s.upstream.name, "url": s.upstream.url,
                    "patches": [{"name": p.name, "subject": p.subject, **of(p), **stats(p)} for p in s.patches]})
    counts: dict[str, int] = {}
    for u in ups:
        for p in u["patches"]:
            counts[p["state"]] = counts.get(p["state"], 0) + 1
    return {"overlay": str(ov.root), "upstreams": ups, "counts": counts}
