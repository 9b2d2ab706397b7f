"""`zpatch drift-publish`: what the scheduled drift job does on GitHub with the reports of `zpatch
drift --json`, one upstream at a time, through `gh pr`, `gh issue`, `gh label` and `git push` only.

Per upstream:
- a pull request on the branch `zpatch-drift/<upstream>` that moves the pin to the report's target
  (the head, or the newest commit that still passes). Its body ends in a marker with the target and
  the commit the job pushed: a rerun with the same target pushes and edits nothing; a new target
  updates the branch (push with a lease on the commit the job pushed last); a branch someone else
  pushed to is never overwritten (one comment says so) until a maintainer asks for a fresh one (the
  label `zpatch-drift:recreate` on the PR, or the workflow input `recreate`); a PR closed without
  merge means "not this target": it is skipped until upstream moves on.
- an issue when the upstream needs a person (a conflict, an upstreamed or obsolete patch, a failed
  smoke), edited only when its text changed, closed with a comment when the upstream is clean again.

The reports come from a job that ran upstream code: they are data, checked by drift_schema and
against this overlay's lock; their text reaches GitHub only through drift_report's escaping.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from . import cache, drift, drift_report, drift_schema, git, github, patchset, rebase
from .errors import Exit, ZpatchError
from .smoke.oneline import one_line

LABEL = "upstream-drift"
RECREATE_LABEL = "zpatch-drift:recreate"
NEEDS_PERSON = ("moved-conflict", "upstreamed", "smoke-failed")
_MARK = re.compile(r"<!-- zpatch-drift:(pr|issue|left) (\{[^<>]*\}) -->")
_BOT = {"GIT_AUTHOR_NAME": "zpatch drift", "GIT_AUTHOR_EMAIL": "zpatch-drift@users.noreply.github.com",
        "GIT_COMMITTER_NAME": "zpatch drift", "GIT_COMMITTER_EMAIL": "zpatch-drift@users.noreply.github.com"}
TOKEN_KINDS = ("app", "pat", "github-token")


def branch(name: str) -> str:
    return f"zpatch-drift/{name}"


def marker(kind: str, **fields) -> str:
    return f"<!-- zpatch-drift:{kind} {json.dumps(fields, sort_keys=True)} -->"


def read_marker(body: str | None, kind: str) -> dict | None:
    for k, payload in _MARK.findall(body or ""):
        if k == kind:
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _same(a: str | None, b: str | None) -> bool:
    """GitHub keeps a body as sent, but one edited in the browser comes back with CRLF."""
    def norm(s):
        return "\n".join(line.rstrip() for line in (s or "").replace("\r\n", "\n").split("\n")).strip()
    return norm(a) == norm(b)


def _pr_body(u: dict, *, target: str, pushed: str, token_kind: str, artifact: str | None) -> str:
    head = [f"Moves the pin of {drift_report._name(u['name'])} from {drift_report._sha(u['pin'])} to "
            f"{drift_report._sha(target)}" + (" (the head of its branch)." if target == u["head"] else
                                              f", the newest commit that passes; the head {drift_report._sha(u['head'])}"
                                              " does not (see below)."),
            "", "Opened by the upstream-drift job (`zpatch drift-publish`). A commit you push to this branch is "
            f"kept: the job stops updating it and says so. To get a fresh branch, add the label "
            f"`{RECREATE_LABEL}` or run the workflow with `recreate: {u['name']}`. Closing this pull request "
            "without merging skips this target until upstream moves again.", ""]
    if token_kind == "github-token":
        head += ["> [!NOTE]", "> Checks have not run on this pull request: it was opened with the workflow's "
                 "`GITHUB_TOKEN`, and GitHub starts no workflow for what that token does. Close and reopen it to "
                 "run them, or give the job a GitHub App or a token (README: *The upstream-drift job*).", ""]
    tail = "\n" + marker("pr", upstream=u["name"], target=target, pushed=pushed) + "\n"
    body = "\n".join(head) + "\n" + drift_report.upstream_section(u, level="##")
    return drift_report.fit(body, limit=drift_report.LIMIT - len(tail) - 2, artifact=artifact) + tail


def _issue_body(u: dict, *, artifact: str | None) -> str:
    tail = "\n" + marker("issue", upstream=u["name"]) + "\n"
    body = (f"The upstream-drift job found that {drift_report._name(u['name'])} needs a person. This issue is "
            "updated when the finding changes and closed when the upstream is clean again.\n\n"
            + drift_report.upstream_section(u, level="##"))
    return drift_report.fit(body, limit=drift_report.LIMIT - len(tail) - 2, artifact=artifact) + tail


def publish(root: Path, report_paths: list[Path], *, recreate: set[str] = frozenset(),
            token_kind: str = "github-token", remote: str = "origin", dry_run: bool = False,
            artifact: str | None = None) -> dict:
    """Validate every report first (a malformed one stops everything before any write), then publish
    upstream by upstream. A report that is a failed drift's error (a check leg that could not finish)
    is skipped and listed: the other upstreams are still published."""
    ov = patchset.load(root)
    series = {s.upstream.name: s for s in ov.series}
    unknown = sorted(set(recreate) - set(series))
    if unknown:
        raise ZpatchError(f"--recreate {', '.join(unknown)}: no such upstream in upstream.lock", Exit.USAGE,
                          hint="one of: " + ", ".join(series))
    reports, failed = [], []
    for path in report_paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            data = None
        err = drift_schema.failed_leg(data)
        if err is not None:
            failed.append({"report": str(path), "error": one_line(err)})
            continue
        reports.append(drift_schema.load_report(Path(path)))
    merged = drift_schema.merge(reports) if reports else {"upstreams": []}
    gh = github.Gh(dry_run=dry_run)
    base = git.run(["rev-parse", "HEAD"], cwd=root).stdout.strip()
    results = []
    if merged["upstreams"]:
        labels = {x["name"] for x in gh.read("label", "list", "--json", "name", "--limit", "200")}
        if LABEL not in labels:
            gh.write("label", "create", LABEL, "--description", "opened by the upstream-drift job",
                     "--color", "d4c5f9")
        issues = gh.read("issue", "list", "--label", LABEL, "--state", "all", "--json",
                         "number,title,body,state", "--limit", "200")
    for u in merged["upstreams"]:
        res = {"upstream": u["name"], "class": u["class"], "target": u.get("target"), "pr": None, "issue": None}
        results.append(res)
        why = _refuse(series.get(u["name"]), u)
        if why:
            res["pr"] = res["issue"] = f"skipped: {why}"
            continue
        res["pr"] = _pull_request(root, gh, u, series[u["name"]], base=base, remote=remote, token_kind=token_kind,
                                  recreate=u["name"] in recreate, dry_run=dry_run, artifact=artifact)
        res["issue"] = _issue(gh, u, issues, artifact=artifact)
    return {"base": base, "token_kind": token_kind, "dry_run": dry_run, "upstreams": results,
            "failed_legs": failed, "writes": gh.writes}


def _refuse(s, u: dict) -> str | None:
    """Why U (from a report) must not be published, checked against this overlay and a fresh fetch of
    the upstream: its pin must be the lock's, and its head and target commits on the first-parent
    line from the pin to the tracked branch's head (never a commit from another branch)."""
    if s is None:
        return f"{u['name']} is not an upstream of this overlay"
    up = s.upstream
    if up.commit != u["pin"]:
        return "the report was made for another pin (stale)"
    if u["class"] == "current" and u["head"] == up.commit:
        return None
    mirror, head_now = cache.resolve(up.url, up.commit, f"origin/{up.branch}")
    line = set(drift.first_parent_line(mirror, up.commit, head_now))
    for key in ("head", "target"):
        if u.get(key) and u[key] not in line:
            return f"its {key} {u[key][:12]} is not on the first-parent line of origin/{up.branch} after the pin"
    return None


