"""`zpatch verify`: the whole chain in a scratch directory, one step after another, one report."""
from __future__ import annotations

import py_compile
import shutil
import tempfile
import time
from pathlib import Path

from . import check, patchset, workspace
from .errors import Exit, ZpatchError


def run(root: Path, *, workdir: Path | None = None, offline: bool = False, python: str | None = None,
        device: str = "cpu", control: bool = False, smoke: bool = True) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="zpatch-verify-")) if workdir is None else Path(workdir)
    steps: list[dict] = []
    result = {"workdir": str(scratch), "ok": False, "steps": steps, "error": None}
    dest = scratch / "ComfyUI"

    def step(name, fn):
        t0 = time.perf_counter()
        try:
            summary, data = fn()
        except ZpatchError as e:
            steps.append({"step": name, "ok": False, "seconds": time.perf_counter() - t0,
                          "summary": e.message, "data": e.details})
            result["error"] = e.to_json()
            raise
        steps.append({"step": name, "ok": True, "seconds": time.perf_counter() - t0, "summary": summary,
                      "data": data})

    ov = patchset.load(root)
    missing: list[str] = []

    def do_checkout():
        res = workspace.checkout(ov, dest, offline=offline)
        missing.extend(res["missing_objects"])
        note = f"; missing from the source repository: {', '.join(missing)}" if missing else ""
        return f"{len(res['upstreams'])} upstreams at their pins{note}", res

    def do_check():
        res = check.run(root, offline=offline)
        if not res["ok"]:
            raise ZpatchError(res["problems"][0]["message"], check.exit_code(res), details=res)
        return f"{sum(len(s['patches']) for s in res['series'])} patches lint clean and apply on the pins", res

    def do_apply():
        res = workspace.apply(ov, dest)
        return ", ".join(f"{u['name']}: {len(u['applied'])}" for u in res["upstreams"]) + " applied", res

    def do_status():
        res = workspace.status(ov, dest)
        foreign = [f["path"] for u in res["upstreams"] for f in u["foreign_changes"]
                   if (f["path"] if u["path"] == "." else f"{u['path']}/{f['path']}") not in missing]
        bad = [p for u in res["upstreams"] for p in u["patches"] if p["state"] != "applied"]
        if bad or foreign or res["overlay"]["state"] != "installed":
            raise ZpatchError(f"status not clean after apply: {bad or foreign or res['overlay']}",
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

    def do_smoke():
        from .smoke import runner
        rep = runner.run_smoke(dest, scratch / "smoke", python=python, device=device,
                               tier="tiny" if device == "cpu" else "full")
        return runner.summary(rep).splitlines()[0], rep

    def do_control():
        from .smoke import runner
        pristine = scratch / "pristine"
        workspace.checkout(ov, pristine, offline=offline)
        rep = runner.run_smoke(pristine, scratch / "control", python=python, device=device, unpatched=True)
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
        result["ok"] = True
    except ZpatchError:
        pass
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result
