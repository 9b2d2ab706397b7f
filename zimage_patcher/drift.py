"""`zpatch drift`: what upstream's movement means for the overlay, per upstream and per patch.

For each upstream: bring the cache up to the head of its tracked branch (refs and objects only),
count the commits ahead of the pin, list those that touched files the patches touch, and run the
dry-run rebase. Never changes a checkout, patches/ or upstream.lock.

Classes, worst first (the exit code is the worst class over all upstreams):
  smoke-failed    (7)  the series carries forward as text, but the smoke generation fails on it
  moved-conflict  (5)  a patch conflicts on the new head
  upstreamed     (11)  a patch is no longer needed: upstream has it, or its Obsolete-If probe fired
  moved-clean     (1)  upstream moved and the series carries forward (perhaps refreshed)
  current         (0)  the pin is the head of the branch
A patch can be upstreamed (its probe fired) and conflict at once; the report says both.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from . import cache, git, lock as lockmod, rebase
from .errors import Exit
from .patchset import Overlay

CLASSES = {"current": Exit.OK, "moved-clean": Exit.FINDINGS, "upstreamed": Exit.UPSTREAMED,
           "moved-conflict": Exit.CONFLICT, "smoke-failed": Exit.SMOKE_FAILED}
ORDER = ["current", "moved-clean", "upstreamed", "moved-conflict", "smoke-failed"]


def _classify(patches: list[dict], ahead: int) -> str:
    states = {p["state"] for p in patches}
    if ahead == 0:
        return "current"
    if "conflict" in states or any(p.get("files") for p in patches if p["state"] == "obsolete"):
        return "moved-conflict"
    if states & {"upstreamed", "obsolete"}:
        return "upstreamed"
    return "moved-clean"


def run(ov: Overlay, *, only: str | None = None, to: str | None = None, offline: bool = False,
        smoke: bool = False, python: str | None = None) -> dict:
    report = {"overlay": str(ov.root), "upstreams": [], "class": "current", "smoke": None}
    for s in ov.series:
        up = s.upstream
        if only and up.name != only:
            continue
        ref = to or f"origin/{up.branch}"
        mirror, head = cache.resolve(up.url, up.commit, ref, offline=offline)
        files = sorted({f for p in s.patches for f in p.files})
        touching = git.run(["log", "--format=%H %s", f"{up.commit}..{head}", "--", *files], cwd=mirror).stdout
        res = rebase.start(ov, up.name, ref, dry_run=True, offline=True, allow_unrelated=bool(to))
        patches = [{k: v for k, v in p.items() if k not in ("commit", "data_sha256")} for p in res["patches"]]
        for p in patches:
            if p["state"] == "obsolete" and p.get("files"):
                p["also_conflict"] = True
        entry = {"name": up.name, "url": up.url, "branch": up.branch, "ref": ref, "pin": up.commit, "head": head,
                 "ahead": res["ahead"], "touching": [dict(zip(("commit", "subject"), l.split(" ", 1)))
                                                     for l in touching.splitlines()],
                 "patches": patches, "class": _classify(patches, res["ahead"]), "smoke": None}
        report["upstreams"].append(entry)
    if smoke and any(u["class"] in ("moved-clean", "upstreamed") for u in report["upstreams"]):
        report["smoke"] = _smoke(ov, report, python=python, offline=offline)
        if not report["smoke"]["passed"]:
            for u in report["upstreams"]:
                if u["class"] in ("moved-clean", "upstreamed"):
                    u["class"] = "smoke-failed"
    if report["upstreams"]:
        report["class"] = max((u["class"] for u in report["upstreams"]), key=ORDER.index)
    report["exit_code"] = int(CLASSES[report["class"]])
    return report


def _smoke(ov: Overlay, report: dict, *, python: str | None, offline: bool) -> dict:
    """The rebased series on a scratch copy of the overlay, verified with the smoke generation."""
    from . import patchset, verify
    with tempfile.TemporaryDirectory(prefix="zpatch-drift-") as tmp:
        copy = Path(tmp) / "overlay"
        copy.mkdir()
        shutil.copy2(ov.root / lockmod.LOCK_NAME, copy / lockmod.LOCK_NAME)
        for s in ov.series:
            shutil.copytree(s.directory, copy / s.upstream.patches)
        if ov.lock.overlay:
            shutil.copytree(ov.root / ov.lock.overlay.source, copy / ov.lock.overlay.source)
        for u in report["upstreams"]:
            if u["class"] in ("moved-clean", "upstreamed"):
                rebase.start(patchset.load(copy), u["name"], u["head"], offline=True, allow_unrelated=True)
        res = verify.run(copy, offline=True, python=python, smoke=True)
    failed = next((s for s in res["steps"] if not s["ok"]), None)
    return {"passed": res["passed"], "steps": [{k: s[k] for k in ("step", "ok", "seconds", "summary")}
                                                 for s in res["steps"]],
            "failed_step": failed["step"] if failed else None}


_EMOJI = {"current": "current", "moved-clean": "moved, carries forward", "upstreamed": "a patch is no longer needed",
          "moved-conflict": "CONFLICT", "smoke-failed": "SMOKE FAILED"}


def _commit_line(c: str) -> str:
    return f"- `{c.split(' ', 1)[0][:12]}` {_md(c.split(' ', 1)[1] if ' ' in c else '')}"


def markdown(report: dict) -> str:
    """The report for a CI step summary, an issue or a pull request body."""
    out = [f"## Upstream drift: {report['class']}", ""]
    out += ["| upstream | pin | head | ahead | class |", "|---|---|---|---:|---|"]
    for u in report["upstreams"]:
        out.append(f"| {u['name']} ({u['ref']}) | `{u['pin'][:12]}` | `{u['head'][:12]}` | {u['ahead']} | "
                   f"{_EMOJI[u['class']]} |")
    for u in report["upstreams"]:
        if u["class"] == "current":
            continue
        out += ["", f"### {u['name']}", "", "| patch | result |", "|---|---|"]
        for p in u["patches"]:
            note = p["state"]
            if p.get("fired"):
                note += " (Obsolete-If: " + "; ".join(f"`{f}`" for f in p["fired"]) + ")"
            if p.get("also_conflict") or p["state"] == "conflict":
                note += (" and conflicts" if p["state"] == "obsolete" else "") + \
                    f" in {', '.join(f'`{f}`' for f in p.get('files', []))}"
            if p.get("probe_errors"):
                note += f" (probe not read: {'; '.join(p['probe_errors'])})"
            # a `|` splits a cell even inside backticks (a regex alternation in a probe, say)
            out.append(f"| `{_cell(p['name'])}` | {_cell(note)} |")
        for p in u["patches"]:
            if p.get("hunks"):       # the commits that touched the lines of each conflicting hunk
                for h in p["hunks"]:
                    out += ["", f"`{p['name']}` hunk #{h['hunk']} of `{h['file']}` (lines {h['lines'][0]}-"
                                f"{h['lines'][1]} upstream) was changed by:", ""]
                    out += [_commit_line(c) for c in h["upstream_commits"]]
            elif p.get("upstream_commits"):
                out += ["", f"Upstream commits that touched the files of `{p['name']}`:", ""]
                out += [_commit_line(c) for c in p["upstream_commits"]]
        if u["touching"]:
            out += ["", f"<details><summary>{len(u['touching'])} upstream commit(s) touched patched files</summary>", ""]
            out += [f"- `{c['commit'][:12]}` {_md(c.get('subject', ''))}" for c in u["touching"][:50]]
            out += ["", "</details>"]
    if report.get("smoke"):
        sm = report["smoke"]
        out += ["", f"Smoke on the rebased series: {'passed' if sm['passed'] else 'FAILED at ' + str(sm['failed_step'])}"]
    out += ["", f"Exit code {report['exit_code']}. Reproduce: `zpatch drift --markdown`; carry a series with "
                "`zpatch rebase UPSTREAM --onto REF`."]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    """Upstream's commit subjects are untrusted: no markup, no mentions, no HTML in a report."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>@~])", r"\\\1", text)