def _pull_request(root: Path, gh: github.Gh, u: dict, s, *, base: str, remote: str, token_kind: str, recreate: bool,
                  dry_run: bool, artifact: str | None) -> str:
    name, target, br = u["name"], u.get("target"), branch(u["name"])
    prs = gh.read("pr", "list", "--head", br, "--state", "all", "--limit", "50",
                  "--json", "number,state,body,headRefOid,labels,comments,isCrossRepository")
    # `--head` matches a branch name in any fork: only this repository's own branch is the job's
    prs = [p for p in prs if not p.get("isCrossRepository")]
    ours = sorted((p for p in prs if read_marker(p.get("body"), "pr")), key=lambda p: -p["number"])
    open_pr = next((p for p in ours if p["state"] == "OPEN"), None)
    stranger = next((p for p in prs if p["state"] == "OPEN" and p not in ours), None)
    if stranger and not open_pr:       # its body lost the marker (edited by hand): not the job's to touch
        return f"left #{stranger['number']} (its body has no zpatch-drift marker, so the job leaves it alone)"
    if u["class"] == "current":
        if open_pr:
            gh.write("pr", "close", str(open_pr["number"]), "--comment",
                     f"{name} is current at its pin: nothing left to move. Closing.")
            return f"closed #{open_pr['number']} (current)"
        return "none (current)"
    if not target or target == u["pin"]:
        return "none (no commit to move to)"
    if open_pr:
        m = read_marker(open_pr["body"], "pr")
        asked = recreate or RECREATE_LABEL in {x["name"] for x in open_pr.get("labels") or []}
        foreign = open_pr.get("headRefOid") != m.get("pushed")
        n = str(open_pr["number"])
        if foreign and not asked:
            if not any(read_marker(c.get("body"), "left") for c in open_pr.get("comments") or []):
                gh.write("pr", "comment", n, body=(
                    f"This branch has commits the upstream-drift job did not push, so it leaves them alone and "
                    f"stops updating #{n}. To let it start afresh (your commits on the branch are replaced), add "
                    f"the label `{RECREATE_LABEL}` or run the workflow with `recreate: {name}`.\n\n"
                    + marker("left", upstream=name)))
                return f"left #{n} (someone else pushed to {br}; said so)"
            return f"left #{n} (someone else pushed to {br})"
        if m.get("target") == target and not foreign and not asked:
            body = _pr_body(u, target=target, pushed=m["pushed"], token_kind=token_kind, artifact=artifact)
            if _same(body, open_pr["body"]):
                return f"unchanged #{n}"
            gh.write("pr", "edit", n, body=body)
            return f"edited #{n}"
        pushed = _push(root, u, s, target, base=base, remote=remote, lease=open_pr.get("headRefOid") or "",
                       dry_run=dry_run)
        gh.write("pr", "edit", n, body=_pr_body(u, target=target, pushed=pushed, token_kind=token_kind,
                                                 artifact=artifact))
        if RECREATE_LABEL in {x["name"] for x in open_pr.get("labels") or []}:
            gh.write("pr", "edit", n, "--remove-label", RECREATE_LABEL)
        return f"updated #{n} to {target[:12]}" + (" (fresh branch)" if asked else "")
    for p in ours:
        m = read_marker(p["body"], "pr")
        if m.get("target") == target and p["state"] == "CLOSED" and not recreate:
            return f"skipped: #{p['number']} for {target[:12]} was closed without merge"
        if m.get("target") == target and p["state"] == "MERGED":
            return f"skipped: #{p['number']} for {target[:12]} was merged"
    lease = _remote_head(root, remote, br)
    if lease and not recreate and lease not in {read_marker(p["body"], "pr").get("pushed") for p in ours}:
        return (f"left {br} (it holds commits the job did not push and no pull request is open; "
                f"run the workflow with recreate: {name} to replace them)")
    pushed = _push(root, u, s, target, base=base, remote=remote, lease=lease, dry_run=dry_run)
    title = f"Move {name} to {target[:12]} (upstream drift)"
    out = gh.write("pr", "create", "--head", br, "--title", title, "--label", LABEL,
                   body=_pr_body(u, target=target, pushed=pushed, token_kind=token_kind, artifact=artifact))
    return _opened(out)


