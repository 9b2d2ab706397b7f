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

Each upstream also gets a `target`: the commit a pull request should move its pin to. The head
when the series carries onto it; when it does not (a conflict, or a failed smoke), the newest commit
on the branch's first-parent line that still passes, found by bisection (`advance`, `smoke.bisect`),
with the first commit that fails named. Each upstream is judged alone: its series moved, every other
upstream at its pin, so one pull request per upstream can be merged independently.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import cache, git, lock as lockmod, rebase
from .drift_schema import CLASSES, EXIT_CODES, SCHEMA
from .errors import Exit, ZpatchError
from .patchset import Overlay, Series
from .smoke.oneline import one_line
MAX_TRIALS = 12      # trial applies for the partial advance: enough for 4,096 commits
MAX_SMOKES = 6       # smokes for the semantic bisect (each is a whole generation)


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
        smoke: bool = False, python: str | None = None, max_trials: int = MAX_TRIALS,
        max_smokes: int = MAX_SMOKES) -> dict:
    report = {"report_schema": SCHEMA, "overlay": str(ov.root), "upstreams": [], "class": "current",
              "smoke": smoke}
    mirrors: dict[str, Path] = {}
    for s in ov.series:
        if only and s.upstream.name != only:
            continue
        entry, mirrors[s.upstream.name] = _analyse(ov, s, to=to, offline=offline)
        if entry["class"] == "moved-conflict":
            head_conflict = next(p["name"] for p in entry["patches"] if p.get("files"))
            entry["advance"] = advance(s, mirrors[s.upstream.name], entry["pin"], entry["head"],
                                       head_conflict=head_conflict, max_trials=max_trials)
            entry["target"] = entry["advance"]["target"]
        report["upstreams"].append(entry)
    if smoke and report["upstreams"]:
        smoker = _Smoker(ov, python=python, offline=offline)
        for entry in report["upstreams"]:
            s = next(x for x in ov.series if x.upstream.name == entry["name"])
            entry["smoke"] = _smoke_entry(smoker, s, mirrors[entry["name"]], entry, max_smokes=max_smokes)
    for entry in report["upstreams"]:
        entry["reproduce"] = _reproduce(entry, smoke=smoke)
    if report["upstreams"]:
        report["class"] = max((u["class"] for u in report["upstreams"]), key=CLASSES.index)
    report["exit_code"] = int(EXIT_CODES[report["class"]])
    return report


def _analyse(ov: Overlay, s: Series, *, to: str | None, offline: bool) -> tuple[dict, Path]:
    up = s.upstream
    ref = to or f"origin/{up.branch}"
    mirror, head = cache.resolve(up.url, up.commit, ref, offline=offline)
    files = sorted({f for p in s.patches for f in p.files})
    touching = git.commits_touching(mirror, up.commit, head, files)
    res = rebase.start(ov.root, up.name, head, dry_run=True, offline=True, allow_unrelated=bool(to))
    patches = [{k: v for k, v in p.items() if k not in ("commit", "data_sha256")} for p in res["patches"]]
    for p in patches:
        if p["state"] == "obsolete" and p.get("files"):
            p["also_conflict"] = True
    from . import upstream_state
    for p, src in zip(patches, s.patches):
        if p["name"] == src.name:
            p["upstream"] = {**upstream_state.of(src),
                             "pull_request": upstream_state.pull_request(src, up.url, mirror, head, offline=offline)}
    cls = _classify(patches, res["ahead"])
    entry = {"name": up.name, "url": up.url, "branch": up.branch, "ref": ref, "pin": up.commit, "head": head,
             "ahead": res["ahead"],
             "touching": [dict(zip(("commit", "subject"), line.split(" ", 1))) for line in touching],
             "patches": patches, "class": cls,
             "target": head if cls in ("moved-clean", "upstreamed") else None,
             "advance": None, "smoke": None}
    return entry, mirror


