"""The drift report as Markdown: a CI step summary, a pull request or an issue body.

Everything that came from upstream (commit subjects) or from a job that ran upstream code (smoke
errors and warnings, a saved report) is untrusted text: it is shown on one line, without control
characters, with Markdown, HTML and mentions escaped, and cut to a length. A body never exceeds
GitHub's 65,536 characters: a longer one is cut at a line with a note that names where the whole
report is.
"""
from __future__ import annotations

import re
import unicodedata

LIMIT = 65_536          # GitHub's limit for an issue, pull request or comment body
_WORDS = {"current": "current", "moved-clean": "moved, carries forward", "upstreamed": "a patch is no longer needed",
          "moved-conflict": "CONFLICT", "smoke-failed": "SMOKE FAILED"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


def clean(text, limit: int = 200) -> str:
    """One line of untrusted TEXT for Markdown: control and format characters (CR, LF, ESC, bidi
    overrides, line separators) shown as \\xNN, never passed on; markup, HTML and @mentions escaped."""
    text = str(text if text is not None else "")
    out = []
    for ch in text[: limit * 2]:
        if ch in "\t ":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    line = "".join(out)
    if len(line) > limit:
        line = line[:limit - 1] + "…"
    return re.sub(r"([\\`*_{}\[\]()#+!|<>@~&])", r"\\\1", line)


def _sha(c) -> str:
    return f"`{c[:12]}`" if isinstance(c, str) and re.fullmatch(r"[0-9a-f]{40}", c) else "`?`"


def _name(text) -> str:
    """A name shown in code (an upstream, a patch): only safe characters, or it is escaped text."""
    text = str(text)
    return f"`{text}`" if _SAFE_NAME.fullmatch(text) else clean(text)


def _commit_line(c: str) -> str:
    sha, _, subject = str(c).partition(" ")
    return f"- {_sha(sha)} {clean(subject)}"


def upstream_section(u: dict, *, level: str = "###") -> str:
    """One upstream: its class, pin -> head, each patch, what to blame, the target, the smoke,
    and the commands that reproduce the verdict."""
    out = [f"{level} {_name(u['name'])}: {_WORDS.get(u['class'], clean(u['class']))}", "",
           f"Pin {_sha(u['pin'])} -> head {_sha(u['head'])} of {clean(u.get('ref', ''))}: "
           f"{int(u.get('ahead') or 0)} commit(s) ahead."]
    if u["class"] == "current" and not u.get("smoke"):
        return "\n".join(out) + "\n"
    if u["class"] != "current":
        out += ["", "| patch | result |", "|---|---|"]
        for p in u["patches"]:
            note = clean(p.get("state", ""))
            if p.get("fired"):
                note += " (Obsolete-If: " + "; ".join(clean(f, 120) for f in p["fired"]) + ")"
            if p.get("also_conflict") or p.get("state") == "conflict":
                note += (" and conflicts" if p.get("state") == "obsolete" else "") + \
                    " in " + ", ".join(_name(f) for f in p.get("files", []))
            if p.get("probe_errors"):
                note += " (probe not read: " + "; ".join(clean(e, 120) for e in p["probe_errors"]) + ")"
            pr = (p.get("upstream") or {}).get("pull_request") or {}
            if pr.get("state") == "merged":
                note += f"; its pull request #{int(pr.get('number', 0))} is merged upstream: drop this patch at the next rebase"
            elif pr.get("state"):
                note += f"; forwarded as pull request #{int(pr.get('number', 0))} ({clean(pr['state'], 40)})"
            out.append(f"| {_name(p.get('name', '?'))} | {note} |")
        for p in u["patches"]:
            if p.get("hunks"):       # the commits that touched the lines of each conflicting hunk
                for h in p["hunks"]:
                    lines = h.get("lines") or [0, 0]
                    out += ["", f"{_name(p['name'])} hunk #{int(h.get('hunk', 0))} of {_name(h.get('file', '?'))} "
                                f"(lines {int(lines[0])}-{int(lines[1])} upstream) was changed by:", ""]
                    out += [_commit_line(c) for c in h.get("upstream_commits", [])]
            elif p.get("upstream_commits"):
                out += ["", f"Upstream commits that touched the files of {_name(p['name'])}:", ""]
                out += [_commit_line(c) for c in p["upstream_commits"]]
    adv = u.get("advance")
    if adv:
        out.append("")
        if adv.get("target"):
            out.append(f"**Partial advance:** the series still moves cleanly onto {_sha(adv['target'])} "
                       f"{clean(adv.get('target_subject'))} (commit {int(adv.get('target_index') or 0)} of "
                       f"{int(adv.get('line') or 0)} on the first-parent line), found in {int(adv['trials'])} "
                       "trial applies.")
        else:
            out.append(f"**Partial advance:** none: the series conflicts from the first commit after the pin "
                       f"({int(adv.get('trials') or 0)} trial applies).")
        if adv.get("first_bad"):
            out.append(f"The first commit that breaks it: {_sha(adv['first_bad'])} {clean(adv.get('first_bad_subject'))}"
                       + (f" (patch {_name(adv['first_bad_patch'])})" if adv.get("first_bad_patch") else "") + ".")
        elif adv.get("range"):
            out.append(f"The first commit that breaks it lies between {_sha(adv['range'][0])} and "
                       f"{_sha(adv['range'][1])} (the trial budget ran out).")
    sm = u.get("smoke")
    if sm:
        out += ["", _smoke_line(sm)]
        if sm.get("warnings"):
            out += ["", "Warnings (ComfyUI logs these and carries on):", ""]
            out += [f"- {_warning(w)}" for w in sm["warnings"][:20]]
        b = sm.get("bisect")
        if b:
            if b.get("first_bad"):
                out += ["", f"**Semantic bisect:** the smoke first fails at {_sha(b['first_bad'])} "
                            f"{clean(b.get('first_bad_subject'))}, found in {int(b['smokes'])} smoke(s)."]
            elif b.get("range"):
                out += ["", f"**Semantic bisect:** the smoke first fails between {_sha(b['range'][0])} and "
                            f"{_sha(b['range'][1])}; stopped after {int(b['smokes'])} smoke(s)."]
            out.append(f"The newest commit that passes: {_sha(b['last_good'])}." if b.get("last_good")
                       else "No commit after the pin passes.")
    if u["class"] != "current":
        out += ["", f"**Target for a pull request:** {_sha(u['target'])}." if u.get("target")
                else "**No commit to move to:** the pin stays."]
    touching = u.get("touching") or []
    if touching and u["class"] != "current":
        out += ["", f"<details><summary>{len(touching)} upstream commit(s) touched patched files</summary>", ""]
        out += [f"- {_sha(c.get('commit'))} {clean(c.get('subject', ''))}" for c in touching[:50]]
        out += ["", "</details>"]
    cmds = [c for c in u.get("reproduce") or [] if re.fullmatch(r"zpatch [A-Za-z0-9 ._/-]+", str(c))]
    if cmds:
        out += ["", "Reproduce:", "", "```sh", *cmds, "```"]
    return "\n".join(line for i, line in enumerate(out) if line or (i and out[i - 1])) + "\n"


def _warning(w) -> str:
    """A smoke warning ({stage, level, message}, or a plain string from an older report)."""
    if isinstance(w, dict):
        return f"{clean(w.get('stage') or '?', 40)}: {clean(w.get('message'), 300)}"
    return clean(w, 300)


def _smoke_line(sm: dict) -> str:
    at = _sha(sm.get("commit"))
    if sm.get("passed"):
        return f"**Smoke** on {at}: passed."
    f = sm.get("failure") or {}
    where = clean(f.get("step") or "?") + (f", stage {clean(f['stage'])}" if f.get("stage") else "")
    return f"**Smoke** on {at}: FAILED at {where}: {clean(f.get('error') or '(no message)', 300)}"


def markdown(report: dict, *, artifact: str | None = None) -> str:
    """The whole report: a table of every upstream, then a section per upstream."""
    out = [f"## Upstream drift: {clean(report['class'])}", "",
           "| upstream | class | pin | head | ahead | target |", "|---|---|---|---|---:|---|"]
    for u in report["upstreams"]:
        out.append(f"| {_name(u['name'])} | {_WORDS.get(u['class'], clean(u['class']))} | {_sha(u['pin'])} | "
                   f"{_sha(u['head'])} | {int(u.get('ahead') or 0)} | "
                   f"{_sha(u['target']) if u.get('target') else '-'} |")
    body = "\n".join(out) + "\n"
    for u in report["upstreams"]:
        body += "\n" + upstream_section(u)
    body += f"\nExit code {int(report.get('exit_code', 0))}.\n"
    return fit(body, artifact=artifact)


def fit(body: str, *, limit: int = LIMIT, artifact: str | None = None) -> str:
    """BODY cut at a line so that it and the note fit LIMIT (counted in UTF-16 units, as GitHub's
    JavaScript counts, which is never fewer than Python's characters)."""
    if _units(body) <= limit:
        return body
    note = ("\n\n_The report was cut here to fit GitHub's 65,536-character limit; the whole report is in "
            + (f"the workflow run's artifact `{clean(artifact, 80)}`" if artifact else "`zpatch drift --markdown`")
            + "._\n")
    room = limit - _units(note)
    lo, hi = 0, min(len(body), room)          # the longest prefix that fits, by bisection over characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _units(body[:mid]) <= room else (lo, mid - 1)
    cut = body[:lo]
    cut = cut[: cut.rfind("\n") + 1] if "\n" in cut else ""
    if cut.count("```") % 2:              # never leave a code block open
        cut = cut[: cut.rfind("```")]
    return cut + note


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