def _opened(url: str) -> str:
    """What `gh ... create` printed (the new URL) as '#N'."""
    return f"opened #{url.strip().rsplit('/', 1)[-1]}" if url.strip() else "opened (dry run)"


def _remote_head(root: Path, remote: str, br: str) -> str:
    r = git.run(["ls-remote", remote, f"refs/heads/{br}"], cwd=root, env=github.auth_env())
    return r.stdout.split()[0] if r.stdout.strip() else ""


def _push(root: Path, u: dict, s, target: str, *, base: str, remote: str, lease: str, dry_run: bool) -> str:
    """The overlay at BASE with U's series rebased onto TARGET, as one commit pushed to the job's
    branch; the push fails rather than overwrite anything but LEASE (what the branch held when read).
    The commit message holds only what this overlay's lock and git say, nothing from the report."""
    name, up = u["name"], s.upstream
    with tempfile.TemporaryDirectory(prefix="zpatch-publish-") as tmp:
        wt = Path(tmp) / Path(tmp).name       # a unique worktree name: two publishers never collide
        git.run(["worktree", "add", "--detach", "--quiet", str(wt), base], cwd=root)
        try:
            # offline: _refuse fetched this upstream moments ago
            res = rebase.start(wt, name, target, allow_unrelated=False, offline=True)
            if res.get("stopped"):
                rebase.resume(wt, "abort")
                raise ZpatchError(f"{name}: the series stopped at a conflict on {target[:12]}, which the report "
                                  "said it carries onto", Exit.CONFLICT, hint=f"zpatch drift --upstream {name} --to {target}")
            git.run(["add", "-A", "--", "."], cwd=wt)
            states = ", ".join(f"{p['name'].split('-', 1)[0]} {p['state']}" for p in res["patches"])
            msg = (f"Move {name} to {target[:12]} (upstream drift)\n\n"
                   f"{res['ahead']} upstream commit(s) on origin/{up.branch}; target {target}.\nPatches: {states}.\n")
            git.run(["commit", "--quiet", "--no-verify", "-F", "-"], cwd=wt, env=_BOT, input=msg)
            sha = git.run(["rev-parse", "HEAD"], cwd=wt).stdout.strip()
        finally:
            rebase.forget_throwaway(wt)
            git.run(["worktree", "remove", "--force", str(wt)], cwd=root, check=False)
    if not dry_run:
        git.run(["push", "--quiet", f"--force-with-lease=refs/heads/{branch(name)}:{lease}", remote,
                 f"{sha}:refs/heads/{branch(name)}"], cwd=root, env=github.auth_env())
    return sha