def first_parent_line(repo: Path, pin: str, head: str) -> list[str]:
    """The commits a pin can move to, oldest first: the first-parent line from the pin to HEAD
    (a merge counts once, as the branch saw it), each descending from the pin."""
    return git.rev_list(repo, f"{pin}..{head}", "--first-parent", "--ancestry-path")


def _subject(repo: Path, commit: str) -> str:
    return git.run(["log", "-1", "--format=%s", commit], cwd=repo).stdout.strip()


def bisect(line: list[str], good, budget: int) -> tuple[int, int, int, bool]:
    """LINE's last good and first bad index for GOOD, a predicate over commits that holds before
    the line (the pin) and fails at its end (known: not tried again), in at most BUDGET tries.
    Returns (last_good, first_bad, tries, exact); last_good is -1 when only the pin is good. When the
    budget runs out first, the two indexes bound the range still in doubt and exact is false."""
    lo, hi, tries = -1, len(line) - 1, 0
    while hi - lo > 1 and tries < budget:
        mid = (lo + hi) // 2
        tries += 1
        if good(line[mid]):
            lo = mid
        else:
            hi = mid
    return lo, hi, tries, hi - lo <= 1


def advance(s: Series, mirror: Path, pin: str, head: str, *, head_conflict: str | None = None,
            max_trials: int = MAX_TRIALS) -> dict:
    """The partial advance: the newest commit of the first-parent line pin..HEAD onto which the series
    still carries (HEAD itself conflicts), by bisection in at most MAX_TRIALS trial applies; and the
    first commit that breaks it. When the line is longer than 2**MAX_TRIALS, the search narrows the
    range as far as it can and says so (`exact` false)."""
    line = first_parent_line(mirror, pin, head)
    if not line or line[-1] != head:        # HEAD off the pin's first-parent line: nothing to offer
        return {"target": None, "first_bad": None, "trials": 0, "exact": False, "line": len(line)}
    with tempfile.TemporaryDirectory(prefix="zpatch-advance-") as tmp:
        trial = rebase.Trial(s, mirror, tmp)
        conflicts: dict[str, str | None] = {head: head_conflict}

        def good(commit: str) -> bool:
            conflicts[commit] = trial.first_conflict(commit)
            return conflicts[commit] is None

        lo, hi, _, exact = bisect(line, good, max_trials)
        target = line[lo] if lo >= 0 else None
        bad = line[hi]
        return {"target": target, "target_subject": _subject(mirror, target) if target else None,
                "target_index": lo + 1, "first_bad": bad if exact else None,
                "first_bad_subject": _subject(mirror, bad) if exact else None,
                "first_bad_patch": conflicts.get(bad) if exact else None,
                "range": None if exact else [line[lo] if lo >= 0 else pin, bad],
                "trials": trial.count, "exact": exact, "line": len(line)}


# ---------------------------------------------------------------- the smoke, one upstream moved