def outcome(report: dict) -> dict:
    """What the scheduled job does with REPORT: one pull request when the series moves clean, one
    issue when it needs a person (conflict, upstreamed patch, failed smoke), and the issue closed
    when drift is back to current. Keys are stable so reruns update instead of duplicating."""
    cls = report["class"]
    return {"class": cls,
            "pull_request": cls == "moved-clean",
            "issue": cls in ("moved-conflict", "upstreamed", "smoke-failed"),
            "close_issue": cls in ("current", "moved-clean"),
            "branch": "zpatch/upstream-drift",
            "issue_title": "Upstream drift needs attention",
            "pr_title": "Move the upstream pins (zpatch drift)",
            "label": "upstream-drift"}


def main(argv: list[str] | None = None) -> int:
    """For the workflow: `python -m zimage_patcher.drift markdown|outcome REPORT.json`. `outcome`
    prints GITHUB_OUTPUT lines (key=value) for the steps that open or update the PR or the issue."""
    import json
    import sys
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("markdown", "outcome"):
        print("usage: python -m zimage_patcher.drift markdown|outcome REPORT.json", file=sys.stderr)
        return 2
    report = json.loads(Path(args[1]).read_text(encoding="utf-8"))
    if args[0] == "markdown":
        sys.stdout.write(markdown(report))
    else:
        for k, v in outcome(report).items():
            print(f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