def _issue(gh: github.Gh, u: dict, issues: list[dict], *, artifact: str | None) -> str:
    name = u["name"]
    ours = [i for i in issues if (read_marker(i.get("body"), "issue") or {}).get("upstream") == name]
    mine = [i for i in ours if i.get("state") == "OPEN"]
    if u["class"] in NEEDS_PERSON:
        body = _issue_body(u, artifact=artifact)
        title = f"Upstream drift: {name} needs a person"
        if not mine:
            # a person closed the issue for this very finding: not reopened, not opened again daily
            closed = next((i for i in ours if _same(body, i.get("body"))), None)
            if closed:
                return f"skipped: #{closed['number']} with this finding was closed"
            out = gh.write("issue", "create", "--title", title, "--label", LABEL, body=body)
            return _opened(out)
        i = mine[0]
        if _same(body, i.get("body")) and i.get("title") == title:
            return f"unchanged #{i['number']}"
        gh.write("issue", "edit", str(i["number"]), "--title", title, body=body)
        return f"edited #{i['number']}"
    for i in mine:
        gh.write("issue", "close", str(i["number"]), "--comment",
                 f"{name} is {u['class']} again (pin {u['pin'][:12]}, head {u['head'][:12]}): closing.")
    return f"closed #{mine[0]['number']}" if mine else "none"
