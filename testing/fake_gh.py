"""A recording, stateful stand-in for the `gh` CLI (pull requests, issues, labels), for tests.

`install(bin_dir, state, origin)` writes an executable `gh` into bin_dir (this file run by the
current interpreter) and returns the environment to add (FAKE_GH_STATE, FAKE_GH_ORIGIN; put bin_dir
on PATH yourself). All state is one JSON file, rewritten atomically under an fcntl lock, so
concurrent calls never lose each other's writes. `FakeGitHub(state)` reads it and acts as a human.

Behaves like gh 2.x: needs GH_TOKEN or GITHUB_TOKEN (else exit 4 with gh's message); flags are
parsed as cobra/pflag do (`--f v`, `--f=v`, `-f v`, `-fv`, comma-split list flags, "unknown flag:
--x", "flag needs an argument"); `--repo/-R` or GH_REPO, else the cwd's git remote must point at the
fake origin (or github.com/OWNER/REPO); JSON field names as gh's, output compact as gh prints to a
pipe; issue and PR numbers share one counter; bodies/comments over 65,536 characters and titles
over 256 are refused like GitHub does (exit 1, no state change); `gh pr create` refuses a head
branch missing on origin, a head with no commits over base, and a second open PR for a head.
Every call is logged (argv, exit code, the token value it saw, cwd, whether it changed state).

Not implemented (exit 1 with "fake gh: ..."): `--jq`, `--template`, `--web`, interactive prompts,
`gh pr create` without `--head` (the fake never pushes), `gh api`, merging through the CLI, and any
other subcommand. Timestamps come from a logical clock (one tick per write), not from time.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

BODY_MAX, TITLE_MAX = 65536, 256
DEFAULT_LABELS = [("bug", "d73a4a", "Something isn't working"),
                  ("documentation", "0075ca", "Improvements or additions to documentation"),
                  ("duplicate", "cfd3d7", "This issue or pull request already exists"),
                  ("enhancement", "a2eeef", "New feature or request"),
                  ("good first issue", "7057ff", "Good for newcomers"),
                  ("help wanted", "008672", "Extra attention is needed"),
                  ("invalid", "e4e669", "This doesn't seem right"),
                  ("question", "d876e3", "Further information is requested"),
                  ("wontfix", "ffffff", "This will not be worked on")]
AUTH_MESSAGE = ("To get started with GitHub CLI, please run:  gh auth login\n"
                "Alternatively, populate the GH_TOKEN environment variable with a GitHub API authentication token.")

S, B, L, I = "str", "bool", "list", "int"
_BODY = {"body": ("b", S), "body-file": ("F", S)}
_VIEW = {"json": (None, S), "jq": ("q", S), "template": ("t", S), "comments": ("c", B), "web": ("w", B)}
COMMANDS = {  # (group, command) -> {long flag: (shorthand, kind)}, as gh's manual pages list them
    ("pr", "list"): {"head": ("H", S), "base": ("B", S), "state": ("s", S), "label": ("l", L), "limit": ("L", I),
                     "json": (None, S), "jq": ("q", S), "template": ("t", S), "web": ("w", B), "author": ("A", S),
                     "search": ("S", S), "draft": ("d", B), "assignee": ("a", S), "app": (None, S)},
    ("pr", "create"): {"head": ("H", S), "base": ("B", S), "title": ("t", S), **_BODY, "label": ("l", L),
                       "draft": ("d", B), "fill": ("f", B), "web": ("w", B), "assignee": ("a", L),
                       "reviewer": ("r", L), "milestone": ("m", S), "project": ("p", L), "dry-run": (None, B),
                       "no-maintainer-edit": (None, B), "editor": ("e", B), "template": ("T", S),
                       "fill-first": (None, B), "fill-verbose": (None, B), "recover": (None, S)},
    ("pr", "view"): _VIEW,
    ("pr", "edit"): {"title": ("t", S), **_BODY, "add-label": (None, L), "remove-label": (None, L),
                     "base": ("B", S), "add-assignee": (None, L), "remove-assignee": (None, L),
                     "add-reviewer": (None, L), "remove-reviewer": (None, L), "milestone": ("m", S)},
    ("pr", "comment"): {**_BODY, "edit-last": (None, B), "editor": ("e", B), "web": ("w", B)},
    ("pr", "close"): {"comment": ("c", S), "delete-branch": ("d", B)},
    ("issue", "list"): {"label": ("l", L), "state": ("s", S), "limit": ("L", I), "search": ("S", S), "json": (None, S),
                        "jq": ("q", S), "template": ("t", S), "web": ("w", B), "author": ("A", S),
                        "assignee": ("a", S), "mention": (None, S), "milestone": ("m", S), "app": (None, S)},
    ("issue", "create"): {"title": ("t", S), **_BODY, "label": ("l", L), "assignee": ("a", L), "milestone": ("m", S),
                          "project": ("p", L), "web": ("w", B), "editor": ("e", B), "template": ("T", S),
                          "recover": (None, S)},
    ("issue", "edit"): {"title": ("t", S), **_BODY, "add-label": (None, L), "remove-label": (None, L),
                        "add-assignee": (None, L), "remove-assignee": (None, L), "milestone": ("m", S)},
    ("issue", "close"): {"comment": ("c", S), "reason": ("r", S)},
    ("issue", "reopen"): {"comment": ("c", S)},
    ("issue", "comment"): {**_BODY, "edit-last": (None, B), "editor": ("e", B), "web": ("w", B)},
    ("issue", "view"): _VIEW,
    ("label", "create"): {"force": ("f", B), "description": ("d", S), "color": ("c", S)},
    ("label", "list"): {"json": (None, S), "limit": ("L", I), "jq": ("q", S), "template": ("t", S), "web": ("w", B),
                        "search": ("S", S), "sort": (None, S), "order": (None, S)},
}
IMPLEMENTED = {  # the flags the fake acts on; the rest of gh's exist but are refused as "not implemented"
    ("pr", "list"): {"head", "base", "state", "label", "limit", "json"},
    ("pr", "create"): {"head", "base", "title", "body", "body-file", "label", "draft"},
    ("pr", "view"): {"json"}, ("issue", "view"): {"json"},
    ("pr", "edit"): {"title", "body", "body-file", "add-label", "remove-label", "base"},
    ("pr", "comment"): {"body", "body-file"}, ("issue", "comment"): {"body", "body-file"},
    ("pr", "close"): {"comment", "delete-branch"},
    ("issue", "list"): {"label", "state", "limit", "search", "json"},
    ("issue", "create"): {"title", "body", "body-file", "label"},
    ("issue", "edit"): {"title", "body", "body-file", "add-label", "remove-label"},
    ("issue", "close"): {"comment", "reason"}, ("issue", "reopen"): {"comment"},
    ("label", "create"): {"force", "description", "color"}, ("label", "list"): {"json", "limit"},
}
PR_FIELDS = {"number", "title", "body", "state", "headRefName", "headRefOid", "baseRefName", "labels", "comments",
             "isCrossRepository", "headRepositoryOwner",
             "url", "isDraft", "mergedAt", "closedAt", "author", "createdAt", "updatedAt", "closed", "id"}
ISSUE_FIELDS = {"number", "title", "body", "state", "stateReason", "labels", "comments", "url", "author",
                "createdAt", "updatedAt", "closedAt", "closed", "id"}
LABEL_FIELDS = {"name", "description", "color", "id", "isDefault", "url"}
GH_ONLY_FIELDS = {  # real gh fields the fake does not model: asking for them is "not implemented", not unknown
    "additions", "assignees", "autoMergeRequest", "baseRefOid", "changedFiles", "commits", "deletions", "files",
    "fullDatabaseId", "headRepository", "headRepositoryOwner", "latestReviews",
    "maintainerCanModify", "mergeCommit", "mergeStateStatus", "mergeable", "mergedBy", "milestone",
    "potentialMergeCommit", "projectCards", "projectItems", "reactionGroups", "reviewDecision", "reviewRequests",
    "reviews", "statusCheckRollup", "isPinned", "createdAt", "updatedAt"}


class GhError(Exception):
    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


# ---------------------------------------------------------------------------------- state & lock
@contextmanager
def locked(state_path: Path):
    with open(str(state_path) + ".lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lk, fcntl.LOCK_UN)


def load(state_path: Path) -> dict:
    return json.loads(Path(state_path).read_text())


def save(state_path: Path, st: dict):
    tmp = Path(f"{state_path}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(st, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path)


def new_state(repo: str, origin: Path, labels=None, logins=None) -> dict:
    labels = DEFAULT_LABELS if labels is None else [(n, "ededed", "") if isinstance(n, str) else n for n in labels]
    return {"repo": repo, "origin": str(origin), "next_number": 1, "clock": 0, "prs": [], "issues": [],
            "labels": [{"name": n, "color": c, "description": d, "isDefault": True} for n, c, d in labels],
            "logins": dict(logins or {}), "log": []}


def install(bin_dir: Path, state: Path, origin: Path, repo: str = "owner/repo", labels=None, logins=None) -> dict:
    """Write `gh` into bin_dir; create the state (a new repository's default labels unless `labels`,
    a list of names or (name, color, description); `logins` maps token values to author logins,
    default 'app/github-actions') unless it exists. Returns the env vars to add (not PATH)."""
    bin_dir, state = Path(bin_dir), Path(state)
    bin_dir.mkdir(parents=True, exist_ok=True)
    gh = bin_dir / "gh"
    gh.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} \"$@\"\n")
    gh.chmod(0o755)
    if not state.exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        save(state, new_state(repo, Path(origin).resolve(), labels, logins))
    return {"FAKE_GH_STATE": str(state.resolve()), "FAKE_GH_ORIGIN": str(Path(origin).resolve())}


def _tick(st) -> str:
    st["clock"] += 1
    return (datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=st["clock"])).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(origin, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", str(origin), *args], capture_output=True, text=True)


def _head_oid(st, pr) -> str:
    r = _git(st["origin"], "rev-parse", "--verify", "-q", f"refs/heads/{pr['headRefName']}^{{commit}}")
    return r.stdout.strip() if r.returncode == 0 else pr.get("headRefOid", "")


def _label(st, name):
    return next((x for x in st["labels"] if x["name"].lower() == name.lower()), None)


def render(st: dict, kind: str, rec: dict) -> dict:
    """The full gh JSON object of a PR ('pr') or issue ('issue')."""
    base = f"https://github.com/{st['repo']}/{'pull' if kind == 'pr' else 'issues'}/{rec['number']}"
    login = rec["author"]
    out = {k: rec[k] for k in ("number", "title", "body", "state", "createdAt", "updatedAt", "closedAt")}
    out.update(url=base, closed=rec["state"] != "OPEN", id=f"{'PR' if kind == 'pr' else 'I'}_kw{rec['number']}",
               author={"login": login, "is_bot": login.startswith("app/"), "id": f"U_{login}"},
               labels=[{"id": f"LA_{lb}", "name": lb, "description": (_label(st, lb) or {}).get("description", ""),
                        "color": (_label(st, lb) or {}).get("color", "ededed")} for lb in rec["labels"]],
               comments=[{"id": f"IC_{c['id']}", "author": {"login": c["author"]}, "authorAssociation":
                          "NONE" if c["author"].startswith("app/") else "MEMBER", "body": c["body"],
                          "createdAt": c["createdAt"], "url": f"{base}#issuecomment-{c['id']}"}
                         for c in rec["comments"]])
    if kind == "pr":
        out.update({k: rec[k] for k in ("headRefName", "baseRefName", "isDraft", "mergedAt")},
                   headRefOid=rec["fork_oid"] if rec.get("fork_oid") else _head_oid(st, rec),
                   isCrossRepository=bool(rec.get("fork_oid")),
                   headRepositoryOwner={"login": rec.get("fork_owner") or (rec["author"] if rec.get("fork_oid")
                                                                           else st["repo"].split("/")[0])})
    else:
        out["stateReason"] = rec.get("stateReason")
    return out


# ---------------------------------------------------------------------------------- parsing
def parse_flags(argv, group, cmd):
    spec = {**COMMANDS[(group, cmd)], "repo": ("R", S), "help": ("h", B)}
    shorts = {s: n for n, (s, _) in spec.items() if s}
    opts, pos, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            pos += argv[i:]
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name not in spec:
                raise GhError(f"unknown flag: --{name}\n\nUsage:  gh {group} {cmd} [flags]")
            shown = f"--{name}"
        elif a.startswith("-") and len(a) > 1:
            if a[1] not in shorts:
                raise GhError(f"unknown shorthand flag: '{a[1]}' in {a}\n\nUsage:  gh {group} {cmd} [flags]")
            name, val = shorts[a[1]], a[2:].removeprefix("=")
            eq, shown = "=" if a[2:] else "", f"'{a[1]}' in {a}"
            if eq and spec[name][1] == B:
                raise GhError(f"fake gh: combined shorthand flags ({a}) are not supported")
        else:
            pos.append(a)
            continue
        kind = spec[name][1]
        if kind == B:
            if eq and val not in ("true", "false"):
                raise GhError(f'invalid argument "{val}" for "--{name}" flag: strconv.ParseBool: '
                              f'parsing "{val}": invalid syntax')
            opts[name] = val != "false"
            continue
        if not eq:
            if i >= len(argv):
                raise GhError(f"flag needs an argument: {shown}\n\nUsage:  gh {group} {cmd} [flags]")
            val = argv[i]
            i += 1
        if kind == L:
            opts.setdefault(name, []).extend(v.strip() for v in next(csv.reader([val])) if v.strip())
        elif kind == I:
            try:
                opts[name] = int(val)
            except ValueError:
                raise GhError(f'invalid argument "{val}" for "--{name}" flag: strconv.ParseInt: parsing "{val}": '
                              "invalid syntax") from None
        else:
            opts[name] = val
    if opts.get("help"):
        return opts, pos
    not_impl = set(opts) - IMPLEMENTED[(group, cmd)] - {"repo"}
    if not_impl:
        raise GhError(f"fake gh: --{sorted(not_impl)[0]} is not implemented by the fake "
                      + ("(use --json and parse the output yourself)" if "jq" in not_impl else ""))
    return opts, pos


def check_repo(opts, st):
    want = opts.get("repo") or os.environ.get("GH_REPO")
    if want:
        want = want.removeprefix("https://github.com/").removeprefix("github.com/").strip("/")
        if want.lower() != st["repo"].lower():
            raise GhError(f"GraphQL: Could not resolve to a Repository with the name '{want}'. (repository)")
        return
    r = subprocess.run(["git", "remote", "-v"], capture_output=True, text=True)
    if r.returncode:
        raise GhError("fatal: not a git repository (or any of the parent directories): .git\n/usr/bin/git: exit status 128")
    origin = os.environ.get("FAKE_GH_ORIGIN", st["origin"])
    for line in r.stdout.splitlines():
        url = line.split()[1]
        local = Path(url.removeprefix("file://"))
        if (local.is_absolute() and local.exists() and local.resolve() == Path(origin).resolve()) or \
                url.removesuffix(".git").lower().endswith(("github.com/" + st["repo"]).lower()) or \
                url.removesuffix(".git").lower().endswith(("github.com:" + st["repo"]).lower()):
            return
    raise GhError("none of the git remotes configured for this repository point to a known GitHub host. "
                  "To tell gh about a new GitHub host, please use `gh auth login`")


def body_of(opts, required=True):
    if "body-file" in opts:
        f = opts["body-file"]
        try:
            return sys.stdin.read() if f == "-" else Path(f).read_text()
        except OSError as e:
            raise GhError(f"open {f}: {e.strerror.lower()}") from None
    if "body" in opts:
        return opts["body"]
    if required:
        raise GhError("fake gh: --body or --body-file is required (no editor, no prompts)")
    return None


def check_text(title=None, body=None, mutation="createIssue"):
    if body is not None and len(body) > BODY_MAX:
        raise GhError(f"GraphQL: Body is too long (maximum is {BODY_MAX} characters) ({mutation})")
    if title is not None and len(title) > TITLE_MAX:
        raise GhError(f"GraphQL: Title is too long (maximum is {TITLE_MAX} characters) ({mutation})")


def json_fields(opts, allowed):
    if "json" not in opts:
        return None
    fields = [f.strip() for f in opts["json"].split(",") if f.strip()]
    for f in fields:
        if f not in allowed:
            if f in GH_ONLY_FIELDS:
                raise GhError(f"fake gh: JSON field {f!r} is not implemented by the fake")
            raise GhError(f'Unknown JSON field: "{f}"\nAvailable fields:\n' + "".join(f"  {x}\n" for x in sorted(allowed)))
    return fields


def emit(objs, fields):
    pick = lambda o: {k: o[k] for k in sorted(fields)}  # noqa: E731 (gh marshals a map: sorted keys)
    data = [pick(o) for o in objs] if isinstance(objs, list) else pick(objs)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------- commands
def _find(st, kind, sel):
    recs = st["prs"] if kind == "pr" else st["issues"]
    s = str(sel).rstrip("/").split("/")[-1].lstrip("#")
    for r in recs:
        if str(r["number"]) == s or (kind == "pr" and r["headRefName"] == sel and r["state"] == "OPEN"):
            return r
    what = "PullRequest" if kind == "pr" else "Issue"
    raise GhError(f"GraphQL: Could not resolve to an {what} with the number of {s}. "
                  f"(repository.{'pullRequest' if kind == 'pr' else 'issue'})" if s.isdigit()
                  else f'no pull requests found for branch "{sel}"')


def _labels_exist(st, names):
    for n in names:
        if not _label(st, n):
            raise GhError(f"could not add label: '{n}' not found")
    return [_label(st, n)["name"] for n in names]


def _comment(st, rec, body, login, mutation="addComment"):
    check_text(body=body, mutation=mutation)
    st["next_comment"] = st.get("next_comment", 1000) + 1
    rec["comments"].append({"id": st["next_comment"], "body": body, "author": login, "createdAt": _tick(st)})
    rec["updatedAt"] = rec["comments"][-1]["createdAt"]
    return st["next_comment"]


def _new(st, kind, title, body, labels, login, **extra):
    n, now = st["next_number"], _tick(st)
    st["next_number"] += 1
    rec = {"number": n, "title": title, "body": body, "state": "OPEN", "labels": labels, "comments": [],
           "author": login, "createdAt": now, "updatedAt": now, "closedAt": None, **extra}
    (st["prs"] if kind == "pr" else st["issues"]).append(rec)
    return rec


def _edit(st, rec, opts, mutation):
    body = body_of(opts, required=False)
    check_text(opts.get("title"), body, mutation)
    add = _labels_exist(st, opts.get("add-label", []))
    if not any(k in opts for k in ("title", "body", "body-file", "add-label", "remove-label", "base")):
        raise GhError("fake gh: nothing to edit")
    if "title" in opts:
        rec["title"] = opts["title"]
    if body is not None:
        rec["body"] = body
    if "base" in opts:
        rec["baseRefName"] = opts["base"]
    rec["labels"] = [x for x in rec["labels"] if x.lower() not in {r.lower() for r in opts.get("remove-label", [])}]
    rec["labels"] += [x for x in add if x.lower() not in {y.lower() for y in rec["labels"]}]
    rec["updatedAt"] = _tick(st)


def _matches_search(rec, q):
    words = shlex.split(q)
    for w in words:
        key, colon, val = w.partition(":")
        if colon and key in ("is", "state"):
            if val in ("open", "closed") and rec["state"].lower() != val:
                return False
            if val not in ("open", "closed", "issue"):
                raise GhError(f"fake gh: search qualifier {w!r} is not implemented")
        elif colon and key == "label":
            if val.lower() not in {x.lower() for x in rec["labels"]}:
                return False
        elif colon and key == "in":
            continue
        elif colon:
            raise GhError(f"fake gh: search qualifier {w!r} is not implemented")
        else:
            scope = [rec["title"]] if "in:title" in words else [rec["body"]] if "in:body" in words \
                else [rec["title"], rec["body"]]
            if not any(w.lower() in (s or "").lower() for s in scope):
                return False
    return True


def run(argv: list[str], st: dict, token: str) -> tuple[str, str, bool]:
    """Run one gh command against the state (mutating it). Returns (stdout, stderr, wrote)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        return "Work seamlessly with GitHub from the command line. (fake)\n", "", False
    group = argv[0]
    if group not in ("pr", "issue", "label"):
        raise GhError(f'unknown command "{group}" for "gh"' if group not in ("api", "repo", "auth", "run", "workflow",
                      "release", "gist", "search", "secret", "variable", "cache", "browse", "status")
                      else f"fake gh: 'gh {group}' is not implemented")
    if len(argv) < 2 or (group, argv[1]) not in COMMANDS:
        sub = argv[1] if len(argv) > 1 else ""
        raise GhError(f'unknown command "{sub}" for "gh {group}"' if sub not in ("merge", "checkout", "diff", "ready",
                      "reopen", "review", "checks", "status", "lock", "unlock", "pin", "delete", "transfer",
                      "develop", "clone", "edit") else f"fake gh: 'gh {group} {sub}' is not implemented")
    cmd = argv[1]
    opts, pos = parse_flags(argv[2:], group, cmd)
    if opts.get("help"):
        return f"Usage:  gh {group} {cmd} [flags]\n", "", False
    if not token:
        raise GhError(AUTH_MESSAGE, 4)
    need = 0 if cmd in ("list", "create") and group != "label" or (group, cmd) == ("label", "list") else 1
    if len(pos) != need:
        raise GhError(f"accepts {need} arg(s), received {len(pos)}" if pos or not need
                      else f"fake gh: gh {group} {cmd} needs a {'name' if group == 'label' else 'number'} argument")
    check_repo(opts, st)
    login = st["logins"].get(token, "app/github-actions")
    repo = st["repo"]

    if group == "label":
        if cmd == "list":
            fields = json_fields(opts, LABEL_FIELDS)
            labels = st["labels"][: opts.get("limit", 30)]
            objs = [{"id": f"LA_{x['name']}", "url": f"https://github.com/{repo}/labels/{x['name']}", **x} for x in labels]
            if fields is not None:
                return emit(objs, fields), "", False
            return "".join(f"{x['name']}\t{x['description']}\t#{x['color']}\n" for x in labels), "", False
        name, color = pos[0], opts.get("color", "").lstrip("#") or None
        old = _label(st, name)
        if old and not opts.get("force"):
            raise GhError(f'label with name "{name}" already exists; use `--force` to update its color and description')
        if old:
            old.update({k: v for k, v in (("color", color), ("description", opts.get("description"))) if v is not None})
        else:
            st["labels"].append({"name": name, "color": color or "ededed", "description": opts.get("description", ""),
                                 "isDefault": False})
        return "", f'✓ Label "{name}" {"updated" if old else "created"} in {repo}\n', True

    kind = group
    fields_all = PR_FIELDS if kind == "pr" else ISSUE_FIELDS
    if cmd == "list":
        fields = json_fields(opts, fields_all)
        state = opts.get("state", "open").lower()
        valid = ("open", "closed", "merged", "all") if kind == "pr" else ("open", "closed", "all")
        if state not in valid:
            raise GhError(f'invalid argument "{state}" for "-s, --state" flag: valid values are {{{"|".join(valid)}}}')
        if opts.get("limit", 30) < 1:
            raise GhError(f"invalid value for --limit: {opts['limit']}")
        want = {"open": {"OPEN"}, "closed": {"CLOSED", "MERGED"}, "merged": {"MERGED"},
                "all": {"OPEN", "CLOSED", "MERGED"}}[state]
        recs = [r for r in sorted(st["prs"] if kind == "pr" else st["issues"], key=lambda r: -r["number"])
                if r["state"] in want
                and all(lb.lower() in {x.lower() for x in r["labels"]} for lb in opts.get("label", []))
                and (kind != "pr" or opts.get("head") in (None, r["headRefName"]))
                and (kind != "pr" or opts.get("base") in (None, r["baseRefName"]))
                and (kind != "issue" or _matches_search(r, opts.get("search", "")))][: opts.get("limit", 30)]
        objs = [render(st, kind, r) for r in recs]
        if fields is not None:
            return emit(objs, fields), "", False
        if kind == "pr":
            return "".join(f"{o['number']}\t{o['title']}\t{o['headRefName']}\t{o['state']}\t{o['createdAt']}\n"
                           for o in objs), "", False
        return "".join(f"{o['number']}\t{o['state']}\t{o['title']}\t{', '.join(x['name'] for x in o['labels'])}\t"
                       f"{o['updatedAt']}\n" for o in objs), "", False

    if cmd == "create":
        title = opts.get("title")
        body = body_of(opts, required=False)
        if title is None or body is None:
            raise GhError("must provide `--title` and `--body` (or `--fill` or `fill-first` or `--fillverbose`) "
                          "when not running interactively" if kind == "pr"
                          else "must provide `--title` and `--body` when not running interactively")
        mutation = "createPullRequest" if kind == "pr" else "createIssue"
        check_text(title, body, mutation)
        labels = _labels_exist(st, opts.get("label", []))
        if kind == "issue":
            rec = _new(st, "issue", title, body, labels, login, stateReason=None)
            return f"https://github.com/{repo}/issues/{rec['number']}\n", "", True
        if "head" not in opts:
            raise GhError("fake gh: --head is required (the fake never pushes or guesses the current branch)")
        head, origin = opts["head"], st["origin"]
        base = opts.get("base") or _git(origin, "symbolic-ref", "--short", "HEAD").stdout.strip()
        if ":" in head:             # OWNER:BRANCH, a branch of a fork (FakeGitHub.add_fork names its folder)
            owner, head = head.split(":", 1)
            fork = st.get("forks", {}).get(owner)
            oid = _git(fork, "rev-parse", "--verify", "-q", f"refs/heads/{head}^{{commit}}") if fork else None
            if oid is None or oid.returncode:
                raise GhError("pull request create failed: GraphQL: Head sha can't be blank, Head ref must be a "
                              "branch (createPullRequest)")
            rec = _new(st, "pr", title, body, labels, login, headRefName=head, baseRefName=base,
                       headRefOid=oid.stdout.strip(), isDraft=bool(opts.get("draft")), mergedAt=None,
                       fork_oid=oid.stdout.strip(), fork_owner=owner)
            return f"https://github.com/{repo}/pull/{rec['number']}\n", "", True
        oid = _git(origin, "rev-parse", "--verify", "-q", f"refs/heads/{head}^{{commit}}")
        if oid.returncode:
            raise GhError("pull request create failed: GraphQL: Head sha can't be blank, Base sha can't be blank, "
                          f"No commits between {base} and {head}, Head ref must be a branch (createPullRequest)")
        if _git(origin, "rev-parse", "--verify", "-q", f"refs/heads/{base}").returncode:
            raise GhError("pull request create failed: GraphQL: Base ref must be a branch (createPullRequest)")
        for r in st["prs"]:
            if r["headRefName"] == head and r["state"] == "OPEN" and not r.get("fork_oid"):   # same repo only
                raise GhError(f'a pull request for branch "{head}" into branch "{r["baseRefName"]}" already exists:\n'
                              f"https://github.com/{repo}/pull/{r['number']}")
        if _git(origin, "merge-base", "--is-ancestor", f"refs/heads/{head}", f"refs/heads/{base}").returncode == 0:
            raise GhError(f"pull request create failed: GraphQL: No commits between {base} and {head} (createPullRequest)")
        rec = _new(st, "pr", title, body, labels, login, headRefName=head, baseRefName=base,
                   headRefOid=oid.stdout.strip(), isDraft=bool(opts.get("draft")), mergedAt=None)
        return f"https://github.com/{repo}/pull/{rec['number']}\n", "", True

    rec = _find(st, kind, pos[0])
    url = f"https://github.com/{repo}/{'pull' if kind == 'pr' else 'issues'}/{rec['number']}"
    ref = f"{repo}#{rec['number']}"
    if cmd == "view":
        fields = json_fields(opts, fields_all)
        o = render(st, kind, rec)
        if fields is not None:
            return emit(o, fields), "", False
        return (f"title:\t{o['title']}\nstate:\t{o['state']}\nauthor:\t{o['author']['login']}\nlabels:\t"
                f"{', '.join(x['name'] for x in o['labels'])}\nnumber:\t{o['number']}\nurl:\t{url}\n"
                f"--\n{o['body']}\n"), "", False
    if cmd == "edit":
        _edit(st, rec, opts, "updatePullRequest" if kind == "pr" else "updateIssue")
        return url + "\n", "", True
    if cmd == "comment":
        cid = _comment(st, rec, body_of(opts), login)
        return f"{url}#issuecomment-{cid}\n", "", True
    if cmd == "close":
        what = "Pull request" if kind == "pr" else "Issue"
        if rec["state"] == "MERGED":
            raise GhError(f"! Pull request {ref} ({rec['title']}) can't be closed because it was already merged")
        if rec["state"] == "CLOSED":
            return "", f"! {what} {ref} ({rec['title']}) is already closed\n", False
        reason = opts.get("reason", "completed").lower()
        if kind == "issue" and reason not in ("completed", "not planned"):
            raise GhError(f'invalid argument "{reason}" for "-r, --reason" flag: valid values are {{completed|not planned}}')
        if "comment" in opts:
            _comment(st, rec, opts["comment"], login)
        rec.update(state="CLOSED", closedAt=_tick(st))
        rec["updatedAt"] = rec["closedAt"]
        if kind == "issue":
            rec["stateReason"] = reason.upper().replace(" ", "_")
        msg = f"✓ Closed {what.lower()} {ref} ({rec['title']})\n"
        if opts.get("delete-branch"):
            _git(st["origin"], "update-ref", "-d", f"refs/heads/{rec['headRefName']}")
            msg += f"✓ Deleted branch {rec['headRefName']}\n"
        return "", msg, True
    # issue reopen
    if rec["state"] == "OPEN":
        return "", f"! Issue {ref} ({rec['title']}) is already open\n", False
    if "comment" in opts:
        _comment(st, rec, opts["comment"], login)
    rec.update(state="OPEN", closedAt=None, stateReason="REOPENED", updatedAt=_tick(st))
    return "", f"✓ Reopened issue {ref} ({rec['title']})\n", True


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    state_path = Path(os.environ.get("FAKE_GH_STATE", ""))
    if not os.environ.get("FAKE_GH_STATE") or not state_path.exists():
        print("fake gh: FAKE_GH_STATE does not name a state file (use testing.fake_gh.install)", file=sys.stderr)
        return 1
    token = os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN") or None
    with locked(state_path):
        st = load(state_path)
        before = json.dumps({k: v for k, v in st.items() if k != "log"}, sort_keys=True)
        try:
            out, err, _ = run(argv, st, token)
            code = 0
        except GhError as e:
            st = load(state_path)   # an error changes nothing
            out, err, code = "", str(e) + "\n", e.code
        wrote = json.dumps({k: v for k, v in st.items() if k != "log"}, sort_keys=True) != before
        st["log"].append({"argv": argv, "exit": code, "token": token, "wrote": wrote, "cwd": os.getcwd(),
                          "stdout": out[-2000:], "stderr": err[-2000:]})
        save(state_path, st)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


