"""`zpatch verify`: the whole chain in a scratch directory, one step after another, one report."""
from __future__ import annotations

import py_compile
import shutil
import tempfile
import time
from pathlib import Path

from . import apply, check, clone, patchset, status, workspace
from .errors import Exit, ZpatchError
from .smoke.oneline import one_line


MARKER = ".zpatch-verify"


def _workdir(workdir: Path | None) -> Path:
    """A temporary folder, or WORKDIR: new, empty, or one a previous verify left (emptied again)."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="zpatch-verify-"))
    workdir = Path(workdir)
    if workdir.exists():
        if not workdir.is_dir():
            raise ZpatchError(f"--keep {workdir}: not a directory", Exit.USAGE)
        if any(workdir.iterdir()):
            if not (workdir / MARKER).is_file():
                raise ZpatchError(f"--keep {workdir}: not empty and not made by zpatch verify", Exit.USAGE,
                                  hint="choose a new or empty directory")
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by zpatch verify; the next verify --keep here empties it\n")
    return workdir


SMOKE_STEPS = ("smoke", "control")


def _failure(name: str, err: ZpatchError) -> dict:
    """A failed step's {stage, error}. For smoke and control: the harness report's own failure
    object (its stage, e.g. "load"), or "environment" when no smoke Python could run. Otherwise
    the step's name and the error's one-line message."""
    f = err.details.get("failure") if name in SMOKE_STEPS and isinstance(err.details, dict) else None
    if isinstance(f, dict) and f.get("stage") and f.get("error"):
        return f
    stage = "environment" if name in SMOKE_STEPS and err.exit_code == Exit.ENVIRONMENT else name
    return {"stage": stage, "error": one_line(err.message)}


def _warnings(name: str, data) -> list:
    """What ComfyUI only logged during the smoke ([{stage, level, message}]); [] for other steps."""
    if name not in SMOKE_STEPS or not isinstance(data, dict):
        return []
    return list(data.get("warnings") or [])


def run(root: Path, *, workdir: Path | None = None, offline: bool = False, python: str | None = None,
        device: str = "cpu", control: bool = False, smoke: bool = True, on_step=None,
        progress: bool = False, keep_failed: bool = False) -> dict:
    """Each step's result goes to ON_STEP as soon as it finishes (the CLI streams them).
    KEEP_FAILED: a scratch folder (no WORKDIR) is kept when a step fails, for the files its hint names."""
    scratch = _workdir(workdir)
    steps: list[dict] = []
    result = {"workdir": str(scratch), "passed": False, "steps": steps}
    dest = scratch / "ComfyUI"

    # Every step carries `failure` (null, or {stage, error}: for smoke and control the harness's
    # stage and first error line) and `warnings` (for smoke and control what ComfyUI only logged,
    # [{stage, level, message}]; [] for the other steps). drift reads both from steps[-1].
    def step(name, fn):
        t0 = time.perf_counter()
        try:
            summary, data = fn()
            entry = {"step": name, "ok": True, "seconds": time.perf_counter() - t0, "summary": summary,
                     "data": data, "error": None, "failure": None, "warnings": _warnings(name, data)}
        except ZpatchError as e:
            entry = {"step": name, "ok": False, "seconds": time.perf_counter() - t0,
                     "summary": e.message, "data": e.details, "error": e.to_json(),
                     "failure": _failure(name, e), "warnings": _warnings(name, e.details)}
        steps.append(entry)
        if on_step:
            on_step(entry)
        if not entry["ok"]:
            raise _Stop()

    ov = patchset.load(root)
    missing: list[str] = []

    def do_checkout():
        res = clone.checkout(ov, dest, offline=offline, progress=progress)
        missing.extend(res["missing_objects"])
        note = f"; missing from the source repository: {', '.join(missing)}" if missing else ""
        return f"{len(res['upstreams'])} upstreams at their pins{note}", res

    def do_check():
        res = check.run(root, offline=offline)
        if not res["clean"]:
            # a failing step is a failure (2 and up), never check's "found something" (1): a patch that
            # does not apply is a conflict, an unreachable upstream is unreachable, the rest is the overlay
            kinds = {p["kind"] for p in res["problems"]}
            code = (Exit.CONFLICT if "conflict" in kinds else Exit.UNREACHABLE if kinds <= {"upstream"}
                    else Exit.BAD_OVERLAY)
            first = next((p for p in res["problems"] if p["kind"] == "conflict"), res["problems"][0])
            raise ZpatchError(first["message"], code, hint=first.get("hint"), details=res)
        return f"{sum(len(s['patches']) for s in res['series'])} patches lint clean and apply on the pins", res

    def do_apply():
        res = apply.apply(ov, dest)
        return ", ".join(f"{u['name']}: {len(u['applied'])}" for u in res["upstreams"]) + " applied", res

    def do_status():
        res = status.status(ov, dest)
        foreign = [f["path"] for u in res["upstreams"] for f in u["foreign_changes"]
                   if (f["path"] if u["path"] == "." else f"{u['path']}/{f['path']}") not in missing]
        bad = [p for u in res["upstreams"] for p in u["patches"] if p["state"] != "applied"]
        if bad or foreign or res["node"]["state"] != "installed":
            raise ZpatchError(f"status not clean after apply: {bad or foreign or res['node']}",
                              Exit.CONFLICT, details=res)
        return "every patch applied, node installed, no foreign change", res

    def do_compile():
        files = [dest / u.series.upstream.path / f for u in workspace.resolve(ov, dest)
                 for f in u.series.files if f.endswith(".py")]
        files += sorted((dest / ov.lock.overlay.path).rglob("*.py")) if ov.lock.overlay else []
        for f in files:
            try:
                py_compile.compile(str(f), doraise=True, cfile=str(scratch / ".compile.pyc"))
            except py_compile.PyCompileError as e:
                raise ZpatchError(f"{f}: does not compile: {e.msg.strip().splitlines()[-1]}", Exit.CONFLICT)
        return f"{len(files)} patched Python files compile", {"files": [str(f) for f in files]}

    def kept(e: ZpatchError) -> ZpatchError:
        """The smoke's hint names its log, which a temporary scratch directory does not keep."""
        if workdir is None:
            e.hint = ((e.hint + "; ") if e.hint else "") + \
                "verify removes its scratch directory: zpatch verify --keep DIR keeps the log"
        return e

    def do_smoke():
        from .smoke import runner
        try:
            rep = runner.run_smoke(dest, scratch / "smoke", python=python, device=device,
                                   tier="tiny" if device == "cpu" else "full")
        except ZpatchError as e:
            raise kept(e) from None
        return runner.summary(rep).splitlines()[0], rep

    def do_control():
        from .smoke import runner
        pristine = scratch / "pristine"
        clone.checkout(ov, pristine, offline=offline)
        try:
            rep = runner.run_smoke(pristine, scratch / "control", python=python, device=device, unpatched=True)
        except ZpatchError as e:
            raise kept(e) from None
        return runner.summary(rep).splitlines()[0], rep

    plan = [("checkout", do_checkout), ("check", do_check), ("apply", do_apply), ("status", do_status),
            ("compile", do_compile)]
    if smoke:
        plan.append(("smoke", do_smoke))
        if control:
            plan.append(("control", do_control))
    try:
        for name, fn in plan:
            step(name, fn)
        result["passed"] = True
    except _Stop:
        pass
    finally:
        # a failure's hint names files in the scratch folder: keep it for the user to look at
        result["kept"] = workdir is not None or (keep_failed and not result["passed"])
        if not result["kept"]:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


class _Stop(Exception):
    """A step failed; its entry already says why."""