class _Smoker:
    """Runs the smoke on the overlay with some upstreams moved (a scratch copy of the overlay, the
    series rebased there), every other upstream at its pin. Remembers results per combination."""

    def __init__(self, ov: Overlay, *, python: str | None, offline: bool):
        self.ov, self.python, self.offline = ov, python, offline
        self.done: dict[tuple, dict] = {}
        # the smoke checks out every upstream, not only the one that moved: a missing one is a
        # missing prerequisite (exit 6), never a failed smoke
        for s in ov.series:
            cache.ensure(s.upstream.url, s.upstream.commit, offline=offline)

    def run(self, moved: dict[str, str]) -> dict:
        key = tuple(sorted(moved.items()))
        if key not in self.done:
            self.done[key] = self._run(moved)
        return self.done[key]

    def _run(self, moved: dict[str, str]) -> dict:
        from . import verify
        ov = self.ov
        with tempfile.TemporaryDirectory(prefix="zpatch-drift-") as tmp:
            copy = Path(tmp) / "overlay"
            copy.mkdir()
            shutil.copy2(ov.root / lockmod.LOCK_NAME, copy / lockmod.LOCK_NAME)
            for s in ov.series:
                shutil.copytree(s.directory, copy / s.upstream.patches)
            if ov.lock.overlay:
                shutil.copytree(ov.root / ov.lock.overlay.source, copy / ov.lock.overlay.source)
            try:
                for name, commit in moved.items():
                    res = rebase.start(copy, name, commit, offline=True, allow_unrelated=True)
                    if res.get("stopped"):
                        raise ZpatchError(f"{name}: the series does not carry onto {commit[:12]}", Exit.CONFLICT)
            finally:
                rebase.forget_throwaway(copy)
            res = verify.run(copy, offline=True, python=self.python, smoke=True)
        failed = next((s for s in res["steps"] if not s["ok"]), None)
        if failed and (failed["error"] or {}).get("exit_code") == Exit.INTERNAL:
            # a bug of zpatch's in a step is no finding about upstream
            raise ZpatchError(f"zpatch failed in the smoke's {failed['step']} step: {failed['summary']}",
                              Exit.INTERNAL, hint=(failed["error"] or {}).get("hint"))
        if failed and failed["step"] in ("checkout", "check"):
            err = failed["error"] or {}
            raise ZpatchError(f"the smoke could not start ({failed['step']}): {failed['summary']}",
                              Exit(err.get("exit_code") or Exit.ENVIRONMENT), hint=err.get("hint"))
        smoke_step = next((s for s in res["steps"] if s["step"] == "smoke"), None)
        failure = None
        if failed:
            inner = failed.get("failure") or {}
            failure = {"step": failed["step"], "stage": inner.get("stage"),
                       "error": inner.get("error") or one_line(failed["summary"])}
        return {"passed": res["passed"], "failure": failure,
                "warnings": list((smoke_step or {}).get("warnings") or []),
                "seconds": round(sum(s["seconds"] for s in res["steps"]), 2)}


def _smoke_entry(smoker: _Smoker, s: Series, mirror: Path, entry: dict, *, max_smokes: int) -> dict:
    """The smoke of ENTRY's target (the pins when current or when nothing can move). When it fails
    on a moved target, bisect the first-parent line from the pin to that target for the first
    commit at which the smoke fails; the commit before it becomes the target."""
    name, target = entry["name"], entry["target"]
    at = target if target and target != entry["pin"] else entry["pin"]
    result = smoker.run({name: at} if at != entry["pin"] else {})
    out = {"commit": at, **result, "bisect": None}
    if result["passed"] or at == entry["pin"]:
        if not result["passed"] and entry["class"] != "moved-conflict":
            entry["class"] = "smoke-failed"
        return out
    line = first_parent_line(mirror, entry["pin"], at)
    lo, hi, smokes, budget_left = bisect(line, lambda c: smoker.run({name: c})["passed"], max_smokes)
    first_bad = line[hi]
    out["bisect"] = {"first_bad": first_bad if budget_left else None,
                     "first_bad_subject": _subject(mirror, first_bad) if budget_left else None,
                     "range": None if budget_left else [line[lo] if lo >= 0 else entry["pin"], first_bad],
                     "last_good": line[lo] if lo >= 0 else None, "smokes": smokes, "exact": budget_left}
    entry["target"] = line[lo] if lo >= 0 else None
    if entry["class"] in ("moved-clean", "upstreamed"):
        entry["class"] = "smoke-failed"
    return out


def _reproduce(entry: dict, *, smoke: bool) -> list[str]:
    """Commands that give the same verdict later: the ref is pinned to the commit judged."""
    name, head = entry["name"], entry["head"]
    cmds = [f"zpatch drift --upstream {name} --to {head}" + (" --smoke" if smoke else "")]
    if entry["class"] == "current":
        return cmds
    if entry["target"]:
        cmds.append(f"zpatch rebase {name} --onto {entry['target']}")
    if entry["target"] != head:
        cmds.append(f"zpatch rebase {name} --onto {head}")
    return cmds