# ---------------------------------------------------------------------------------- test API
class FakeGitHub:
    """Read the fake's state and act on it as a human would (under the same lock as gh calls)."""

    def __init__(self, state_path):
        self.path = Path(state_path)

    def _state(self):
        with locked(self.path):
            return load(self.path)

    @contextmanager
    def _mutate(self):
        with locked(self.path):
            st = load(self.path)
            yield st
            save(self.path, st)

    @property
    def prs(self) -> list[dict]:
        st = self._state()
        return [render(st, "pr", r) for r in st["prs"]]

    @property
    def issues(self) -> list[dict]:
        st = self._state()
        return [render(st, "issue", r) for r in st["issues"]]

    @property
    def labels(self) -> list[dict]:
        return self._state()["labels"]

    @property
    def calls(self) -> list[dict]:
        return self._state()["log"]

    def writes(self) -> list[dict]:
        return [c for c in self.calls if c["wrote"]]

    def pr(self, n: int) -> dict:
        return next(p for p in self.prs if p["number"] == n)

    def issue(self, n: int) -> dict:
        return next(i for i in self.issues if i["number"] == n)

    def _rec(self, st, kind, n):
        return next(r for r in st["prs" if kind == "pr" else "issues"] if r["number"] == n)

    def add_fork(self, owner: str, path) -> None:
        """OWNER's fork of the repository is the bare repository at PATH (for `gh pr create --head OWNER:BRANCH`)."""
        with self._mutate() as st:
            st.setdefault("forks", {})[owner] = str(Path(path).resolve())

    def fork_pr(self, branch: str, body: str, *, login: str = "stranger", state: str = "OPEN") -> int:
        """A pull request from someone's fork whose branch has the same name (gh pr list --head matches
        by name only); its head is not on origin."""
        with self._mutate() as st:
            rec = _new(st, "pr", "from a fork", body, [], login, headRefName=branch, baseRefName="main",
                       isDraft=False, mergedAt=None, fork_oid="f" * 40)
            rec["state"] = state
            return rec["number"]

    def merge_pr(self, n: int):
        with self._mutate() as st:
            r = self._rec(st, "pr", n)
            r.update(headRefOid=_head_oid(st, r), state="MERGED", mergedAt=_tick(st))
            r["closedAt"] = r["updatedAt"] = r["mergedAt"]

    def close_pr(self, n: int):
        with self._mutate() as st:
            self._rec(st, "pr", n).update(state="CLOSED", closedAt=_tick(st))

    def close_issue(self, n: int, reason: str = "COMPLETED"):
        with self._mutate() as st:
            self._rec(st, "issue", n).update(state="CLOSED", stateReason=reason, closedAt=_tick(st))

    def add_label(self, kind: str, n: int, name: str):
        """Add a label (created first if the repository lacks it, as a maintainer with rights would)."""
        with self._mutate() as st:
            if not _label(st, name):
                st["labels"].append({"name": name, "color": "ededed", "description": "", "isDefault": False})
            r = self._rec(st, kind, n)
            if name.lower() not in {x.lower() for x in r["labels"]}:
                r["labels"].append(_label(st, name)["name"])

    def remove_label(self, kind: str, n: int, name: str):
        with self._mutate() as st:
            r = self._rec(st, kind, n)
            r["labels"] = [x for x in r["labels"] if x.lower() != name.lower()]

    def comment(self, kind: str, n: int, body: str, login: str = "maintainer"):
        with self._mutate() as st:
            _comment(st, self._rec(st, kind, n), body, login)

    def create_label(self, name: str, color: str = "ededed", description: str = ""):
        with self._mutate() as st:
            st["labels"].append({"name": name, "color": color, "description": description, "isDefault": False})

    def create_issue(self, title: str, body: str = "", labels=(), login: str = "maintainer") -> int:
        with self._mutate() as st:
            return _new(st, "issue", title, body, list(labels), login, stateReason=None)["number"]


if __name__ == "__main__":
    sys.exit(main())
