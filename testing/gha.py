"""A small, strict, local runner for one GitHub Actions workflow file, for tests.

`Runner(path, workdir=..., origin=...).run()` executes the workflow's jobs the way GitHub documents
them (docs.github.com/actions: workflow syntax, contexts, expressions), one after another on this
machine, and returns a `RunResult` to assert on.

Implemented: `on` (the event must be one of the triggers; workflow_dispatch
inputs with defaults, types and `required`), jobs in `needs` order with GitHub's skip propagation
(a failed or skipped ancestor skips a job unless its `if:` calls a status function; success() and
failure() look at all ancestors, as GitHub does), job/step `if:` (implicit `success() && (...)`),
`permissions`, `env` at workflow/job/step level, `defaults.run` (shell, working-directory),
`strategy.matrix` (product, `include`, `exclude`, or a `${{ fromJSON(..) }}`), job `outputs`
(dropped when they contain a secret, as GitHub does; matrix legs merge in leg order, last non-empty
value wins), `continue-on-error`, `timeout-minutes` (enforced per step as a process timeout),
`runs-on`/`concurrency`/`environment` (recorded only). `run:` steps with GitHub's shells (default
`bash -e {0}` WITHOUT pipefail; `bash` = `bash --noprofile --norc -eo pipefail {0}`; `sh`; `python`;
a custom `cmd {0}`), `${{ }}` substituted into the script text, GITHUB_OUTPUT / GITHUB_ENV /
GITHUB_PATH / GITHUB_STEP_SUMMARY (incl. `name<<DELIM`), `::add-mask::`. The expression language:
literals, `! == != < <= > >= && ||`, loose equality (case-insensitive strings, number coercion),
`.name`, `['name']`, `.*` filters, contexts github/env/secrets/vars/inputs/matrix/strategy/steps/
needs/job/runner (each only where GitHub allows it: `secrets` in a step `if:` is an error),
functions success failure always cancelled contains startsWith endsWith format join toJSON fromJSON
hashFiles (sha256 of each file's sha256, files sorted; '' when none match).

Each job (each matrix leg) is a fresh runner: its own workspace, RUNNER_TEMP and HOME under
`workdir/runs/<run>/jobs/<leg>/`; only artifacts, caches and outputs cross jobs. The process
environment of a step is exactly `env=` (or just PATH when not given) plus the runner's variables
and the workflow's env: the test process's environment never leaks in, and the token only reaches a
step whose env maps it. `uses:` steps go to handlers keyed by `owner/name[/sub]` (the @ref dropped):
built-ins for actions/checkout, setup-python, cache (+/restore, /save), upload-artifact,
download-artifact, create-github-app-token; `Runner(actions={...})` adds or overrides. Built-in
handlers reject inputs the real action does not have. checkout fetches like the real one (default
depth 1: a shallow clone; `fetch-depth: 0` all branches and tags), leaves `origin` = the bare repo and
writes the `http.https://github.com/.extraheader` token unless `persist-credentials: false`. cache:
exact key, then the key and each restore-key as prefixes (newest entry first), the entry's version
is its `path` list; saved by a post step when the job succeeded without an exact hit; the store is
`workdir/cache`, shared by all runs of that workdir. upload-artifact keeps paths relative to the
least common ancestor of the search paths (one named file: its parent; one directory: itself), skips
hidden files unless `include-hidden-files`, refuses a second upload of a name (409) unless
`overwrite`. `Runner(workflow_text=..., replace_run={step name or id: script})` runs a workflow from
a string and swaps chosen steps' scripts (a key naming no `run:` step is an error).

API: `Runner(...).run() -> RunResult` with `.jobs` (see above and `Jobs`), `.leg(job, **matrix)`,
`.steps()` (every (leg, StepResult) that ran), `.summary`, `.artifacts_dir`, `.ok`, `.report()` (the
failed steps' log tails, for assertion messages). JobResult: result, outcome (differs with job
`continue-on-error`), outputs, steps, permissions, matrix, env, workspace, warnings (e.g. outputs
dropped for holding a secret), `.step(id_or_name)`, `.outputs_of(step, name)`, `.log`. StepResult: id, name, uses, run, outcome, conclusion, outputs, env (the
process environment), inputs, log, summary, data (what a handler recorded). A handler is
`fn(action: Action) -> dict | None` (`action.inputs`, `.env`, `.workspace`, `.home`, `.log()`,
`.post()`, `.mask()`, `raise StepFailed(msg)`). The YAML is read as GitHub reads it: only true/false
are booleans (`on:`, `yes`, `no` stay strings).

Strictness: an unknown workflow/job/step key, an unknown action, an unsupported feature or an
expression that does not parse (or names an unknown context or function) raises `WorkflowError`
naming the file, job and step. A runtime expression failure (e.g. fromJSON('')) fails the step or
job, as on GitHub.

Deliberately NOT implemented: services, containers, composite/JavaScript/Docker/local actions,
reusable workflows (`jobs.<id>.uses`), parallelism, cancellation (`fail-fast` and
`cancel-in-progress` are accepted; every leg runs; cancelled() is always false), job-level timeouts
as wall-clock (only per-step), cache scoping by branch, log masking (logs are raw so tests can look
for leaks; job outputs ARE filtered), the deprecated `::set-output`, pwsh/cmd shells. Artifacts are
only visible to the job that uploaded them and to jobs that (transitively) `need` it: GitHub would
race; here a missing `needs` fails deterministically. `res.jobs` lists plain jobs by id and matrix
legs as `"<job id> (<v1>, <v2>)"`; `res.jobs[<matrix job id>]` (not listed, looked up) and
`res.jobs.groups[id]` give the aggregate (result, merged outputs, `.legs`).
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


class WorkflowError(Exception):
    """The workflow (or the runner's model of it) is broken: a hard error, never a job result."""


class StepFailed(Exception):
    """Raised by an action handler to fail its step (the message goes to the step's log)."""


class _EvalError(Exception):
    """A runtime expression failure: fails the step or job that evaluated it."""


# --------------------------------------------------------------------------------- expressions
_TOKEN = re.compile(r"""\s*(?:(?P<num>-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?))
    |(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|<=|>=|&&|\|\||[!<>()\[\].,*])
    |(?P<id>[A-Za-z_][A-Za-z0-9_-]*))""", re.X)
_FUNCS = {"contains": (2, 2), "startswith": (2, 2), "endswith": (2, 2), "format": (1, 99),
          "join": (1, 2), "tojson": (1, 1), "fromjson": (1, 1), "hashfiles": (1, 99),
          "success": (0, 0), "failure": (0, 0), "always": (0, 0), "cancelled": (0, 0)}
STATUS_FUNCS = {"success", "failure", "always", "cancelled"}


class _Filtered(list):
    """The array a `*` produces: further property access maps over it."""


def parse_expr(src: str):
    toks, pos, src = [], 0, src.strip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise WorkflowError(f"cannot parse expression {src!r} at {src[pos:]!r}")
        pos = m.end()
        toks.append((m.lastgroup, m.group(m.lastgroup)))
    toks.append(("end", ""))
    i = 0

    def peek(*vals):
        return toks[i][0] == "op" and toks[i][1] in vals

    def take(val):
        nonlocal i
        if toks[i] != ("op", val):
            raise WorkflowError(f"expected {val!r} in expression {src!r}, got {toks[i][1]!r}")
        i += 1

    def binary(next_, ops, kind):
        def rule():
            nonlocal i
            node = next_()
            while peek(*ops):
                op = toks[i][1]
                i += 1
                node = (kind, op, node, next_())
            return node
        return rule

    def unary():
        nonlocal i
        if peek("!"):
            i += 1
            return ("not", unary())
        return postfix()

    def postfix():
        nonlocal i
        node = primary()
        while True:
            if peek("."):
                i += 1
                kind, val = toks[i]
                i += 1
                if (kind, val) == ("op", "*"):
                    node = ("star", node)
                elif kind == "id":
                    node = ("prop", node, ("lit", val))
                else:
                    raise WorkflowError(f"bad property access in expression {src!r}")
            elif peek("["):
                i += 1
                if peek("*"):
                    i += 1
                    node = ("star", node)
                else:
                    node = ("prop", node, or_())
                take("]")
            else:
                return node

    def primary():
        nonlocal i
        kind, val = toks[i]
        i += 1
        if kind == "num":
            return ("lit", float(int(val, 16)) if "x" in val.lower() else float(val))
        if kind == "str":
            return ("lit", val[1:-1].replace("''", "'"))
        if kind == "id":
            low = val.lower()
            if low in ("true", "false"):
                return ("lit", low == "true")
            if low == "null":
                return ("lit", None)
            if peek("("):
                i += 1
                args = []
                while not peek(")"):
                    args.append(or_())
                    if not peek(")"):
                        take(",")
                take(")")
                if low not in _FUNCS:
                    raise WorkflowError(f"Unrecognized function: '{val}' in expression {src!r}")
                lo, hi = _FUNCS[low]
                if not lo <= len(args) <= hi:
                    raise WorkflowError(f"wrong number of arguments to {val}() in {src!r}")
                return ("call", low, args)
            return ("ctx", val)
        if (kind, val) == ("op", "("):
            node = or_()
            take(")")
            return node
        raise WorkflowError(f"unexpected {val or 'end'!r} in expression {src!r}")

    cmp_ = binary(unary, ("<", "<=", ">", ">="), "cmp")
    eq_ = binary(cmp_, ("==", "!="), "cmp")
    and_ = binary(eq_, ("&&",), "and")
    or_ = binary(and_, ("||",), "or")
    tree = or_()
    if toks[i][0] != "end":
        raise WorkflowError(f"unexpected {toks[i][1]!r} in expression {src!r}")
    return tree


def _walk(node):
    yield node
    for part in node[1:]:
        if isinstance(part, tuple):
            yield from _walk(part)
        elif isinstance(part, list):
            for p in part:
                yield from _walk(p)


def _kind(v):
    return ("null" if v is None else "bool" if isinstance(v, bool) else "num"
            if isinstance(v, (int, float)) else "str" if isinstance(v, str) else "other")


def to_num(v) -> float:
    k = _kind(v)
    if k in ("null", "bool", "num"):
        return float(v or 0)
    if k == "str":
        s = v.strip()
        if not s:
            return 0.0
        try:
            return float(int(s, 16)) if s.lower().startswith("0x") else float(s)
        except ValueError:
            return math.nan
    return math.nan


def to_str(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    if isinstance(v, list):
        return "Array"
    if isinstance(v, dict):
        return "Object"
    return v


def truthy(v) -> bool:
    if isinstance(v, float):
        return not (v == 0 or math.isnan(v))
    return v not in (None, False, "", 0)


def _cmp(op, a, b):
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        a, b = to_num(a), to_num(b)
    elif ka == "str":
        a, b = a.upper(), b.upper()
    elif ka == "other":
        return (a is b) if op == "==" else (a is not b) if op == "!=" else False
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _prop(obj, key):
    if isinstance(obj, _Filtered):
        return _Filtered(v for v in (_prop(o, key) for o in obj) if v is not None)
    if isinstance(obj, dict) and isinstance(key, str):
        if key in obj:
            return obj[key]
        return next((v for k, v in obj.items() if k.lower() == key.lower()), None)
    if isinstance(obj, list) and _kind(key) == "num" and not math.isnan(key) and 0 <= key < len(obj):
        return obj[int(key)]
    return None


def _json_ready(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_json_ready(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_ready(x) for k, x in v.items()}
    return v


def _fmt(fmt, args):
    out, i = [], 0
    while i < len(fmt):
        c = fmt[i]
        if fmt.startswith("{{", i) or fmt.startswith("}}", i):
            out.append(c)
            i += 2
        elif c == "{":
            j = fmt.find("}", i)
            if j < 0 or not fmt[i + 1:j].isdigit() or int(fmt[i + 1:j]) >= len(args):
                raise _EvalError(f"format(): invalid format string {fmt!r}")
            out.append(to_str(args[int(fmt[i + 1:j])]))
            i = j + 1
        elif c == "}":
            raise _EvalError(f"format(): invalid format string {fmt!r}")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def evaluate(node, ctx: dict, funcs: dict):
    """Evaluate a parsed expression. `funcs` holds status functions and hashFiles."""
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "ctx":
        return _prop(ctx, node[1])
    if op == "prop":
        return _prop(evaluate(node[1], ctx, funcs), evaluate(node[2], ctx, funcs))
    if op == "star":
        v = evaluate(node[1], ctx, funcs)
        return _Filtered(v if isinstance(v, list) else v.values() if isinstance(v, dict) else [])
    if op == "not":
        return not truthy(evaluate(node[1], ctx, funcs))
    if op == "and":
        left = evaluate(node[2], ctx, funcs)
        return evaluate(node[3], ctx, funcs) if truthy(left) else left
    if op == "or":
        left = evaluate(node[2], ctx, funcs)
        return left if truthy(left) else evaluate(node[3], ctx, funcs)
    if op == "cmp":
        return _cmp(node[1], evaluate(node[2], ctx, funcs), evaluate(node[3], ctx, funcs))
    name, args = node[1], [evaluate(a, ctx, funcs) for a in node[2]]
    if name in STATUS_FUNCS or name == "hashfiles":
        return funcs[name](*args)
    if name == "contains":
        if isinstance(args[0], list):
            return any(_cmp("==", x, args[1]) for x in args[0])
        return to_str(args[1]).upper() in to_str(args[0]).upper()
    if name == "startswith":
        return to_str(args[0]).upper().startswith(to_str(args[1]).upper())
    if name == "endswith":
        return to_str(args[0]).upper().endswith(to_str(args[1]).upper())
    if name == "format":
        return _fmt(to_str(args[0]), args[1:])
    if name == "join":
        sep = to_str(args[1]) if len(args) > 1 else ","
        return sep.join(to_str(x) for x in args[0]) if isinstance(args[0], list) else to_str(args[0])
    if name == "tojson":
        return json.dumps(_json_ready(args[0]), indent=2)
    try:  # fromjson
        return json.loads(to_str(args[0]), parse_int=float)
    except ValueError as e:
        raise _EvalError(f"fromJSON({to_str(args[0])!r}): {e}") from None


def split_template(s: str) -> list:
    """'a ${{ x }} b' -> ['a ', ('expr', ' x '), ' b'] (a `}}` inside a '...' literal is text)."""
    parts, i = [], 0
    while (j := s.find("${{", i)) >= 0:
        parts.append(s[i:j])
        k, in_str = j + 3, False
        while k < len(s):
            if s[k] == "'":
                in_str = not in_str
            elif not in_str and s.startswith("}}", k):
                break
            k += 1
        else:
            raise WorkflowError(f"unterminated '${{{{' in {s!r}")
        if not s[j + 3:k].strip():
            raise WorkflowError(f"empty expression in {s!r}")
        parts.append(("expr", s[j + 3:k]))
        i = k + 2
    parts.append(s[i:])
    return [p for p in parts if p != ""]


# ------------------------------------------------------------------------------ results
@dataclass
class StepResult:
    id: str | None
    name: str
    uses: str | None = None
    run: str | None = None               # the script text after ${{ }} substitution
    outcome: str = "skipped"
    conclusion: str = "skipped"
    outputs: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)       # the process environment it ran with
    inputs: dict = field(default_factory=dict)    # `with:` after substitution
    log: str = ""
    summary: str = ""
    data: dict = field(default_factory=dict)      # what a handler recorded (e.g. fetch_depth)


@dataclass
class JobResult:
    id: str
    name: str
    result: str = "skipped"
    outcome: str = "skipped"             # differs from result only with job continue-on-error
    outputs: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    permissions: Any = None
    matrix: dict | None = None
    legs: list = field(default_factory=list)      # the aggregate of a matrix job lists its legs
    env: dict = field(default_factory=dict)
    runs_on: Any = None
    workspace: Path | None = None
    warnings: list = field(default_factory=list)

    def step(self, key: str) -> StepResult:
        for s in self.steps:
            if key in (s.id, s.name):
                return s
        raise KeyError(f"job {self.name!r} has no step {key!r}: {[s.id or s.name for s in self.steps]}")

    def outputs_of(self, step: str, name: str) -> str:
        """A step's output ('' when unset, as in an expression)."""
        return self.step(step).outputs.get(name, "")

    @property
    def log(self) -> str:
        return "".join(f"--- {s.name} [{s.outcome}]\n{s.log}" for s in self.steps)


class Jobs(dict):
    """Job results in run order: a plain job under its id, a matrix job's legs under
    "<id> (<v1>, <v2>)" (its id only while no leg ran). `jobs[id]` of a matrix job, and `.groups[id]`
    of any job, is the aggregate: result (failure if any leg failed), merged outputs, `.legs`."""

    def __init__(self):
        super().__init__()
        self.groups: dict[str, JobResult] = {}

    def __missing__(self, key):
        return self.groups[key]


@dataclass
class RunResult:
    jobs: Jobs
    summary: str
    artifacts_dir: Path
    run_id: str

    @property
    def ok(self) -> bool:
        return all(j.result in ("success", "skipped") for j in [*self.jobs.values(), *self.jobs.groups.values()])

    def leg(self, job: str, **matrix) -> JobResult:
        legs = [g for g in self.jobs[job].legs
                if all(to_str((g.matrix or {}).get(k)) == to_str(v) for k, v in matrix.items())]
        if len(legs) != 1:
            raise KeyError(f"{len(legs)} legs of {job!r} match {matrix}")
        return legs[0]

    def steps(self) -> list[tuple[str, StepResult]]:
        """(leg name, step) for every step of every job and leg."""
        return [(n, s) for n, j in self.jobs.items() for s in j.steps]

    def report(self) -> str:
        """What failed and why, for assertion messages."""
        out = []
        for n, j in self.jobs.items():
            out.append(f"job {n}: {j.result}")
            out += [f"  step {s.name}: {s.outcome}\n" + "".join("    " + line + "\n" for line in
                                                               s.log.splitlines()[-25:])
                    for s in j.steps if s.outcome == "failure"]
        return "\n".join(out)


# ------------------------------------------------------------------------------ files & globs
def _glob_re(pattern: str):
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 1
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            out.append(fnmatch.translate(pattern[i:j + 1])[4:-3])
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"/?\Z")


def expand_paths(spec: str, base: Path, home: Path) -> tuple[list[Path], list[Path]]:
    """Multi-line glob spec (`!` excludes, `~`, dirs include their files) -> (files, search paths)."""
    files: dict[Path, None] = {}
    searches: list[Path] = []
    for line in (x.strip() for x in spec.splitlines()):
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        line = line[1:].strip() if neg else line
        line = str(home) + line[1:] if line == "~" or line.startswith("~/") else line
        pat = os.path.normpath(os.path.join(base, line))
        parts = pat.split("/")
        n = next((k for k, p in enumerate(parts) if re.search(r"[*?\[]", p)), len(parts))
        search = Path("/".join(parts[:n]) or "/")
        rx = _glob_re(pat) if n < len(parts) else None
        found = []
        if rx is None:
            if search.is_file():
                found = [search]
            elif search.is_dir():
                found = [p for p in search.rglob("*") if p.is_file()]
        elif search.is_dir():
            for p in search.rglob("*"):
                if rx.match(str(p)):
                    found += [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
        if neg:
            for p in found:
                files.pop(p, None)
        else:
            files.update(dict.fromkeys(found))
            searches.append(search)
    deduped = [s for s in dict.fromkeys(searches) if not any(o != s and o in s.parents for o in searches)]
    return sorted(files), deduped


def read_commands(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV: `k=v` and `k<<DELIM ... DELIM` lines."""
    out, lines = {}, path.read_text(errors="replace").splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        eq, hd = line.find("="), line.find("<<")
        if eq > 0 and (hd < 0 or eq < hd):
            out[line[:eq]] = line[eq + 1:]
        elif hd > 0:
            key, delim, body = line[:hd], line[hd + 2:], []
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise StepFailed(f"Matching delimiter not found '{delim}' in {path.name}")
            i += 1
            out[key] = "\n".join(body)
        else:
            raise StepFailed(f"Invalid format '{line}' in {path.name}")
    return out


def _copy(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


# ------------------------------------------------------------------------------ actions
class Action:
    """What a `uses:` handler gets. Return a dict of outputs (or None); raise StepFailed to fail."""

    def __init__(self, runner, leg, step: StepResult, name: str, ref: str, inputs: dict, env: dict):
        self.runner, self.leg, self.step, self.name, self.ref = runner, leg, step, name, ref
        self.inputs, self.env = inputs, env
        self.workspace, self.home, self.temp = leg.ws, leg.home, leg.temp

    def input(self, name: str, default: str = "", required: bool = False) -> str:
        v = self.inputs.get(name, "")
        if required and not v:
            raise StepFailed(f"Input required and not supplied: {name}")
        return v if v != "" else default

    def flag(self, name: str, default: bool) -> bool:
        return self.input(name, "true" if default else "false").strip().lower() == "true"

    def path(self, p: str) -> Path:
        p = str(self.home) + p[1:] if p == "~" or p.startswith("~/") else p
        return Path(os.path.normpath(self.workspace / p))

    def log(self, msg: str):
        self.step.log += msg.rstrip("\n") + "\n"

    def git(self, *args, cwd: Path) -> str:
        r = subprocess.run(["git", *args], cwd=cwd, env=self.env, capture_output=True, text=True)
        self.log(f"[command]git {' '.join(args)}\n{r.stdout}{r.stderr}")
        if r.returncode:
            raise StepFailed(f"git {args[0]} failed with exit code {r.returncode}")
        return r.stdout.strip()

    def post(self, fn: Callable[["Action"], None], name: str, condition: str = "success"):
        """Run fn(self) after the job's steps when condition ('success'|'always') holds."""
        self.leg.posts.append((fn, self, name, condition))

    def mask(self, value: str):
        if value:
            self.runner._secret_values.add(value)


_COMMON_CACHE = {"path", "key", "enableCrossOsArchive"}
BUILTIN_INPUTS = {
    "actions/checkout": {"repository", "ref", "token", "ssh-key", "ssh-known-hosts", "ssh-strict",
                         "ssh-user", "persist-credentials", "path", "clean", "filter",
                         "sparse-checkout", "sparse-checkout-cone-mode", "fetch-depth", "fetch-tags",
                         "show-progress", "lfs", "submodules", "set-safe-directory",
                         "github-server-url"},
    "actions/setup-python": {"python-version", "python-version-file", "cache", "architecture",
                             "check-latest", "token", "cache-dependency-path", "update-environment",
                             "allow-prereleases", "freethreaded"},
    "actions/cache": _COMMON_CACHE | {"restore-keys", "upload-chunk-size", "fail-on-cache-miss",
                                      "lookup-only", "save-always"},
    "actions/cache/restore": _COMMON_CACHE | {"restore-keys", "fail-on-cache-miss", "lookup-only"},
    "actions/cache/save": _COMMON_CACHE | {"upload-chunk-size"},
    "actions/upload-artifact": {"name", "path", "if-no-files-found", "retention-days",
                                "compression-level", "overwrite", "include-hidden-files"},
    "actions/download-artifact": {"name", "path", "pattern", "merge-multiple", "github-token",
                                  "repository", "run-id", "artifact-ids"},
    "actions/create-github-app-token": {"app-id", "client-id", "private-key", "owner",
                                        "repositories", "skip-token-revoke", "github-api-url",
                                        "permission-*"},
}


def _checkout(a: Action):
    r = a.runner
    for name, ok in (("repository", r.repository), ("submodules", "false"), ("lfs", "false"),
                     ("sparse-checkout", ""), ("ssh-key", ""), ("filter", "")):
        if a.input(name, ok).lower() != ok.lower():
            raise WorkflowError(f"actions/checkout: {name}: {a.inputs[name]!r} is not supported here")
    dest, ref, depth = a.path(a.input("path", ".")), a.input("ref"), int(a.input("fetch-depth", "1"))
    if a.workspace != dest and a.workspace not in dest.parents:
        raise StepFailed(f"Repository path '{dest}' is not under '{a.workspace}'")
    if dest.exists():
        for p in dest.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    a.git("init", "-q", str(dest), cwd=dest)
    a.git("remote", "add", "origin", str(r.origin), cwd=dest)
    gh = a.leg.github
    if not ref:
        sha, kind, short = gh["sha"], "branch" if gh["ref"].startswith("refs/heads/") else "sha", gh["ref_name"]
    elif re.fullmatch(r"[0-9a-f]{40}", ref):
        sha, kind, short = ref, "sha", ref
    else:
        refs = dict(reversed(line.split("\t")) for line in a.git("ls-remote", "origin", cwd=dest).splitlines())
        for full, kind in ((ref, None), (f"refs/heads/{ref}", "branch"), (f"refs/tags/{ref}", "tag")):
            if full in refs:
                sha, short = refs[full], full.split("/", 2)[-1]
                kind = kind or ("branch" if full.startswith("refs/heads/") else "tag")
                break
        else:
            raise StepFailed(f"A branch or tag with the name '{ref}' could not be found")
    target = {"branch": f"refs/remotes/origin/{short}", "tag": f"refs/tags/{short}", "sha": sha}[kind]
    if depth <= 0:
        a.git("fetch", "-q", "--prune", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*",
              "+refs/tags/*:refs/tags/*", cwd=dest)
    spec = [f"+{sha}:{target}"] if kind != "sha" else [sha]
    a.git("fetch", "-q", "--no-tags", *([f"--depth={depth}"] if depth > 0 else []), "origin", *spec, cwd=dest)
    a.git("checkout", "-q", "--force", *(["-B", short] if kind == "branch" else []),
          target if kind != "sha" else sha, cwd=dest)
    persist = a.flag("persist-credentials", True)
    token = a.input("token", gh["token"])
    if persist:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        a.git("config", "--local", "http.https://github.com/.extraheader", f"AUTHORIZATION: basic {basic}", cwd=dest)
    a.step.data.update(fetch_depth=depth, persist_credentials=persist, ref=ref or gh["ref"], commit=sha, path=str(dest))
    return {"ref": ref or gh["ref"], "commit": sha}


def _setup_python(a: Action):
    a.step.data["python-version"] = a.input("python-version")
    return {"python-version": "%d.%d.%d" % sys.version_info[:3], "python-path": sys.executable, "cache-hit": "false"}


def _cache_paths(a: Action) -> tuple[str, list[tuple[str, Path, str]]]:
    spec = a.input("path", required=True)
    version = hashlib.sha256(("\n".join(x.strip() for x in spec.splitlines() if x.strip())).encode()).hexdigest()
    files, _ = expand_paths(spec, a.workspace, a.home)
    lines = [x.strip() for x in spec.splitlines() if x.strip() and not x.strip().startswith("!")]
    out = []
    for line in lines:   # whole named paths when they exist (dirs keep empty subdirs), globs file-wise
        p = a.path(line)
        if not re.search(r"[*?\[]", line):
            if p.exists():
                out.append(p)
        else:
            out += [f for f in files if f not in out]
    anchored = []
    for p in out:
        for tag, root in (("ws", a.workspace), ("home", a.home)):
            if p == root or root in p.parents:
                anchored.append((tag, p, str(p.relative_to(root))))
                break
        else:
            anchored.append(("abs", p, str(p).lstrip("/")))
    return version, anchored


def _cache_restore(a: Action):
    key, version = a.input("key", required=True), _cache_paths(a)[0]
    store = a.runner.cache_dir
    index = json.loads((store / "index.json").read_text()) if (store / "index.json").exists() else []
    mine = sorted((e for e in index if e["version"] == version), key=lambda e: -e["seq"])
    hit = next((e for e in mine if e["key"] == key), None)
    if hit is None:
        for prefix in [key] + [x.strip() for x in a.input("restore-keys").splitlines() if x.strip()]:
            if hit := next((e for e in mine if e["key"].startswith(prefix)), None):
                break
    exact = hit is not None and hit["key"] == key
    a.step.data.update(key=key, matched=hit and hit["key"], exact=exact)
    a.leg.cache_state[id(a.step)] = exact
    if hit is None:
        if a.flag("fail-on-cache-miss", False):
            raise StepFailed(f"Failed to restore cache entry. Exiting as fail-on-cache-miss is set. Input key: {key}")
        a.log(f"Cache not found for input keys: {key}")
        return {"cache-hit": "false", "cache-primary-key": key}
    if not a.flag("lookup-only", False):
        roots = {"ws": a.workspace, "home": a.home, "abs": Path("/")}
        for item in json.loads((store / hit["dir"] / "items.json").read_text()):
            _copy(store / hit["dir"] / item["n"], roots[item["tag"]] / item["rel"])
    a.log(f"Cache restored from key: {hit['key']}")
    return {"cache-hit": "true" if exact else "false", "cache-primary-key": key, "cache-matched-key": hit["key"]}


def _cache_save(a: Action, key: str | None = None):
    key = key or a.input("key", required=True)
    version, items = _cache_paths(a)
    store = a.runner.cache_dir
    store.mkdir(parents=True, exist_ok=True)
    index = json.loads((store / "index.json").read_text()) if (store / "index.json").exists() else []
    if any(e["key"] == key and e["version"] == version for e in index):
        a.log(f"Failed to save: Unable to reserve cache with key {key}, another job may be creating this cache.")
        return {}
    if not items:
        a.log("Warning: Path Validation Error: Path(s) specified in the action for caching do(es) not exist, "
              "hence no cache is being saved.")
        return {}
    seq = max((e["seq"] for e in index), default=0) + 1
    entry = store / f"entry-{seq}"
    for n, (tag, p, rel) in enumerate(items):
        _copy(p, entry / str(n))
    (entry / "items.json").write_text(json.dumps([{"n": str(n), "tag": t, "rel": r} for n, (t, _, r) in enumerate(items)]))
    index.append({"key": key, "version": version, "seq": seq, "dir": entry.name})
    (store / "index.json").write_text(json.dumps(index, indent=1))
    a.step.data["saved"] = key
    a.log(f"Cache saved with key: {key}")
    return {}


def _cache(a: Action):
    out = _cache_restore(a)
    if not a.leg.cache_state[id(a.step)] and not a.flag("lookup-only", False):
        a.post(lambda act, key=a.input("key"): _cache_save(act, key), f"Post {a.step.name}")
    return out


def _upload(a: Action):
    name, mode = a.input("name", "artifact"), a.input("if-no-files-found", "warn")
    if mode not in ("warn", "error", "ignore"):
        raise StepFailed(f"Unrecognized if-no-files-found input. Provided: {mode}. Available options: warn, error, ignore")
    files, searches = expand_paths(a.input("path", required=True), a.workspace, a.home)
    if len(searches) > 1:
        root = Path(os.path.commonpath([str(s) for s in searches]))
    elif len(files) == 1 and searches and files[0] == searches[0]:
        root = files[0].parent
    else:
        root = searches[0] if searches else a.workspace
    if not a.flag("include-hidden-files", False):
        files = [f for f in files if not any(p.startswith(".") for p in f.relative_to(root).parts)]
    if not files:
        msg = f"No files were found with the provided path: {a.inputs['path']}. No artifacts will be uploaded."
        if mode == "error":
            raise StepFailed(msg)
        a.log(("Warning: " if mode == "warn" else "") + msg)
        return {}
    arts = a.leg.run_state["artifacts"]
    if name in arts and not a.flag("overwrite", False):
        raise StepFailed("Failed to CreateArtifact: Received non-retryable error: Failed request: (409) Conflict: "
                         "an artifact with this name already exists on the workflow run")
    dest = a.runner._artifacts / name
    shutil.rmtree(dest, ignore_errors=True)
    for f in files:
        _copy(f, dest / f.relative_to(root))
    arts[name] = {"leg": a.leg.name, "job": a.leg.jid, "id": len(arts) + 1}
    a.step.data.update(root=str(root), files=[str(f.relative_to(root)) for f in files])
    return {"artifact-id": str(arts[name]["id"]), "artifact-url": f"https://github.com/{a.runner.repository}/actions/runs/"
            f"{a.leg.github['run_id']}/artifacts/{arts[name]['id']}"}


def _download(a: Action):
    name, pattern = a.input("name"), a.input("pattern")
    dest = a.path(a.input("path", "."))
    visible = {n: v for n, v in a.leg.run_state["artifacts"].items()
               if v["leg"] == a.leg.name or v["job"] in a.leg.ancestors}
    if name:
        if name not in visible:
            raise StepFailed(f"Unable to download artifact(s): Artifact not found for name: {name}")
        picked, merge = [name], True
    else:
        picked = [n for n in sorted(visible) if not pattern or fnmatch.fnmatchcase(n, pattern)]
        merge = a.flag("merge-multiple", False)
    for n in picked:
        _copy(a.runner._artifacts / n, dest if merge else dest / n)
    a.step.data["downloaded"] = picked
    return {"download-path": str(dest)}


def _app_token(a: Action):
    app = a.input("client-id") or a.input("app-id", required=True)
    a.input("private-key", required=True)
    token = "ghs_" + hashlib.sha256(f"app:{app}".encode()).hexdigest()[:36]
    a.mask(token)
    return {"token": token, "installation-id": "1", "app-slug": f"app-{app}"}


BUILTINS = {"actions/checkout": _checkout, "actions/setup-python": _setup_python, "actions/cache": _cache,
            "actions/cache/restore": _cache_restore, "actions/cache/save": _cache_save,
            "actions/upload-artifact": _upload, "actions/download-artifact": _download,
            "actions/create-github-app-token": _app_token}

# ------------------------------------------------------------------------------ the runner
class _Loader(yaml.SafeLoader):
    """YAML as GitHub reads it: only true/false are booleans (`on`, `yes`, `no` stay strings)."""


_Loader.yaml_implicit_resolvers = {k: [(t, rx) for t, rx in v if t != "tag:yaml.org,2002:bool"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))

_WF_KEYS = {"name", "run-name", "on", "permissions", "env", "defaults", "concurrency", "jobs"}
_JOB_KEYS = {"name", "needs", "runs-on", "permissions", "environment", "concurrency", "outputs", "env",
             "defaults", "if", "steps", "timeout-minutes", "strategy", "continue-on-error"}
_STEP_KEYS = {"id", "if", "name", "uses", "run", "shell", "with", "env", "continue-on-error",
              "timeout-minutes", "working-directory"}
_UNSUPPORTED = {"container", "services", "uses", "with", "secrets"}
_SHELLS = {None: "bash -e {0}", "bash": "bash --noprofile --norc -eo pipefail {0}", "sh": "sh -e {0}",
           "python": "python {0}"}
_ALLOWED = {  # which contexts GitHub allows where
    "workflow": {"github", "secrets", "inputs", "vars"},
    "job-if": {"github", "needs", "vars", "inputs"},
    "strategy": {"github", "needs", "vars", "inputs"},
    "job": {"github", "needs", "strategy", "matrix", "vars", "secrets", "inputs"},
    "step-if": {"github", "needs", "strategy", "matrix", "job", "runner", "env", "vars", "steps", "inputs"},
    "step": {"github", "needs", "strategy", "matrix", "job", "runner", "env", "vars", "secrets", "steps", "inputs"},
}


class _Leg:
    """State of one job leg while it runs (fresh workspace, temp and HOME)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.posts, self.cache_state, self.pgids, self.counter = [], {}, [], 0


class Runner:
    def __init__(self, workflow_path, workdir, origin, repository="owner/repo", event="push", inputs=None,
                 secrets=None, vars=None, env=None, actions=None, token="ghs_default_token", sha=None,
                 ref=None, actor="octocat", event_payload=None, workflow_text=None, replace_run=None):
        """workflow_text: the YAML to run (workflow_path then only names it in messages).
        replace_run: {step name or id: script} runs that script instead of the step's `run:` (same
        shell, env, if:, ${{ }} substitution); a key that names no `run:` step is an error."""
        self.path = Path(workflow_path)
        self.replace_run = dict(replace_run or {})
        self.workdir, self.origin = Path(workdir).resolve(), Path(origin).resolve()
        self.repository, self.event, self.token, self.actor = repository, event, token, actor
        self.secrets, self.vars, self.given_inputs = dict(secrets or {}), dict(vars or {}), dict(inputs or {})
        self.env = dict(env) if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.actions = {**BUILTINS, **(actions or {})}
        self._custom = set(actions or {})
        self._sha, self._ref, self.event_payload = sha, ref, dict(event_payload or {})
        self.cache_dir = self.workdir / "cache"
        self.wf = yaml.load(self.path.read_text() if workflow_text is None else workflow_text, Loader=_Loader)
        if not isinstance(self.wf, dict):
            raise WorkflowError(f"{self.path}: not a mapping")
        if True in self.wf:   # the YAML 1.1 reading of `on:`, should a caller's loader produce it
            self.wf["on"] = self.wf.pop(True)
        self._err(None, None, set(self.wf) - _WF_KEYS, "unknown workflow key(s)")
        self.jobs = self.wf.get("jobs") or {}
        on = self.wf.get("on")
        triggers = {on} if isinstance(on, str) else set(on or [])
        if event not in triggers:
            raise WorkflowError(f"{self.path}: the workflow does not run on {event!r} (on: {sorted(triggers)})")
        self.inputs = self._inputs(on.get(event) if isinstance(on, dict) else None)
        for jid, job in self.jobs.items():
            if not isinstance(job, dict) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", jid):
                raise WorkflowError(f"{self.path}: job {jid!r}: invalid job")
            self._err(jid, None, set(job) & _UNSUPPORTED, "not supported by this runner")
            self._err(jid, None, set(job) - _JOB_KEYS - _UNSUPPORTED, "unknown job key(s)")
            for n in self._needs(jid):
                if n not in self.jobs:
                    raise WorkflowError(f"{self.path}: job {jid!r} needs unknown job {n!r}")
            ids = []
            for k, st in enumerate(job.get("steps") or []):
                self._err(jid, k, set(st) - _STEP_KEYS, "unknown step key(s)")
                if ("run" in st) == ("uses" in st):
                    raise WorkflowError(self._where(jid, k) + "a step needs exactly one of run/uses")
                ids += [st["id"]] if "id" in st else []
                self._check_step(jid, k, st, job)
            if len(ids) != len(set(ids)):
                raise WorkflowError(f"{self.path}: job {jid!r}: duplicate step ids {ids}")
        run_steps = {x for job in self.jobs.values() for st in job.get("steps") or [] if "run" in st
                     for x in (st.get("name"), st.get("id")) if x}
        if set(self.replace_run) - run_steps:
            raise WorkflowError(f"{self.path}: replace_run names no run: step: {sorted(set(self.replace_run) - run_steps)}")
        self._check_exprs({k: v for k, v in self.wf.items() if k != "jobs"})
        self._check_exprs(self.jobs)
        self._secret_values: set[str] = set()

    # ---- helpers
    def _where(self, jid, k):
        st = self.jobs[jid]["steps"][k] if k is not None else None
        label = (st.get("id") or st.get("name") or st.get("uses") or f"#{k + 1}") if st else None
        return f"{self.path}: " + " ".join([f"job '{jid}'"] * bool(jid) + [f"step '{label}'"] * bool(label)) + ": "

    def _err(self, jid, k, bad, what):
        if bad:
            raise WorkflowError(self._where(jid, k) + f"{what}: {sorted(map(str, bad))}")

    def _check_exprs(self, node, where=""):
        """Parse every ${{ }} (and every if:) up front: a typo is an error even on a branch never taken."""
        trees = []
        if isinstance(node, dict):
            for k, v in node.items():
                w = where or (f"{self.path}: job '{k}': " if node is self.jobs else "")
                if k == "if" and isinstance(v, str) and "${{" not in v:
                    trees.append(parse_expr(v))
                self._check_exprs(v, w)
        elif isinstance(node, list):
            for v in node:
                self._check_exprs(v, where)
        elif isinstance(node, str):
            try:
                trees += [parse_expr(p[1]) for p in split_template(node) if isinstance(p, tuple)]
            except WorkflowError as e:
                raise WorkflowError((where or f"{self.path}: ") + str(e)) from None
        for n in (n for t in trees for n in _walk(t)):
            if n[0] == "ctx" and n[1].lower() not in _ALLOWED["step"]:
                raise WorkflowError((where or f"{self.path}: ") + f"Unrecognized named-value: '{n[1]}'")

    def _needs(self, jid):
        n = self.jobs[jid].get("needs", [])
        return [n] if isinstance(n, str) else list(n)

    def _ancestors(self, jid):
        out, todo = set(), list(self._needs(jid))
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += self._needs(n)
        return out

    def _inputs(self, spec):
        if self.event != "workflow_dispatch":
            if self.given_inputs:
                raise WorkflowError(f"{self.path}: inputs given for a {self.event} event")
            return {}
        decl = (spec or {}).get("inputs") or {}
        unknown = set(self.given_inputs) - set(decl)
        if unknown:
            raise WorkflowError(f"{self.path}: Unexpected inputs provided: {sorted(unknown)}")
        out = {}
        for name, d in decl.items():
            d = d or {}
            v = self.given_inputs.get(name, d.get("default"))
            if v is None and d.get("required"):
                raise WorkflowError(f"{self.path}: Required input '{name}' not provided")
            t = d.get("type", "string")
            if t == "boolean":
                v = v if isinstance(v, bool) else str(v).lower() == "true"
            elif t == "number":
                v = to_num(v)
            elif t == "choice" and v is not None and v not in d.get("options", []):
                raise WorkflowError(f"{self.path}: input {name}: {v!r} is not one of {d.get('options')}")
            out[name] = v if t in ("boolean", "number") else to_str(v)
        return out

    def _expr(self, src, ctx, allowed, funcs, where):
        try:
            tree = parse_expr(src)
        except WorkflowError as e:
            raise WorkflowError(where + str(e)) from None
        for node in _walk(tree):
            if node[0] == "ctx" and node[1].lower() not in allowed:
                raise WorkflowError(where + f"Unrecognized named-value: '{node[1]}' (allowed here: {sorted(allowed)})")
            if node[0] == "call" and node[1] in STATUS_FUNCS | {"hashfiles"} and node[1] not in funcs:
                raise WorkflowError(where + f"{node[1]}() is not allowed here")
        return evaluate(tree, ctx, funcs)

    def _value(self, v, ctx, allowed, funcs, where, keep_type=False):
        """Substitute ${{ }} in a value. A string that is one whole expression keeps its type if asked."""
        if isinstance(v, dict):
            return {k: self._value(x, ctx, allowed, funcs, where, keep_type) for k, x in v.items()}
        if isinstance(v, list):
            return [self._value(x, ctx, allowed, funcs, where, keep_type) for x in v]
        if not isinstance(v, str):
            return v if keep_type else to_str(v)
        parts = split_template(v)
        if keep_type and len(parts) == 1 and isinstance(parts[0], tuple):
            return self._expr(parts[0][1], ctx, allowed, funcs, where)
        return "".join(to_str(self._expr(p[1], ctx, allowed, funcs, where)) if isinstance(p, tuple) else p
                       for p in parts)

    def _cond(self, cond, ctx, allowed, funcs, where) -> bool:
        if cond is None:
            cond = "success()"
        if not isinstance(cond, str):
            cond = to_str(cond)
        cond = cond.strip()
        parts = split_template(cond) if "${{" in cond else [("expr", cond)]
        if len(parts) != 1 or not isinstance(parts[0], tuple):   # GitHub: a string, truthy if non-empty
            has_status = any(n[0] == "call" and n[1] in STATUS_FUNCS for p in parts if isinstance(p, tuple)
                             for n in _walk(parse_expr(p[1])))
            return (has_status or funcs["success"]()) and truthy(self._value(cond, ctx, allowed, funcs, where))
        tree = parse_expr(parts[0][1])
        if not any(n[0] == "call" and n[1] in STATUS_FUNCS for n in _walk(tree)):
            parts[0] = ("expr", f"success() && ({parts[0][1]})")
        return truthy(self._expr(parts[0][1], ctx, allowed, funcs, where))

    def _git(self, *args):
        return subprocess.run(["git", *args], cwd=self.origin, capture_output=True, text=True, check=True).stdout.strip()

    # ---- the run
    def run(self) -> RunResult:
        self.workdir.mkdir(parents=True, exist_ok=True)
        counter = self.workdir / "run-counter"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        rundir = self.workdir / "runs" / str(n)
        self._artifacts = rundir / "artifacts"
        self._artifacts.mkdir(parents=True)
        ref = self._ref or self._git("symbolic-ref", "HEAD")
        sha = self._sha or self._git("rev-parse", ref)
        self._secret_values = {v for v in [*self.secrets.values(), self.token] if v}
        owner, name = self.repository.split("/")
        event = {"repository": {"full_name": self.repository, "name": name, "owner": {"login": owner},
                                "default_branch": ref.split("/")[-1]}, "sender": {"login": self.actor}}
        if self.event == "workflow_dispatch":
            event.update(inputs={k: to_str(v) for k, v in self.inputs.items()}, ref=ref)
        elif self.event == "push":
            event.update(ref=ref, after=sha)
        elif self.event == "schedule":
            crons = self.wf["on"].get("schedule") if isinstance(self.wf["on"], dict) else None
            event["schedule"] = ((crons or [{}])[0] or {}).get("cron", "")
        event.update(self.event_payload)
        (rundir / "event.json").write_text(json.dumps(event))
        self._github = {
            "event_name": self.event, "event": event, "event_path": str(rundir / "event.json"),
            "repository": self.repository, "repository_owner": owner, "token": self.token, "sha": sha,
            "ref": ref, "ref_name": ref.split("/", 2)[-1], "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
            "head_ref": "", "base_ref": "", "run_id": str(1000 + n), "run_number": str(n), "run_attempt": "1",
            "server_url": "https://github.com", "api_url": "https://api.github.com",
            "graphql_url": "https://api.github.com/graphql", "actor": self.actor, "triggering_actor": self.actor,
            "workflow": self.wf.get("name") or str(self.path), "retention_days": "90",
        }
        wctx = {"github": self._github, "secrets": {**self.secrets, "GITHUB_TOKEN": self.token},
                "inputs": self.inputs, "vars": self.vars}
        self._wf_env = self._value(self.wf.get("env") or {}, wctx, _ALLOWED["workflow"], {}, f"{self.path}: env: ")
        state = {"results": Jobs(), "artifacts": {}, "summary": [], "dir": rundir}
        done, order = set(), []
        while len(order) < len(self.jobs):
            ready = [j for j in self.jobs if j not in done and set(self._needs(j)) <= done]
            if not ready:
                raise WorkflowError(f"{self.path}: dependency cycle among {sorted(set(self.jobs) - done)}")
            done.add(ready[0])
            order.append(ready[0])
            self._job(ready[0], state)
        return RunResult(state["results"], "".join(state["summary"]), self._artifacts, self._github["run_id"])

    def _job(self, jid, state):
        spec, results, groups = self.jobs[jid], state["results"], state["results"].groups
        needs = {n: {"result": groups[n].result, "outputs": dict(groups[n].outputs)} for n in self._needs(jid)}
        anc = self._ancestors(jid)
        funcs = {"success": lambda: all(groups[a].result == "success" for a in anc),
                 "failure": lambda: any(groups[a].result == "failure" for a in anc),
                 "cancelled": lambda: False, "always": lambda: True}
        base = {"github": {**self._github, "job": jid}, "needs": needs, "vars": self.vars, "inputs": self.inputs}
        where = f"{self.path}: job '{jid}': "
        agg = JobResult(jid, jid if "${{" in str(spec.get("name", "")) else spec.get("name", jid),
                        permissions=spec.get("permissions", self.wf.get("permissions")))
        results[jid] = groups[jid] = agg    # until legs replace it
        try:
            if not self._cond(spec.get("if"), base, _ALLOWED["job-if"], funcs, where + "if: "):
                return
            strategy = spec.get("strategy") or {}
            self._err(jid, None, set(strategy) - {"matrix", "fail-fast", "max-parallel"}, "unknown strategy key(s)")
            matrix = self._value(strategy.get("matrix"), base, _ALLOWED["strategy"], {}, where + "strategy: ", True)
            combos = self._matrix(matrix, where) if matrix is not None else [None]
        except _EvalError as e:
            agg.result = agg.outcome = "failure"
            agg.warnings.append(str(e))
            return
        for k, combo in enumerate(combos):
            values = (json.dumps(v) if isinstance(v, (dict, list)) else to_str(v) for v in (combo or {}).values())
            name = jid if combo is None else f"{jid} ({', '.join(values)})"
            sctx = {"fail-fast": strategy.get("fail-fast", True), "job-index": k, "job-total": len(combos),
                    "max-parallel": strategy.get("max-parallel", len(combos))}
            leg = self._leg(jid, name, combo, sctx, base, state, anc)
            if combo is None:
                results[jid] = groups[jid] = leg
                return
            if k == 0:
                del results[jid]
            results[name] = leg
            agg.legs.append(leg)
            for o, v in leg.outputs.items():
                if v != "" or o not in agg.outputs:
                    agg.outputs[o] = v
        rs = [g.result for g in agg.legs]
        agg.result = agg.outcome = next((r for r in ("failure", "cancelled", "success") if r in rs), "skipped")

    def _matrix(self, m, where):
        if not isinstance(m, dict):
            raise WorkflowError(where + f"strategy.matrix must be a mapping, got {m!r}")
        include, exclude = m.get("include") or [], m.get("exclude") or []
        keys = [k for k in m if k not in ("include", "exclude")]
        for k in keys:
            if not isinstance(m[k], list) or not m[k]:
                raise WorkflowError(where + f"matrix {k!r} must be a non-empty list")
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(m[k] for k in keys))] if keys else []
        combos = [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items()) for ex in exclude)]
        originals = [dict(c) for c in combos]
        for inc in include:
            hit = False
            for c, orig in zip(combos, originals):
                if all(orig.get(k, v) == v for k, v in inc.items() if k in keys):
                    c.update(inc)
                    hit = True
            if not hit:
                combos.append(dict(inc))
                originals.append({})
        if not combos:
            raise WorkflowError(where + "Matrix vector does not contain any values")
        return combos

    def _leg(self, jid, name, combo, sctx, base, state, anc) -> JobResult:
        spec = self.jobs[jid]
        legdir = state["dir"] / "jobs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        repo = self.repository.split("/")[1]
        ws, temp, home = legdir / "work" / repo / repo, legdir / "temp", legdir / "home"
        for d in (ws, temp, home):
            d.mkdir(parents=True)
        where = f"{self.path}: job '{name}': "
        github = {**base["github"], "workspace": str(ws)}
        runner_ctx = {"os": "Linux", "arch": "X64", "name": "local", "temp": str(temp), "environment": "github-hosted",
                      "tool_cache": str(legdir / "toolcache"), "debug": ""}
        ctx = {**base, "github": github, "matrix": combo or {}, "strategy": sctx,
               "secrets": {**self.secrets, "GITHUB_TOKEN": self.token}, "runner": runner_ctx}
        res = JobResult(jid, spec.get("name", jid), matrix=combo,
                        permissions=spec.get("permissions", self.wf.get("permissions")), workspace=ws)
        leg = _Leg(jid=jid, name=name, ws=ws, temp=temp, home=home, github=github, run_state=state, ancestors=anc)
        status = "success"
        try:
            res.name = self._value(spec.get("name", jid), ctx, _ALLOWED["job"], {}, where)
            res.runs_on = self._value(spec.get("runs-on"), ctx, _ALLOWED["job"], {}, where, True)
            job_coe = truthy(self._value(spec.get("continue-on-error", False), ctx, _ALLOWED["job"], {}, where, True))
            job_timeout = to_num(self._value(spec.get("timeout-minutes", 360), ctx, _ALLOWED["job"], {}, where, True))
            self._value(spec.get("concurrency"), ctx, _ALLOWED["job"], {}, where)
            res.env = {**self._wf_env, **self._value(spec.get("env") or {}, ctx, _ALLOWED["job"], {}, where + "env: ")}
        except _EvalError as e:
            res.result = res.outcome = "failure"
            res.warnings.append(str(e))
            return res
        defaults = {**((self.wf.get("defaults") or {}).get("run") or {}), **((spec.get("defaults") or {}).get("run") or {})}
        env_ctx, paths, steps_ctx = dict(res.env), [], {}
        ctx.update(env=env_ctx, steps=steps_ctx)
        hashfiles = lambda *pats: self._hash_files(ws, home, pats)  # noqa: E731
        for k, st in enumerate(spec.get("steps") or []):
            w = self._where(jid, k)
            sr = StepResult(st.get("id"), st.get("name") or (f"Run {st['uses']}" if "uses" in st
                                                              else "Run " + str(st["run"]).strip().split("\n")[0]),
                            uses=st.get("uses"))
            res.steps.append(sr)
            ctx["job"] = {"status": status}
            funcs = {"success": lambda: status == "success", "failure": lambda: status == "failure",
                     "cancelled": lambda: False, "always": lambda: True, "hashfiles": hashfiles}
            try:
                if self._cond(st.get("if"), ctx, _ALLOWED["step-if"], funcs, w + "if: "):
                    self._step(st, sr, ctx, funcs, w, leg, env_ctx, paths, defaults, job_timeout)
                    coe = truthy(self._value(st.get("continue-on-error", False), ctx, _ALLOWED["step"], funcs, w, True))
                    sr.conclusion = "success" if sr.outcome == "failure" and coe else sr.outcome
            except _EvalError as e:
                sr.log += f"Error: {e}\n"
                sr.outcome = sr.conclusion = "failure"
            if sr.conclusion == "failure":
                status = "failure"
            if sr.id:
                steps_ctx[sr.id] = {"outputs": sr.outputs, "outcome": sr.outcome, "conclusion": sr.conclusion}
            state["summary"].append(sr.summary)
        for fn, act, pname, cond in reversed(leg.posts):
            if cond == "always" or status == "success":
                sr = StepResult(None, pname, uses=act.step.uses, env=act.env)
                act.step, sr.outcome = sr, "success"
                try:
                    fn(act)
                except StepFailed as e:
                    sr.log += f"Error: {e}\n"
                    sr.outcome, status = "failure", "failure"
                sr.conclusion = sr.outcome
                res.steps.append(sr)
        for pgid in leg.pgids:   # GitHub ends a job's orphan processes
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        ctx["job"] = {"status": status}
        for o, expr in (spec.get("outputs") or {}).items():
            try:
                v = self._value(expr, ctx, _ALLOWED["step"], {"hashfiles": hashfiles}, where + f"outputs.{o}: ")
            except _EvalError as e:
                res.warnings.append(str(e))
                continue
            if any(s and s in v for s in self._secret_values):
                res.warnings.append(f"Skip output '{o}' since it may contain secret.")
                continue
            res.outputs[o] = v
        res.outcome = status
        res.result = "success" if status == "failure" and job_coe else status
        return res

    def _step(self, st, sr, ctx, funcs, w, leg, env_ctx, paths, defaults, job_timeout):
        step_env = {**env_ctx, **self._value(st.get("env") or {}, ctx, _ALLOWED["step"], funcs, w + "env: ")}
        sr.name = self._value(sr.name, ctx, _ALLOWED["step"], funcs, w)
        timeout = min(to_num(self._value(st.get("timeout-minutes", job_timeout), ctx, _ALLOWED["step"], funcs, w, True)),
                      job_timeout) * 60
        leg.counter += 1
        files = {n: leg.temp / f"_{n.lower()}_{leg.counter}" for n in
                 ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")}
        for f in files.values():
            f.write_text("")
        base_path = step_env.get("PATH", self.env.get("PATH", ""))
        proc_env = {**self.env, "HOME": str(leg.home), **step_env,
                    "PATH": os.pathsep.join([*reversed(paths), base_path] if paths else [base_path]),
                    "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": self.repository,
                    "GITHUB_REPOSITORY_OWNER": self._github["repository_owner"], "GITHUB_EVENT_NAME": self.event,
                    "GITHUB_EVENT_PATH": self._github["event_path"], "GITHUB_SHA": self._github["sha"],
                    "GITHUB_REF": self._github["ref"], "GITHUB_REF_NAME": self._github["ref_name"],
                    "GITHUB_REF_TYPE": self._github["ref_type"], "GITHUB_RUN_ID": self._github["run_id"],
                    "GITHUB_RUN_NUMBER": self._github["run_number"], "GITHUB_RUN_ATTEMPT": "1",
                    "GITHUB_SERVER_URL": "https://github.com", "GITHUB_API_URL": "https://api.github.com",
                    "GITHUB_GRAPHQL_URL": "https://api.github.com/graphql", "GITHUB_WORKSPACE": str(leg.ws),
                    "GITHUB_JOB": leg.jid, "GITHUB_WORKFLOW": self._github["workflow"], "GITHUB_ACTOR": self.actor,
                    "GITHUB_ACTION": sr.id or f"__run_{leg.counter}", "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64",
                    "RUNNER_TEMP": str(leg.temp), **{n: str(f) for n, f in files.items()}}
        sr.env = proc_env
        if "run" in st:
            self._run_script(st, sr, ctx, funcs, w, leg, proc_env, defaults, timeout)
        else:
            self._uses(st, sr, ctx, funcs, w, leg, proc_env)
        try:
            sr.outputs.update(read_commands(files["GITHUB_OUTPUT"]))
            env_ctx.update(read_commands(files["GITHUB_ENV"]))
        except StepFailed as e:
            sr.log += f"Error: {e}\n"
            sr.outcome = "failure"
        paths += [p for p in files["GITHUB_PATH"].read_text().splitlines() if p.strip()]
        sr.summary = files["GITHUB_STEP_SUMMARY"].read_text()
        self._secret_values.update(m.group(1).strip() for m in re.finditer(r"^::add-mask::(.*)$", sr.log, re.M)
                                   if m.group(1).strip())

    def _run_script(self, st, sr, ctx, funcs, w, leg, env, defaults, timeout):
        key = next((x for x in (st.get("id"), st.get("name")) if x in self.replace_run), None)
        sr.data["replaced"] = key is not None
        script_text = self.replace_run[key] if key is not None else str(st["run"])
        sr.run = self._value(script_text, ctx, _ALLOWED["step"], funcs, w + "run: ")
        shell = st.get("shell", defaults.get("shell"))
        template = _SHELLS.get(shell, shell)
        script = leg.temp / f"step-{leg.counter}{'.py' if 'python' in template else '.sh'}"
        script.write_text(sr.run)
        argv = [str(script) if a == "{0}" else a for a in shlex.split(template)]
        if argv[0] == "python":
            argv[0] = shutil.which("python", path=env["PATH"]) or shutil.which("python3", path=env["PATH"]) or sys.executable
        wd = self._value(st.get("working-directory", defaults.get("working-directory", ".")), ctx, _ALLOWED["step"], funcs, w)
        cwd = leg.ws / wd
        if not cwd.is_dir():
            sr.log += (f"Error: An error occurred trying to start process '{argv[0]}' with working directory "
                       f"'{cwd}'. No such file or directory\n")
            sr.outcome = "failure"
            return
        logf = leg.temp / f"{script.name}.log"
        with open(logf, "wb") as out:
            p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            leg.pgids.append(p.pid)
            try:
                code = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                code = p.wait()
                out.write(f"\nError: The action has timed out after {timeout / 60:g} minutes.\n".encode())
        sr.log += logf.read_text(errors="replace")
        if code:
            sr.log += f"Error: Process completed with exit code {code}.\n"
        sr.outcome = "failure" if code else "success"

    def _check_step(self, jid, k, st, job):
        """What GitHub checks before a job starts, for steps that may never run: the action resolves,
        its inputs exist, the shell is known."""
        w = self._where(jid, k)
        if "uses" in st:
            uses = str(st["uses"])
            if uses.startswith(("./", "docker://")) or "@" not in uses:
                raise WorkflowError(w + f"uses: {uses!r}: only owner/name@ref actions are supported")
            name = uses.rsplit("@", 1)[0]
            if name not in self.actions:
                raise WorkflowError(w + f"no handler for action {name!r} (known: {sorted(self.actions)})")
            if name in BUILTIN_INPUTS and name not in self._custom:
                valid = BUILTIN_INPUTS[name]
                bad = [i for i in (st.get("with") or {})
                       if i not in valid and not any(v.endswith("*") and i.startswith(v[:-1]) for v in valid)]
                if bad:
                    raise WorkflowError(w + f"Unexpected input(s) {bad} for {name}, valid inputs are {sorted(valid)}")
            return
        shell = st.get("shell", ((job.get("defaults") or {}).get("run") or {}).get(
            "shell", ((self.wf.get("defaults") or {}).get("run") or {}).get("shell")))
        if shell not in _SHELLS and not (isinstance(shell, str) and "{0}" in shell):
            raise WorkflowError(w + f"shell {shell!r} is not supported (bash, sh, python or a 'cmd {{0}}' template)")

    def _uses(self, st, sr, ctx, funcs, w, leg, env):
        name, ref = st["uses"].rsplit("@", 1)
        inputs = {k: self._value(v, ctx, _ALLOWED["step"], funcs, w + f"with.{k}: ")
                  for k, v in (st.get("with") or {}).items()}
        sr.inputs = inputs
        act = Action(self, leg, sr, name, ref, inputs, env)
        try:
            sr.outputs.update({k: to_str(v) for k, v in (self.actions[name](act) or {}).items()})
            sr.outcome = "success"
        except StepFailed as e:
            sr.log += f"Error: {e}\n"
            sr.outcome = "failure"

    def _hash_files(self, ws, home, patterns):
        files, _ = expand_paths("\n".join(to_str(p) for p in patterns), ws, home)
        files = [f for f in files if ws in f.parents]
        if not files:
            return ""
        total = hashlib.sha256()
        for f in files:
            total.update(hashlib.sha256(f.read_bytes()).digest())
        return total.hexdigest()
